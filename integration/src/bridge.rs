//! Bridged pods' bridge: a Linux bridge in the host namespace, the host's
//! address on it (an IPv4 /24 from 198.19.240.0/20, a part of the test
//! range that [`crate::pod::Addressing`] never hands out, and an IPv6 /64
//! of the process's ULA), and its ports the host ends of pods' veths
//! ([`PodNet::on_bridge`]). Removed on drop, panics included, with every
//! neighbour and FDB entry on it.
//!
//! A bridge enforces nothing by itself: it learns whichever port a MAC
//! last came from, and the host believes whichever MAC last answered for
//! an address. [`Bridge::enforce`] pins a pod the way an operator would.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
};

use rtnetlink::packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    AddressFamily,
};

use crate::{
    netlink, plumbing,
    pod::{BridgePort, PodNet},
    setup::{shared_creation, step},
    shield::{self, Shield},
    space::{assert_test_range, host_addresses, ula_prefix, BRIDGE_SPACE, BRIDGE_SPACE_LEN},
};

const SUBNETS: u32 = 1 << (24 - BRIDGE_SPACE_LEN);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A Linux bridge with the host's addresses on it.
pub struct Bridge {
    pub name: String,
    /// 198.19.240.0/20's /24 number.
    subnet: u32,
    /// The fourth group of the /64 in the process's ULA (above any
    /// [`crate::pod::Addressing`]'s).
    v6_net: u16,
    mac: [u8; 6],
    /// The host number the next pod gets.
    next_host: AtomicU32,
    alive: bool,
    /// Dropped after the bridge is removed.
    _shield: Arc<Shield>,
}

/// A host neighbour entry on a bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: Option<[u8; 6]>,
    pub state: NeighbourState,
}

impl Neighbour {
    /// Pinned by an operator (`nud permanent`): no ARP or neighbour
    /// advertisement changes it.
    pub fn is_permanent(&self) -> bool {
        self.state == NeighbourState::Permanent
    }
}

/// One of the bridge's FDB entries for a MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    /// The port's interface index.
    pub port: u32,
    pub vlan: Option<u16>,
    pub state: NeighbourState,
    pub flags: NeighbourFlags,
}

impl FdbEntry {
    /// Added by an operator (`static`), not learned.
    pub fn is_static(&self) -> bool {
        self.state == NeighbourState::Noarp && !self.flags.contains(NeighbourFlags::ExtLearned)
    }

    /// Learning never moves it to another port.
    pub fn is_sticky(&self) -> bool {
        self.flags.contains(NeighbourFlags::Sticky)
    }
}

impl Bridge {
    pub const V4_PREFIX_LEN: u8 = 24;
    pub const V6_PREFIX_LEN: u8 = 64;

    /// A bridge, up, named `mb<pid>x<n>`, on a /24 no address of this host
    /// is in.
    pub fn new() -> Self {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let in_use = host_addresses();
        let subnet = (0..SUBNETS)
            .map(|i| (pid.wrapping_add(n).wrapping_add(i)) % SUBNETS)
            .find(|s| {
                let net = u32::from(BRIDGE_SPACE) + (s << 8);
                !in_use.iter().any(|a| u32::from(*a) >> 8 == net >> 8)
            })
            .unwrap_or_else(|| {
                panic!("every /24 of {BRIDGE_SPACE}/{BRIDGE_SPACE_LEN} is in use on this host")
            });
        let bridge = Self {
            name: format!("mb{}x{n}", pid % 1_000_000),
            subnet,
            v6_net: 0x8000 | (n & 0x7fff) as u16,
            // Locally administered, unicast.
            mac: [
                0x02,
                0x6d,
                (pid >> 8) as u8,
                pid as u8,
                (n >> 8) as u8,
                n as u8,
            ],
            next_host: AtomicU32::new(2),
            alive: true,
            _shield: shield::hold(),
        };
        let (name, mac) = (bridge.name.clone(), bridge.mac);
        let (v4, v6) = (IpAddr::V4(bridge.v4()), IpAddr::V6(bridge.v6()));
        assert_test_range(v4, Self::V4_PREFIX_LEN);
        assert_test_range(v6, Self::V6_PREFIX_LEN);
        // A device takes a proc inode number (see `setup::CREATION`).
        let _shared = shared_creation();
        step(
            format!("creating bridge {name} ({v4}/24, {v6}/64)"),
            netlink::in_own(move |h| async move {
                plumbing::add_bridge(&h, &name, mac).await?;
                let index = plumbing::link_index(&h, &name).await?;
                plumbing::add_address(&h, index, v4, Self::V4_PREFIX_LEN).await?;
                plumbing::add_address(&h, index, v6, Self::V6_PREFIX_LEN).await
            }),
        );
        bridge
    }

    /// The host's IPv4 address on the bridge (the pods' gateway).
    pub fn v4(&self) -> Ipv4Addr {
        self.host_v4(1)
    }

    /// The host's IPv6 address on the bridge (the pods' gateway).
    pub fn v6(&self) -> Ipv6Addr {
        self.host_v6(1)
    }

