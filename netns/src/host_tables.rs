//! The host namespace's forwarding facts, as netlink reports them (links,
//! main-table routes, neighbours, bridge FDB), and what they say about
//! where an address lives. Pure data: fed messages, answers lookups, no
//! I/O. These are facts a pod cannot change from inside its namespace.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};

use crate::{inventory::Published, NetnsCookie};

/// Where the host says an address lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// The host routes the address into this watched namespace instance
    /// through a veth (`ptp`-style: route → veth → peer namespace).
    Routed(NetnsCookie),
    /// The address is on a bridge; the host's neighbour entry and the
    /// bridge's FDB put it behind a veth into this watched instance. Only
    /// as strong as the bridge's anti-spoofing: `enforced` when the
    /// neighbour entry is permanent and the FDB entry static and sticky, so
    /// no other port can take the address or the MAC.
    Bridged {
        /// The instance behind the bridge port.
        cookie: NetnsCookie,
        /// Whether a pod on the bridge can take the address over.
        enforced: bool,
    },
    /// A veth into a namespace the set does not watch (never registered, or
    /// its watcher has stopped).
    Unwatched {
        /// The host-side end of that veth (routed) or the bridge port it
        /// is behind (bridged): its interface index. Everything behind one
        /// port is one neighbour of the host, whatever its addresses.
        port: u32,
    },
    /// Not a namespace on this host, with the reason: no route, a route
    /// via a gateway or out of an interface that is not a veth or bridge
    /// (another machine), a link-local address, ambiguous tables.
    Elsewhere(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum LinkKind {
    Veth,
    Bridge,
    Other,
}

#[derive(Clone, Debug)]
struct Link {
    kind: LinkKind,
    /// `IFLA_LINK_NETNSID`: where a veth's peer lives, as this namespace's
    /// id for it.
    peer_netnsid: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    priority: u32,
    tos: u8,
    kind: RouteType,
    oif: Option<u32>,
    via_gateway: bool,
    multipath: bool,
}

/// Routes of one family by prefix length (longest first when searched).
#[derive(Clone, Debug, Default)]
struct RouteTable {
    by_len: BTreeMap<u8, HashMap<u128, Vec<Route>>>,
}

impl RouteTable {
    /// Drops every route out of interface `oif`; returns whether any was.
    fn forget_oif(&mut self, oif: u32) -> bool {
        let mut changed = false;
        self.by_len.retain(|_, by_key| {
            by_key.retain(|_, routes| {
                let before = routes.len();
                routes.retain(|r| r.oif != Some(oif));
                changed |= before != routes.len();
                !routes.is_empty()
            });
            !by_key.is_empty()
        });
        changed
    }
}

#[derive(Clone, Debug)]
struct Neighbour {
    mac: Option<[u8; 6]>,
    state: NeighbourState,
}

#[derive(Clone, Debug)]
struct FdbEntry {
    port: u32,
    vlan: Option<u16>,
    /// Added by an operator (`static`/`permanent`), not learned.
    fixed: bool,
    sticky: bool,
}

/// An nsid's namespace, while a watcher of it runs (a watcher pins the
/// namespace, so the nsid cannot go to another one meanwhile).
#[derive(Clone, Debug)]
pub(crate) struct NsidEntry {
    pub(crate) cookie: NetnsCookie,
    /// The instance's watchers: one per path it was named by.
    pub(crate) watchers: Vec<Arc<Published>>,
}

/// Everything the host's view is made of.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostTables {
    links: HashMap<u32, Link>,
    v4: RouteTable,
    v6: RouteTable,
    neighbours: HashMap<(u32, IpAddr), Neighbour>,
    fdb: HashMap<(u32, [u8; 6]), Vec<FdbEntry>>,
}

/// One table of [`HostTables`], as one dump fills it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    /// Links, and with them everything else (dumped first).
    Links,
    RoutesV4,
    RoutesV6,
    NeighboursV4,
    NeighboursV6,
    Fdb,
}

