//! Sources: who is on the other end of a public connection, as the
//! isolation controls count them, each source's share of connections, and
//! which sources went beyond it (their new connections are then dropped in
//! the kernel: see `syn_filter`).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, Ipv6Addr},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// A tenant, as the isolation controls count them: the network namespace
/// instance the host attributes the address to (a pod: all its addresses,
/// pinned or not, are one tenant, and two pods never share a share because
/// they share a /64); for a veth into a namespace the agent does not watch,
/// the host-side port the address is behind (whatever addresses that
/// neighbour takes); for an address the host puts behind no pod port at
/// all, the address: an IPv4 address, or an IPv6 /64 (one host usually
/// holds a whole /64, so counting single IPv6 addresses would be no limit
/// at all). IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// A watched namespace instance (its cookie).
    Netns(u64),
    /// The host-side port (interface index) of a namespace not watched.
    Port(u32),
    V4(std::net::Ipv4Addr),
    V6Prefix(u64),
}

impl SourceKey {
    /// The address's own key, whatever namespace it is in.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => Self::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }

    /// The tenant of `ip`: the watched namespace the host routes or
    /// bridges it into, else the port it is behind, else the address's own
    /// key. An in-memory lookup (no syscall): done once per connection, at
    /// accept.
    pub fn attributed(ip: IpAddr, watches: &netns::WatchSet) -> Self {
        match watches.attribute(ip.to_canonical()) {
            netns::Attribution::Routed(c) | netns::Attribution::Bridged { cookie: c, .. } => {
                Self::Netns(c.0)
            }
            netns::Attribution::Unwatched { port } => Self::Port(port),
            netns::Attribution::Elsewhere(_) => Self::of(ip),
        }
    }

    /// Whether every address of this tenant is its own (a pod's, or
    /// behind its port), so the address that finds the share full is the
    /// tenant's own flood, whichever it is.
    fn owns_its_addresses(self) -> bool {
        matches!(self, Self::Netns(_) | Self::Port(_))
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Netns(c) => write!(f, "netns {c:x}"),
            Self::Port(i) => write!(f, "host interface #{i}"),
            Self::V4(a) => a.fmt(f),
            Self::V6Prefix(p) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*p) << 64)),
        }
    }
}

/// Open public connections per source, bounded per source, and the
/// addresses that hold their source's whole share and try for more (their
/// new connections are then dropped in the kernel: see `syn_filter`).
pub struct SourceConnections {
    /// 0: no per-source limit (and no accounting).
    per_source: usize,
    shares: Mutex<Shares>,
    /// Wakes whoever keeps the kernel's filter when `over` changes.
    over_changed: Notify,
    /// Addresses the attached kernel filter drops new connections of.
    filtered: AtomicUsize,
    /// Whether a connection accepted now may carry a filter inherited from
    /// its listener.
    may_inherit: AtomicBool,
}

#[derive(Default)]
struct Shares {
    open: HashMap<SourceKey, usize>,
    /// Open connections per IPv6 address (an IPv4 address is its own
    /// source).
    open_v6: HashMap<Ipv6Addr, usize>,
    /// Per source, the address that holds the source's whole share by
    /// itself and tried for more. Not a neighbour in the same /64 that
    /// finds the share full: it is not the one flooding. Ordered, so that
    /// a capped list is the same list every time.
    over: BTreeMap<SourceKey, IpAddr>,
}

/// One open connection of a tenant; the count drops with it.
pub struct SourceSlot {
    /// `None` when limits are off.
    owner: Option<Arc<SourceConnections>>,
    key: SourceKey,
    addr: IpAddr,
}