    fn host_v4(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(BRIDGE_SPACE) + (self.subnet << 8) + u32::from(host))
    }

    fn host_v6(&self, host: u16) -> Ipv6Addr {
        let p = ula_prefix();
        Ipv6Addr::new(p[0], p[1], p[2], self.v6_net, 0, 0, 0, host)
    }

    /// The bridge's own MAC address (fixed: it never follows its ports').
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The bridge's interface index.
    pub fn index(&self) -> u32 {
        let name = self.name.clone();
        step(
            format!("looking up bridge {}", self.name),
            netlink::in_own(move |h| async move { plumbing::link_index(&h, &name).await }),
        )
    }

    /// The addresses of the next pod on the bridge: .2 to .254.
    pub(crate) fn next_pod_addresses(&self) -> (Ipv4Addr, Ipv6Addr) {
        let n = self.next_host.fetch_add(1, Ordering::Relaxed);
        assert!(n <= 254, "bridge {} has no address left", self.name);
        self.pod_addresses(n as u8)
    }

    /// The addresses of host number `n` (2 to 254) on the bridge, for a
    /// caller that manages them itself (reusing a dead pod's, say) with
    /// [`PodNet::on_bridge_at`]; don't mix with [`PodNet::on_bridge`] on
    /// one bridge.
    pub fn pod_addresses(&self, n: u8) -> (Ipv4Addr, Ipv6Addr) {
        assert!((2..=254).contains(&n), "host number {n} is not a pod's");
        (self.host_v4(n), self.host_v6(n as u16))
    }

    /// Makes the bridge enforce `pod`'s addresses the way an operator
    /// would: permanent host neighbour entries (its IPv4 and IPv6 address
    /// to its MAC, on the bridge) and a static, sticky FDB entry (its MAC
    /// on its port). Replaces whatever was learned.
    pub fn enforce(&self, pod: &PodNet) {
        assert!(pod.is_bridged(), "{} is not on a bridge", pod.name);
        let mac = pod.mac();
        let (v4, v6) = (IpAddr::V4(pod.v4()), IpAddr::V6(pod.v6()));
        let (bridge, port) = (self.name.clone(), pod.host_if.clone());
        step(
            format!("pinning {}'s addresses and MAC on {}", pod.name, self.name),
            netlink::in_own(move |h| async move {
                let bridge = plumbing::link_index(&h, &bridge).await?;
                let port = plumbing::link_index(&h, &port).await?;
                plumbing::pin_fdb(&h, port, mac).await?;
                plumbing::pin_neighbour(&h, bridge, v4, mac).await?;
                plumbing::pin_neighbour(&h, bridge, v6, mac).await
            }),
        );
    }

    /// The host's neighbour entry for `addr` on the bridge, if any.
    pub fn neighbour(&self, addr: IpAddr) -> Option<Neighbour> {
        let family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        let index = self.index();
        let entries = step(
            format!("dumping the host's neighbours on {}", self.name),
            netlink::in_own(move |h| async move { plumbing::neighbours(&h, family).await }),
        );
        entries
            .into_iter()
            .filter(|m| m.header.ifindex == index && destination(m) == Some(addr))
            .map(|m| Neighbour {
                mac: link_layer_address(&m),
                state: m.header.state,
            })
            .next()
    }

    /// The bridge's FDB entries for `mac` (one per VLAN).
    pub fn fdb(&self, mac: [u8; 6]) -> Vec<FdbEntry> {
        let index = self.index();
        let entries = step(
            format!("dumping {}'s FDB", self.name),
            netlink::in_own(
                |h| async move { plumbing::neighbours(&h, AddressFamily::Bridge).await },
            ),
        );
        entries
            .into_iter()
            .filter(|m| {
                link_layer_address(m) == Some(mac)
                    && m.attributes
                        .iter()
                        .any(|a| matches!(a, NeighbourAttribute::Controller(b) if *b == index))
            })
            .map(|m| FdbEntry {
                port: m.header.ifindex,
                vlan: m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Vlan(v) => Some(*v),
                    _ => None,
                }),
                state: m.header.state,
                flags: m.header.flags,
            })
            .collect()
    }

    /// Never panics: it runs in Drop, panics included.
    fn remove(&mut self) {
        if !self.alive {
            return;
        }
        self.alive = false;
        // Its addresses, routes, neighbour entries and FDB go with it; its
        // ports (pods' veths) are their pods' to remove.
        let name = self.name.clone();
        let _ = netlink::in_own(move |h| async move { plumbing::del_link(&h, &name).await });
    }
}

impl Default for Bridge {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.remove();
    }
}

fn destination(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

fn link_layer_address(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(&l[..]).ok(),
        _ => None,
    })
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl PodNet {
    /// A pod whose veth's host end is a port of `bridge`, with the next
    /// free address of each of the bridge's subnets and default routes
    /// (IPv4 and IPv6) via the bridge's addresses. Nothing is pinned: the
    /// bridge learns the pod's MAC, the host its neighbour entries, as
    /// on any bridge (see [`Bridge::enforce`]).
    pub fn on_bridge(bridge: &Bridge) -> Self {
        let (v4, v6) = bridge.next_pod_addresses();
        Self::on_bridge_at(bridge, v4, v6)
    }

    /// [`PodNet::on_bridge`] with the addresses `v4` and `v6` (see
    /// [`Bridge::pod_addresses`]).
    pub fn on_bridge_at(bridge: &Bridge, v4: Ipv4Addr, v6: Ipv6Addr) -> Self {
        PodNet::bridged_port(BridgePort {
            bridge: bridge.name.clone(),
            v4,
            v6,
            gateway_v4: bridge.v4(),
            gateway_v6: bridge.v6(),
            v4_prefix_len: Bridge::V4_PREFIX_LEN,
            v6_prefix_len: Bridge::V6_PREFIX_LEN,
        })
    }
}
