//! Replies to a test address that no test routes must not leave the
//! machine. They happen: a tenant claims an address nobody was assigned
//! (the host accepts its SYN, with `rp_filter` off, and answers it), a
//! pod is deleted while the agent still has something to send it. Without
//! a route of their own, those replies follow the host's default route
//! out of its uplink.
//!
//! While any pod or bridge of this process lives, this process holds
//! blackhole routes for 198.18.0.0/15 and its own ULA /48, at a metric
//! unique to the process (so processes running tests in parallel each
//! add and remove their own). Pods' and bridges' routes are more specific
//! and win as usual.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex, Weak},
};

use rtnetlink::{
    packet_route::route::{RouteMessage, RouteProtocol, RouteType},
    RouteMessageBuilder,
};

use crate::{
    netlink, plumbing,
    setup::step,
    space::{assert_test_range, ula_prefix},
};

/// Above any metric a real route here uses; unique per process.
const METRIC_BASE: u32 = 0x4000_0000;

/// The routes, removed when the last holder drops.
pub(crate) struct Shield {
    routes: Vec<RouteMessage>,
}

static CURRENT: Mutex<Weak<Shield>> = Mutex::new(Weak::new());

/// The process's shield, installed if no pod or bridge holds it now.
pub(crate) fn hold() -> Arc<Shield> {
    let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(shield) = current.upgrade() {
        return shield;
    }
    let p = ula_prefix();
    let prefixes = [
        (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 0)), 15),
        (
            IpAddr::V6(Ipv6Addr::new(p[0], p[1], p[2], 0, 0, 0, 0, 0)),
            48,
        ),
    ];
    let metric = METRIC_BASE + std::process::id();
    let routes: Vec<RouteMessage> = prefixes
        .iter()
        .map(|&(dst, len)| {
            assert_test_range(dst, len);
            step(
                format!("building the blackhole route {dst}/{len}"),
                RouteMessageBuilder::<IpAddr>::new()
                    .destination_prefix(dst, len)
                    .map_err(|e| netlink::Error::Invalid(e.to_string())),
            )
            .kind(RouteType::BlackHole)
            .protocol(RouteProtocol::Boot)
            .priority(metric)
            .build()
        })
        .collect();
    let add = routes.clone();
    step(
        format!("adding blackhole routes for the test ranges (metric {metric})"),
        netlink::in_own(move |h| async move {
            for route in add {
                // A leftover of a killed process with this pid: replace it.
                plumbing::replace_route(&h, route).await?;
            }
            Ok(())
        }),
    );
    let shield = Arc::new(Shield { routes });
    *current = Arc::downgrade(&shield);
    shield
}

impl Drop for Shield {
    fn drop(&mut self) {
        // Under the lock: a `hold` racing this drop either installed a
        // new shield already (the same routes: keep them) or waits.
        let current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
        if current.strong_count() > 0 {
            return;
        }
        let routes = self.routes.clone();
        let _ = netlink::in_own(move |h| async move {
            for route in routes {
                let _ = plumbing::del_route(&h, route).await;
            }
            Ok(())
        });
    }
}