impl SourceConnections {
    /// `per_source`: how many connections one source may hold open; 0
    /// turns the limit off.
    pub fn new(per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            per_source,
            shares: Mutex::default(),
            over_changed: Notify::new(),
            filtered: AtomicUsize::new(0),
            may_inherit: AtomicBool::new(false),
        })
    }

    /// A slot for one more connection from `peer` of tenant `key`, unless
    /// the tenant holds its share. When `peer` alone holds all of an
    /// address tenant's share, or `peer` is a pod's (whose addresses are
    /// all its own), `peer` is marked as over its share until a slot of
    /// the tenant frees.
    pub fn try_open(self: &Arc<Self>, key: SourceKey, peer: IpAddr) -> Option<SourceSlot> {
        let addr = peer.to_canonical();
        if self.per_source == 0 {
            return Some(SourceSlot {
                owner: None,
                key,
                addr,
            });
        }
        let mut shares = self.shares.lock();
        let shares = &mut *shares;
        let n = shares.open.entry(key).or_default();
        if *n >= self.per_source {
            let alone = match addr {
                _ if key.owns_its_addresses() => true,
                IpAddr::V4(_) => true,
                IpAddr::V6(a) => shares.open_v6.get(&a).copied().unwrap_or(0) >= self.per_source,
            };
            if alone && shares.over.insert(key, addr) != Some(addr) {
                self.over_changed.notify_one();
            }
            return None;
        }
        *n += 1;
        if let IpAddr::V6(a) = addr {
            *shares.open_v6.entry(a).or_default() += 1;
        }
        Some(SourceSlot {
            owner: Some(self.clone()),
            key,
            addr,
        })
    }

    /// Connections tenant `key` holds open now.
    pub fn open(&self, key: SourceKey) -> usize {
        self.shares.lock().open.get(&key).copied().unwrap_or(0)
    }

    /// The tenants over their share, each with the address it last tried
    /// from (see [`SourceConnections::try_open`]), in a stable order.
    pub fn over_share(&self) -> Vec<(SourceKey, IpAddr)> {
        let shares = self.shares.lock();
        shares.over.iter().map(|(k, a)| (*k, *a)).collect()
    }

    /// Resolves when the set of addresses over their share may have
    /// changed since the last call (changes in between are coalesced).
    pub async fn over_share_changed(&self) {
        self.over_changed.notified().await;
    }

    /// How many addresses the kernel filter now drops new connections of
    /// (set by its keeper, read by `/metrics`).
    pub fn filtered(&self) -> usize {
        self.filtered.load(Ordering::Relaxed)
    }

    pub fn set_filtered(&self, n: usize) {
        self.filtered.store(n, Ordering::Relaxed);
    }

    /// Whether a connection accepted now may have inherited a filter from
    /// its listener (set by the filter's keeper, read at accept).
    pub fn may_inherit(&self) -> bool {
        self.may_inherit.load(Ordering::Relaxed)
    }

    pub fn set_may_inherit(&self, may: bool) {
        self.may_inherit.store(may, Ordering::Relaxed);
    }
}