impl HostTables {
    /// Forgets what `table`'s dump brought, before that dump is run again
    /// (it was interrupted: what it gave may be stale).
    pub(crate) fn clear(&mut self, table: Table) {
        match table {
            Table::Links => *self = Self::default(),
            Table::RoutesV4 => self.v4 = RouteTable::default(),
            Table::RoutesV6 => self.v6 = RouteTable::default(),
            Table::NeighboursV4 => self.neighbours.retain(|(_, ip), _| !ip.is_ipv4()),
            Table::NeighboursV6 => self.neighbours.retain(|(_, ip), _| !ip.is_ipv6()),
            Table::Fdb => self.fdb.clear(),
        }
    }

    /// Applies one dump entry or event; returns whether anything changed.
    /// Idempotent, so the same fact from a dump and an event is harmless.
    pub(crate) fn apply(&mut self, msg: &RouteNetlinkMessage) -> bool {
        match msg {
            // A bridge reports its ports again in the bridge family (at the
            // end of the forward delay, on carrier changes, on leaving),
            // without kind or peer namespace: news about the port, not
            // about the link.
            RouteNetlinkMessage::NewLink(m) | RouteNetlinkMessage::DelLink(m)
                if m.header.interface_family == AddressFamily::Bridge =>
            {
                false
            }
            RouteNetlinkMessage::NewLink(m) => self.set_link(m),
            RouteNetlinkMessage::DelLink(m) => self.forget_link(m.header.index),
            RouteNetlinkMessage::NewRoute(m) => self.route(m, true),
            RouteNetlinkMessage::DelRoute(m) => self.route(m, false),
            RouteNetlinkMessage::NewNeighbour(m) => self.neighbour(m, true),
            RouteNetlinkMessage::DelNeighbour(m) => self.neighbour(m, false),
            _ => false,
        }
    }

