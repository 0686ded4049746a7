//! The two bridged denials of service of issue 24, with default flags: a
//! bridged neighbour in the victim's IPv6 /64 holding its whole share, and
//! one bridged pod with 64 extra addresses trying for 64 connections from
//! each. The victims' p50, p99 and success, each request on a fresh
//! connection (as curl does), next to the same victims with no attack.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use integration::{
    fixtures,
    http::{Conn, Request},
    Agent, AgentOptions, Bridge, PodNet,
};
use serde_json::{json, Value};
use socket2::Socket;

use crate::isolation::Victim;

const T_V: &str = "bvictim6789abcdef0123456789abcde";
const T_X: &str = "battack6789abcdef0123456789abcde";
const T_R: &str = "rvictim6789abcdef0123456789abcde";
const U_V: &str = "33333333-a507-4694-aabf-edbe4fc5266f";
const U_X: &str = "44444444-a507-4694-aabf-edbe4fc5266f";
const U_R: &str = "55555555-a507-4694-aabf-edbe4fc5266f";

/// Each victim's pace and count: a new connection per request.
const INTERVAL: Duration = Duration::from_millis(10);
const REQUESTS: usize = 300;
/// The default share, and how many connections the attacker tries for
/// from each of its addresses.
const SHARE: usize = 64;
const EXTRA_ADDRESSES: u8 = 64;

pub struct BridgedAttacks {
    /// The bridged victim over IPv6, alone, then while its /64 neighbour
    /// holds its share and tries for more.
    pub neighbour_alone: Victim,
    pub neighbour_attacked: Victim,
    /// Connections the neighbour held (of its share).
    pub neighbour_held: usize,
    /// The bridged victim and a routed pod, alone, then while the attacker
    /// holds what it can get from 65 addresses.
    pub bridged_alone: Victim,
    pub routed_alone: Victim,
    pub bridged_attacked: Victim,
    pub routed_attacked: Victim,
    /// What the attacker tried, what the agent held open for it, and the
    /// 503s (`reason="cap"`) the agent gave anyone meanwhile.
    pub many_tried: usize,
    pub many_held: usize,
    pub cap_refusals: u64,
}

impl BridgedAttacks {
    pub fn markdown(&self) -> String {
        let v = |v: &Victim| {
            format!(
                "p50 {:.3} ms, p99 {:.3} ms, success {:.1}%",
                v.p50_ms,
                v.p99_ms,
                100.0 * v.success
            )
        };
        format!(
            "\nBridged attacks (issue 24; default flags: 64 connections per tenant, cap 4096; the victims make {REQUESTS} requests, one per {} ms, each on a new connection). A bridged neighbour in the victim's IPv6 /64 holds {} connections and tries for {} more: the victim over IPv6 alone {}, attacked {}. One bridged pod with {} addresses tries for {SHARE} connections from each ({} in all; the agent held {} open, 503s: {}): the bridged victim alone {}, attacked {}; a routed pod alone {}, attacked {}.\n",
            INTERVAL.as_millis(),
            self.neighbour_held,
            SHARE,
            v(&self.neighbour_alone),
            v(&self.neighbour_attacked),
            EXTRA_ADDRESSES as usize + 1,
            self.many_tried,
            self.many_held,
            self.cap_refusals,
            v(&self.bridged_alone),
            v(&self.bridged_attacked),
            v(&self.routed_alone),
            v(&self.routed_attacked),
        )
    }

    pub fn json(&self) -> Value {
        let v = |v: &Victim| json!({"p50_ms": v.p50_ms, "p99_ms": v.p99_ms, "success": v.success});
        json!({
            "neighbour_alone": v(&self.neighbour_alone),
            "neighbour_attacked": v(&self.neighbour_attacked),
            "neighbour_held": self.neighbour_held,
            "bridged_alone": v(&self.bridged_alone),
            "bridged_attacked": v(&self.bridged_attacked),
            "routed_alone": v(&self.routed_alone),
            "routed_attacked": v(&self.routed_attacked),
            "many_tried": self.many_tried,
            "many_held": self.many_held,
            "cap_refusals": self.cap_refusals,
        })
    }
}