impl SourceSlot {
    /// The tenant the connection counts for.
    pub fn key(&self) -> SourceKey {
        self.key
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let Some(owner) = &self.owner else {
            return;
        };
        let mut shares = owner.shares.lock();
        if let Some(n) = shares.open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                shares.open.remove(&self.key);
            }
        }
        if let IpAddr::V6(a) = self.addr {
            if let Some(n) = shares.open_v6.get_mut(&a) {
                *n -= 1;
                if *n == 0 {
                    shares.open_v6.remove(&a);
                }
            }
        }
        // Below its share again: its new connections are welcome.
        if shares.over.remove(&self.key).is_some() {
            owner.over_changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "fd12:3456:789a:1::5".parse().unwrap();
        let b: IpAddr = "fd12:3456:789a:1::9".parse().unwrap();
        let c: IpAddr = "fd12:3456:789a:2::5".parse().unwrap();
        assert_eq!(SourceKey::of(a), SourceKey::of(b));
        assert_ne!(SourceKey::of(a), SourceKey::of(c));
        assert_eq!(SourceKey::of(a).to_string(), "fd12:3456:789a:1::/64");
        let mapped: IpAddr = "::ffff:198.18.0.2".parse().unwrap();
        assert_eq!(SourceKey::of(mapped).to_string(), "198.18.0.2");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A connection from an address the host attributes to no pod.
    fn open(conns: &Arc<SourceConnections>, peer: IpAddr) -> Option<SourceSlot> {
        conns.try_open(SourceKey::of(peer), peer)
    }

    #[test]
    fn a_pods_addresses_are_one_tenant_and_pods_in_one_64_are_two() {
        let conns = SourceConnections::new(2);
        let (pod, neighbour) = (SourceKey::Netns(7), SourceKey::Netns(9));
        let (a, b, c) = (
            ip("fd12:3456:789a:1::5"),
            ip("198.18.0.2"),
            ip("198.18.0.10"),
        );
        // One pod, three addresses: one share of two.
        let _held = [
            conns.try_open(pod, a).unwrap(),
            conns.try_open(pod, b).unwrap(),
        ];
        assert!(conns.try_open(pod, c).is_none());
        // The address that tried is filtered, whichever of the pod's.
        assert_eq!(conns.over_share(), vec![(pod, c)]);
        // A neighbour in the same /64 has its own share.
        let n = ip("fd12:3456:789a:1::9");
        assert!(conns.try_open(neighbour, n).is_some());
        assert_eq!(conns.open(pod), 2);
    }

    #[test]
    fn a_source_gets_its_share_and_slots_come_back() {
        let conns = SourceConnections::new(2);
        let (k, other) = (ip("198.18.0.2"), ip("198.18.0.6"));
        let s1 = open(&conns, k).unwrap();
        let _s2 = open(&conns, k).unwrap();
        assert!(open(&conns, k).is_none());
        assert!(
            open(&conns, other).is_some(),
            "another source is unaffected"
        );
        assert_eq!(
            conns.over_share(),
            vec![(SourceKey::of(k), k)],
            "it tried to go beyond"
        );
        drop(s1);
        assert_eq!(conns.open(SourceKey::of(k)), 1);
        assert!(conns.over_share().is_empty(), "below its share again");
        assert!(open(&conns, k).is_some());
        let off = SourceConnections::new(0);
        let slots: Vec<_> = (0..1000).filter_map(|_| open(&off, k)).collect();
        assert_eq!((slots.len(), off.open(SourceKey::of(k))), (1000, 0));
    }

    #[test]
    fn only_the_address_holding_a_64s_whole_share_is_over_it() {
        let conns = SourceConnections::new(2);
        let (a, b) = (ip("fd12:3456:789a:1::5"), ip("fd12:3456:789a:1::9"));
        let held = [open(&conns, b).unwrap(), open(&conns, b).unwrap()];
        // A finds the /64's share full: refused, but not the one flooding.
        assert!(open(&conns, a).is_none());
        assert!(conns.over_share().is_empty());
        assert!(open(&conns, b).is_none());
        assert_eq!(conns.over_share(), vec![(SourceKey::of(b), b)]);
        drop(held);
        assert!(conns.over_share().is_empty());
        // Split between two addresses, nobody holds it alone.
        let _split = [open(&conns, a).unwrap(), open(&conns, b).unwrap()];
        assert!(open(&conns, a).is_none() && open(&conns, b).is_none());
        assert!(conns.over_share().is_empty());
        // IPv4-mapped IPv6 is the IPv4 address.
        let v4 = ip("198.18.0.2");
        let _m = [
            open(&conns, ip("::ffff:198.18.0.2")).unwrap(),
            open(&conns, v4).unwrap(),
        ];
        assert!(open(&conns, ip("::ffff:198.18.0.2")).is_none());
        assert_eq!(conns.over_share(), vec![(SourceKey::of(v4), v4)]);
    }

    /// Behind one port of a namespace nobody registered: one tenant, and
    /// any of its addresses that finds the share full is its flood, even
    /// one in a /64 it shares.
    #[test]
    fn a_port_is_one_tenant_whatever_addresses_it_uses() {
        let conns = SourceConnections::new(2);
        let port = SourceKey::Port(42);
        let (a, b, c) = (
            ip("fd12:3456:789a:1::5"),
            ip("fd12:3456:789a:1::9"),
            ip("198.18.0.7"),
        );
        let _held = [
            conns.try_open(port, a).unwrap(),
            conns.try_open(port, c).unwrap(),
        ];
        assert!(conns.try_open(port, b).is_none());
        assert_eq!(conns.over_share(), vec![(port, b)]);
        assert_eq!(port.to_string(), "host interface #42");
        // Another port, or the address outside any port, has its own.
        assert!(conns.try_open(SourceKey::Port(43), b).is_some());
        assert!(open(&conns, b).is_some());
    }
}