    fn set_link(&mut self, m: &LinkMessage) -> bool {
        let mut kind = LinkKind::Other;
        let mut peer_netnsid = None;
        for attr in &m.attributes {
            match attr {
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            kind = match k {
                                InfoKind::Veth => LinkKind::Veth,
                                InfoKind::Bridge => LinkKind::Bridge,
                                _ => LinkKind::Other,
                            };
                        }
                    }
                }
                LinkAttribute::LinkNetNsId(id) => peer_netnsid = Some(*id),
                _ => {}
            }
        }
        let link = Link { kind, peer_netnsid };
        let mut changed = self
            .links
            .get(&m.header.index)
            .is_none_or(|old| old.kind != link.kind || old.peer_netnsid != link.peer_netnsid);
        self.links.insert(m.header.index, link);
        if !m.header.flags.contains(LinkFlags::Up) {
            // The kernel flushes the IPv4 routes of a link that goes down
            // without a word (RTM_DELROUTE is not sent): mirror it.
            changed |= self.v4.forget_oif(m.header.index);
        }
        changed
    }

    /// A deleted link: its routes (IPv4 ones go unannounced), neighbours
    /// and FDB entries go with it.
    fn forget_link(&mut self, index: u32) -> bool {
        let mut changed = self.links.remove(&index).is_some();
        changed |= self.v4.forget_oif(index);
        changed |= self.v6.forget_oif(index);
        let before = self.neighbours.len();
        self.neighbours.retain(|(i, _), _| *i != index);
        changed |= before != self.neighbours.len();
        let before = self.fdb.len();
        self.fdb.retain(|(bridge, _), entries| {
            entries.retain(|e| e.port != index);
            *bridge != index && !entries.is_empty()
        });
        changed | (before != self.fdb.len())
    }

    fn route(&mut self, m: &RouteMessage, add: bool) -> bool {
        let mut table = u32::from(m.header.table);
        let mut dst = None;
        let mut route = Route {
            priority: 0,
            tos: m.header.tos,
            kind: m.header.kind,
            oif: None,
            via_gateway: false,
            multipath: false,
        };
        for attr in &m.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(a) => dst = Some(a.clone()),
                RouteAttribute::Priority(p) => route.priority = *p,
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => route.via_gateway = true,
                RouteAttribute::MultiPath(_) => route.multipath = true,
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            return false;
        }
        let len = m.header.destination_prefix_length;
        let (table, key) = match (m.header.address_family, dst) {
            (AddressFamily::Inet, Some(RouteAddress::Inet(a))) => {
                (&mut self.v4, mask(u128::from(u32::from(a)), len, 32))
            }
            (AddressFamily::Inet, None) => (&mut self.v4, 0),
            (AddressFamily::Inet6, Some(RouteAddress::Inet6(a))) => {
                (&mut self.v6, mask(u128::from(a), len, 128))
            }
            (AddressFamily::Inet6, None) => (&mut self.v6, 0),
            _ => return false,
        };
        let routes = table.by_len.entry(len).or_default().entry(key).or_default();
        let same = |r: &Route| {
            (r.priority, r.tos, r.oif, r.kind) == (route.priority, route.tos, route.oif, route.kind)
        };
        let changed = if add {
            match routes.iter_mut().find(|r| same(r)) {
                Some(r) if *r == route => false,
                Some(r) => {
                    *r = route;
                    true
                }
                None => {
                    routes.push(route);
                    true
                }
            }
        } else {
            let before = routes.len();
            routes.retain(|r| !same(r));
            before != routes.len()
        };
        if routes.is_empty() {
            if let Some(by_key) = table.by_len.get_mut(&len) {
                by_key.remove(&key);
                if by_key.is_empty() {
                    table.by_len.remove(&len);
                }
            }
        }
        changed
    }

    fn neighbour(&mut self, m: &NeighbourMessage, add: bool) -> bool {
        let mut dst = None;
        let mut mac = None;
        let mut master = None;
        let mut vlan = None;
        for attr in &m.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    dst = Some(IpAddr::V4(*a))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    dst = Some(IpAddr::V6(*a))
                }
                NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(&l[..]).ok(),
                NeighbourAttribute::Controller(b) => master = Some(*b),
                NeighbourAttribute::Vlan(v) => vlan = Some(*v),
                _ => {}
            }
        }
        let port = m.header.ifindex;
        match m.header.family {
            AddressFamily::Bridge => {
                // The bridge's own FDB (NTF_MASTER), not a port device's.
                let (Some(bridge), Some(mac)) = (master, mac) else {
                    return false;
                };
                let entries = self.fdb.entry((bridge, mac)).or_default();
                let before = entries.len();
                entries.retain(|e| e.vlan != vlan);
                let removed = before != entries.len();
                if add {
                    entries.push(FdbEntry {
                        port,
                        vlan,
                        fixed: matches!(
                            m.header.state,
                            NeighbourState::Noarp | NeighbourState::Permanent
                        ) && !m.header.flags.contains(NeighbourFlags::ExtLearned),
                        sticky: m.header.flags.contains(NeighbourFlags::Sticky),
                    });
                } else if entries.is_empty() {
                    self.fdb.remove(&(bridge, mac));
                }
                add || removed
            }
            AddressFamily::Inet | AddressFamily::Inet6 => {
                let Some(dst) = dst else {
                    return false;
                };
                if add {
                    self.neighbours.insert(
                        (port, dst),
                        Neighbour {
                            mac,
                            state: m.header.state,
                        },
                    );
                    true
                } else {
                    self.neighbours.remove(&(port, dst)).is_some()
                }
            }
            _ => false,
        }
    }

    /// The most specific usable main-table route to `addr`.
    fn route_to(&self, addr: IpAddr) -> Option<&Route> {
        let (table, bits, width) = match addr {
            IpAddr::V4(a) => (&self.v4, u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (&self.v6, u128::from(a), 128),
        };
        for (len, by_key) in table.by_len.iter().rev() {
            if let Some(routes) = by_key.get(&mask(bits, *len, width)) {
                // The lowest metric wins, as in the kernel's lookup.
                if let Some(best) = routes
                    .iter()
                    .filter(|r| r.tos == 0)
                    .min_by_key(|r| r.priority)
                {
                    return Some(best);
                }
            }
        }
        None
    }

    /// Where the host says `addr` lives. `nsids` maps this namespace's ids
    /// of peer namespaces to watched instances.
    pub(crate) fn attribute(&self, addr: IpAddr, nsids: &HashMap<i32, NsidEntry>) -> Attribution {
        if is_link_local(&addr) {
            return Attribution::Elsewhere("a link-local address is not attributable");
        }
        let Some(route) = self.route_to(addr) else {
            return Attribution::Elsewhere("the host has no route to it");
        };
        if route.kind != RouteType::Unicast {
            return Attribution::Elsewhere("the host's route to it does not deliver");
        }
        if route.multipath {
            return Attribution::Elsewhere("the host routes it over several paths");
        }
        if route.via_gateway {
            return Attribution::Elsewhere("the host routes it through a gateway");
        }
        let Some(link) = route.oif.and_then(|i| self.links.get(&i).map(|l| (i, l))) else {
            return Attribution::Elsewhere("the host's route to it names no known interface");
        };
        match link.1.kind {
            LinkKind::Veth if link.1.peer_netnsid.is_none() => {
                Attribution::Elsewhere("the host routes it to a veth whose peer is on the host")
            }
            LinkKind::Veth => match peer_instance(link.1, nsids) {
                Some(cookie) => Attribution::Routed(cookie),
                None => Attribution::Unwatched { port: link.0 },
            },
            LinkKind::Bridge => self.behind_bridge(link.0, addr, nsids),
            LinkKind::Other => {
                Attribution::Elsewhere("the host routes it out of an interface that is not a pod's")
            }
        }
    }

    /// The host-side ends of the veths whose peer is watched instance
    /// `cookie`, by interface index, in ascending order.
    pub(crate) fn veths_into(
        &self,
        cookie: NetnsCookie,
        nsids: &HashMap<i32, NsidEntry>,
    ) -> Vec<u32> {
        let mut found: Vec<u32> = self
            .links
            .iter()
            .filter(|(_, l)| l.kind == LinkKind::Veth && peer_instance(l, nsids) == Some(cookie))
            .map(|(i, _)| *i)
            .collect();
        found.sort_unstable();
        found
    }

    /// Neighbour entry → MAC → FDB port → veth → instance.
    fn behind_bridge(
        &self,
        bridge: u32,
        addr: IpAddr,
        nsids: &HashMap<i32, NsidEntry>,
    ) -> Attribution {
        let Some(neighbour) = self.neighbours.get(&(bridge, addr)) else {
            return Attribution::Elsewhere("the bridge has no neighbour entry for it");
        };
        let usable = matches!(
            neighbour.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        );
        let Some(mac) = neighbour.mac.filter(|_| usable) else {
            return Attribution::Elsewhere("the bridge's neighbour entry for it is not resolved");
        };
        let Some(entries) = self.fdb.get(&(bridge, mac)).filter(|e| !e.is_empty()) else {
            return Attribution::Elsewhere("the bridge has no FDB entry for its MAC address");
        };
        let port = entries[0].port;
        if entries.iter().any(|e| e.port != port) {
            return Attribution::Elsewhere("its MAC address is on several bridge ports");
        }
        let Some(link) = self
            .links
            .get(&port)
            .filter(|l| l.kind == LinkKind::Veth && l.peer_netnsid.is_some())
        else {
            return Attribution::Elsewhere("its bridge port is not a pod's veth");
        };
        let enforced = neighbour.state == NeighbourState::Permanent
            && entries.iter().all(|e| e.fixed && e.sticky);
        match peer_instance(link, nsids) {
            Some(cookie) => Attribution::Bridged { cookie, enforced },
            None => Attribution::Unwatched { port },
        }
    }
}