/// `REQUESTS` requests from `pod` to `to`, each on a new connection; one
/// that does not connect within a second, or is not answered 200, fails.
fn fresh_requests(pod: &PodNet, to: SocketAddr, token: &str) -> Victim {
    let req = Request::get(&format!("/{token}/acMetadata/v1/pod/uuid"));
    let (mut latencies, mut ok) = (Vec::with_capacity(REQUESTS), 0usize);
    let mut next = Instant::now();
    for _ in 0..REQUESTS {
        let start = Instant::now();
        let served = pod
            .connect_within(None, to, Duration::from_secs(1))
            .and_then(|s| Conn::new(s).send(&req))
            .is_ok_and(|r| r.status == 200);
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        ok += usize::from(served);
        next += INTERVAL;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Victim {
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        success: ok as f64 / REQUESTS as f64,
    }
}

/// Starts `tries` connections from each of `sources` at once, waits for
/// the handshakes that will finish, and keeps the ones the agent holds
/// open (not closed at accept).
fn hold(pod: &PodNet, sources: &[IpAddr], to: SocketAddr, tries: usize) -> Vec<Socket> {
    let started: Vec<Socket> = sources
        .iter()
        .flat_map(|src| std::iter::repeat_n(*src, tries))
        .filter_map(|src| pod.connect_started_from(Some(src), to).ok())
        .collect();
    // A dropped SYN is retried only after 1 s: what completes, has.
    std::thread::sleep(Duration::from_millis(800));
    let open: Vec<Socket> = started
        .into_iter()
        .filter(|s| s.peer_addr().is_ok() && s.send(b"GET /x").is_ok())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    open.into_iter()
        .filter(|s| {
            let mut buf = [std::mem::MaybeUninit::new(0u8); 1];
            matches!(s.peek(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .collect()
}

pub fn measure() -> Result<BridgedAttacks, String> {
    eprintln!("bench: isolation, bridged attacks (issue 24)");
    let agent = Agent::start(AgentOptions::identity("token+netns"));
    let bridge = Bridge::new();
    let (victim, attacker) = (PodNet::on_bridge(&bridge), PodNet::on_bridge(&bridge));
    let routed = PodNet::new();
    let manifest = fixtures::read("appc-examples/pod_runtime.json");
    for (pod, uuid, token) in [(&victim, U_V, T_V), (&attacker, U_X, T_X)] {
        bridge.enforce(pod);
        agent.register_in(uuid, token, &manifest, pod);
    }
    agent.register_in(U_R, T_R, &manifest, &routed);
    let over_v4 = SocketAddr::new(IpAddr::V4(bridge.v4()), agent.port);
    let over_v6 = SocketAddr::new(IpAddr::V6(bridge.v6()), agent.port);
    let routed_to = SocketAddr::new(IpAddr::V4(routed.host_v4()), agent.port);
    let cap_refusals = || agent.metric("rkt_mds_connections_refused_total{reason=\"cap\"}");

    // 1. The /64 neighbour.
    let neighbour_alone = fresh_requests(&victim, over_v6, T_V);
    let held = hold(&attacker, &[IpAddr::V6(attacker.v6())], over_v6, 2 * SHARE);
    let neighbour_held = held.len();
    let neighbour_attacked = fresh_requests(&victim, over_v6, T_V);
    drop(held);
    crate::check_interrupted()?;

    // 2. One pod, many addresses (not pinned: the host learns them by ARP).
    let bridged_alone = fresh_requests(&victim, over_v4, T_V);
    let routed_alone = fresh_requests(&routed, routed_to, T_R);
    let mut sources = vec![IpAddr::V4(attacker.v4())];
    for n in 150..150 + EXTRA_ADDRESSES {
        let (extra, _) = bridge.pod_addresses(n);
        attacker.add_address(IpAddr::V4(extra), 24);
        // One connection teaches the host its neighbour entry.
        let _ = attacker.connect_within(Some(IpAddr::V4(extra)), over_v4, Duration::from_secs(1));
        sources.push(IpAddr::V4(extra));
    }
    let cap_before = cap_refusals();
    let held = hold(&attacker, &sources, over_v4, SHARE);
    let many_held = held.len();
    let bridged_attacked = fresh_requests(&victim, over_v4, T_V);
    let routed_attacked = fresh_requests(&routed, routed_to, T_R);
    let cap_refusals = cap_refusals() - cap_before;
    drop(held);
    Ok(BridgedAttacks {
        neighbour_alone,
        neighbour_attacked,
        neighbour_held,
        bridged_alone,
        routed_alone,
        bridged_attacked,
        routed_attacked,
        many_tried: sources.len() * SHARE,
        many_held,
        cap_refusals,
    })
}