/// The watched, live instance at the other end of veth `link`.
fn peer_instance(link: &Link, nsids: &HashMap<i32, NsidEntry>) -> Option<NetnsCookie> {
    let entry = nsids.get(&link.peer_netnsid?)?;
    entry
        .watchers
        .iter()
        .any(|w| w.live.load(std::sync::atomic::Ordering::Acquire))
        .then_some(entry.cookie)
}

/// `bits` with everything after the first `len` of `width` bits cleared.
fn mask(bits: u128, len: u8, width: u32) -> u128 {
    let len = u32::from(len).min(width);
    if len == 0 {
        return 0;
    }
    let keep = u128::MAX << (width - len);
    let field = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    bits & keep & field
}

/// Whether `a` is link-local: such an address exists once per link, so it
/// is never an identity.
pub fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::{link::LinkHeader, neighbour::NeighbourHeader};

    fn link(index: u32, kind: InfoKind, netnsid: Option<i32>) -> RouteNetlinkMessage {
        let mut m = LinkMessage::default();
        m.header = LinkHeader {
            index,
            flags: LinkFlags::Up,
            ..LinkHeader::default()
        };
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]));
        if let Some(id) = netnsid {
            m.attributes.push(LinkAttribute::LinkNetNsId(id));
        }
        RouteNetlinkMessage::NewLink(m)
    }

    fn route(dst: &str, len: u8, oif: u32, gateway: bool) -> RouteMessage {
        let addr: IpAddr = dst.parse().unwrap();
        let mut m = RouteMessage::default();
        m.header.address_family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.destination_prefix_length = len;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.kind = RouteType::Unicast;
        m.attributes.push(RouteAttribute::Destination(match addr {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        }));
        m.attributes.push(RouteAttribute::Oif(oif));
        if gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(
                    "198.18.0.1".parse().unwrap(),
                )));
        }
        m
    }

    fn neigh(
        family: AddressFamily,
        ifindex: u32,
        dst: Option<&str>,
        mac: [u8; 6],
        state: NeighbourState,
        flags: NeighbourFlags,
        master: Option<u32>,
    ) -> RouteNetlinkMessage {
        let mut m = NeighbourMessage::default();
        m.header = NeighbourHeader {
            family,
            ifindex,
            state,
            flags,
            ..NeighbourHeader::default()
        };
        if let Some(d) = dst {
            m.attributes
                .push(NeighbourAttribute::Destination(match d.parse().unwrap() {
                    IpAddr::V4(a) => NeighbourAddress::Inet(a),
                    IpAddr::V6(a) => NeighbourAddress::Inet6(a),
                }));
        }
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        if let Some(b) = master {
            m.attributes.push(NeighbourAttribute::Controller(b));
        }
        RouteNetlinkMessage::NewNeighbour(m)
    }

    fn nsids(pairs: &[(i32, u64, bool)]) -> HashMap<i32, NsidEntry> {
        pairs
            .iter()
            .map(|(id, c, live)| {
                let p = Published::default();
                p.live.store(*live, std::sync::atomic::Ordering::Release);
                (
                    *id,
                    NsidEntry {
                        cookie: NetnsCookie(*c),
                        watchers: vec![Arc::new(p)],
                    },
                )
            })
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// An interrupted dump is run again on its own table: clearing it
    /// leaves the tables other dumps completed.
    #[test]
    fn clearing_a_table_keeps_the_others() {
        let mut t = HostTables::default();
        t.apply(&link(10, InfoKind::Veth, Some(1)));
        t.apply(&RouteNetlinkMessage::NewRoute(route(
            "198.18.0.0",
            30,
            10,
            false,
        )));
        t.apply(&RouteNetlinkMessage::NewRoute(route(
            "fd00:1::", 64, 10, false,
        )));
        for (family, dst) in [
            (AddressFamily::Inet, "198.18.0.2"),
            (AddressFamily::Inet6, "fd00:1::2"),
        ] {
            t.apply(&neigh(
                family,
                10,
                Some(dst),
                [2, 0, 0, 0, 0, 1],
                NeighbourState::Permanent,
                NeighbourFlags::empty(),
                None,
            ));
        }
        let n = nsids(&[(1, 100, true)]);
        let routed = Attribution::Routed(NetnsCookie(100));

        t.clear(Table::RoutesV4);
        assert_ne!(t.attribute(ip("198.18.0.1"), &n), routed);
        assert_eq!(t.attribute(ip("fd00:1::1"), &n), routed);
        assert_eq!(t.links.len(), 1);
        t.clear(Table::NeighboursV6);
        assert_eq!(
            t.neighbours.keys().map(|(_, a)| *a).collect::<Vec<_>>(),
            [ip("198.18.0.2")]
        );
        t.clear(Table::RoutesV6);
        assert_ne!(t.attribute(ip("fd00:1::1"), &n), routed);
        t.clear(Table::Links);
        assert!(t.links.is_empty() && t.neighbours.is_empty());
    }

    #[test]
    fn routed_pods_are_attributed_by_the_longest_prefix() {
        let mut t = HostTables::default();
        t.apply(&link(10, InfoKind::Veth, Some(1)));
        t.apply(&link(11, InfoKind::Veth, Some(2)));
        t.apply(&link(12, InfoKind::Veth, None));
        t.apply(&link(2, InfoKind::Dummy, None));
        for m in [
            route("198.18.0.0", 30, 10, false),
            route("198.18.0.2", 32, 11, false), // a moved address
            route("198.18.0.8", 30, 12, false),
            route("0.0.0.0", 0, 2, true),
            route("fd00:1::", 64, 10, false),
        ] {
            assert!(t.apply(&RouteNetlinkMessage::NewRoute(m)));
        }
        let n = nsids(&[(1, 100, true), (2, 200, true)]);
        assert_eq!(
            t.attribute(ip("198.18.0.1"), &n),
            Attribution::Routed(NetnsCookie(100))
        );
        assert_eq!(
            t.attribute(ip("198.18.0.2"), &n),
            Attribution::Routed(NetnsCookie(200))
        );
        assert_eq!(
            t.attribute(ip("fd00:1::5"), &n),
            Attribution::Routed(NetnsCookie(100))
        );
        assert!(matches!(
            t.attribute(ip("198.18.0.9"), &n),
            Attribution::Elsewhere(_)
        ));
        assert!(matches!(
            t.attribute(ip("198.19.9.9"), &n),
            Attribution::Elsewhere(_)
        ));
        assert!(matches!(
            t.attribute(ip("fd00:2::1"), &n),
            Attribution::Elsewhere(_)
        ));
        assert!(matches!(
            t.attribute(ip("fe80::1"), &n),
            Attribution::Elsewhere(_)
        ));
        // The /32 goes away: back to the /30's namespace.
        assert!(t.apply(&RouteNetlinkMessage::DelRoute(route(
            "198.18.0.2",
            32,
            11,
            false
        ))));
        assert_eq!(
            t.attribute(ip("198.18.0.2"), &n),
            Attribution::Routed(NetnsCookie(100))
        );
        // A stopped watcher's nsid names nothing any more.
        let stopped = nsids(&[(1, 100, false)]);
        assert_eq!(
            t.attribute(ip("198.18.0.1"), &stopped),
            Attribution::Unwatched { port: 10 }
        );
        // The host-side ends of each instance's veths (12's peer is on
        // the host); a stopped watcher's instance has none.
        assert_eq!(t.veths_into(NetnsCookie(100), &n), vec![10]);
        assert_eq!(t.veths_into(NetnsCookie(200), &n), vec![11]);
        assert!(t.veths_into(NetnsCookie(100), &stopped).is_empty());
        // The peer moved to another namespace.
        t.apply(&link(10, InfoKind::Veth, Some(7)));
        assert_eq!(
            t.attribute(ip("198.18.0.1"), &n),
            Attribution::Unwatched { port: 10 }
        );
        assert!(t.veths_into(NetnsCookie(100), &n).is_empty());
        // The veth is deleted (no RTM_DELROUTE for its IPv4 routes) and the
        // same subnet comes back on another one: the new one wins.
        let mut gone = LinkMessage::default();
        gone.header.index = 10;
        assert!(t.apply(&RouteNetlinkMessage::DelLink(gone)));
        assert!(matches!(
            t.attribute(ip("198.18.0.1"), &n),
            Attribution::Elsewhere(_)
        ));
        t.apply(&RouteNetlinkMessage::NewRoute(route(
            "198.18.0.0",
            30,
            11,
            false,
        )));
        assert_eq!(
            t.attribute(ip("198.18.0.1"), &n),
            Attribution::Routed(NetnsCookie(200))
        );
        // A link that goes down loses its IPv4 routes, silently too.
        let mut down = LinkMessage::default();
        down.header.index = 11;
        down.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Veth,
            )]));
        down.attributes.push(LinkAttribute::LinkNetNsId(2));
        t.apply(&RouteNetlinkMessage::NewLink(down));
        assert!(matches!(
            t.attribute(ip("198.18.0.1"), &n),
            Attribution::Elsewhere(_)
        ));
    }

    #[test]
    fn bridged_pods_go_through_neighbour_and_fdb_and_report_enforcement() {
        let mut t = HostTables::default();
        let (br, port_a, port_b) = (5, 20, 21);
        let (mac_a, mac_b) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
        t.apply(&link(br, InfoKind::Bridge, None));
        t.apply(&link(port_a, InfoKind::Veth, Some(1)));
        t.apply(&link(port_b, InfoKind::Veth, Some(2)));
        t.apply(&RouteNetlinkMessage::NewRoute(route(
            "198.18.4.0",
            24,
            br,
            false,
        )));
        let n = nsids(&[(1, 100, true), (2, 200, true)]);
        let a = ip("198.18.4.10");
        assert!(
            matches!(t.attribute(a, &n), Attribution::Elsewhere(_)),
            "no neighbour yet"
        );
        let learned = |mac, port| {
            neigh(
                AddressFamily::Bridge,
                port,
                None,
                mac,
                NeighbourState::Reachable,
                NeighbourFlags::Controller,
                Some(br),
            )
        };
        t.apply(&neigh(
            AddressFamily::Inet,
            br,
            Some("198.18.4.10"),
            mac_a,
            NeighbourState::Reachable,
            NeighbourFlags::empty(),
            None,
        ));
        t.apply(&learned(mac_a, port_a));
        assert_eq!(
            t.attribute(a, &n),
            Attribution::Bridged {
                cookie: NetnsCookie(100),
                enforced: false
            }
        );
        // A takeover: the neighbour entry now points at B's MAC.
        t.apply(&neigh(
            AddressFamily::Inet,
            br,
            Some("198.18.4.10"),
            mac_b,
            NeighbourState::Reachable,
            NeighbourFlags::empty(),
            None,
        ));
        t.apply(&learned(mac_b, port_b));
        assert_eq!(
            t.attribute(a, &n),
            Attribution::Bridged {
                cookie: NetnsCookie(200),
                enforced: false
            }
        );
        // A port's bridge-family news (the forward delay ended) changes
        // nothing about the veth behind it, nor does its leaving the bridge.
        let mut port_news = LinkMessage::default();
        port_news.header.index = port_a;
        port_news.header.interface_family = AddressFamily::Bridge;
        port_news.header.flags = LinkFlags::Up;
        assert!(!t.apply(&RouteNetlinkMessage::NewLink(port_news.clone())));
        assert!(!t.apply(&RouteNetlinkMessage::DelLink(port_news)));
        assert!(matches!(t.attribute(a, &n), Attribution::Bridged { .. }));
        // Enforced: permanent neighbour, static sticky FDB entry.
        t.apply(&neigh(
            AddressFamily::Inet,
            br,
            Some("198.18.4.10"),
            mac_a,
            NeighbourState::Permanent,
            NeighbourFlags::empty(),
            None,
        ));
        t.apply(&neigh(
            AddressFamily::Bridge,
            port_a,
            None,
            mac_a,
            NeighbourState::Noarp,
            NeighbourFlags::Controller | NeighbourFlags::Sticky,
            Some(br),
        ));
        assert_eq!(
            t.attribute(a, &n),
            Attribution::Bridged {
                cookie: NetnsCookie(100),
                enforced: true
            }
        );
    }

    #[test]
    fn masks() {
        assert_eq!(mask(0xc612_0007, 30, 32), 0xc612_0004);
        assert_eq!(mask(0xc612_0007, 32, 32), 0xc612_0007);
        assert_eq!(mask(0xc612_0007, 0, 32), 0);
        assert_eq!(mask(u128::MAX, 64, 128), u128::MAX << 64);
    }
}
