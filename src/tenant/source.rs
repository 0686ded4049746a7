//! Sources: who is on the other end of a public connection, as the
//! isolation controls count them, each source's share of connections, and
//! which sources went beyond it (their new connections are then dropped in
//! the kernel: see `syn_filter`).

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::{IpAddr, Ipv6Addr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// An IPv4 address, or an IPv6 /64 (one host or pod usually holds a whole
/// /64, so counting single IPv6 addresses would be no limit at all).
/// IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    V4(std::net::Ipv4Addr),
    V6Prefix(u64),
}

impl SourceKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => Self::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(a) => a.fmt(f),
            Self::V6Prefix(p) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*p) << 64)),
        }
    }
}

/// Open public connections per source, bounded per source.
pub struct SourceConnections {
    /// 0: no per-source limit (and no accounting).
    per_source: usize,
    shares: Mutex<Shares>,
    /// Wakes whoever keeps the kernel's filter when `over` changes.
    over_changed: Notify,
    /// Sources the attached kernel filter drops new connections of.
    filtered: AtomicUsize,
}

#[derive(Default)]
struct Shares {
    open: HashMap<SourceKey, usize>,
    /// Sources that tried to go beyond their share and still hold it all.
    /// Ordered, so that a capped list is the same list every time.
    over: BTreeSet<SourceKey>,
}

/// One open connection of a source; the count drops with it.
pub struct SourceSlot {
    /// `None` when limits are off.
    owner: Option<Arc<SourceConnections>>,
    key: SourceKey,
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
        })
    }

    /// A slot for one more connection of `key`, unless it holds its share
    /// (it is then marked as over its share until a slot of it frees).
    pub fn try_open(self: &Arc<Self>, key: SourceKey) -> Option<SourceSlot> {
        if self.per_source == 0 {
            return Some(SourceSlot { owner: None, key });
        }
        let mut shares = self.shares.lock();
        let n = shares.open.entry(key).or_default();
        if *n >= self.per_source {
            if shares.over.insert(key) {
                self.over_changed.notify_one();
            }
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            owner: Some(self.clone()),
            key,
        })
    }

    /// Connections `key` holds open now.
    pub fn open(&self, key: SourceKey) -> usize {
        self.shares.lock().open.get(&key).copied().unwrap_or(0)
    }

    /// Up to `limit` of the sources that tried to go beyond their share
    /// and still hold all of it, in a stable order.
    pub fn over_share(&self, limit: usize) -> Vec<SourceKey> {
        self.shares
            .lock()
            .over
            .iter()
            .take(limit)
            .copied()
            .collect()
    }

    /// Resolves when the set of sources over their share may have changed
    /// since the last call (changes in between are coalesced).
    pub async fn over_share_changed(&self) {
        self.over_changed.notified().await;
    }

    /// How many sources the kernel filter now drops new connections of
    /// (set by its keeper, read by `/metrics` and the accept path).
    pub fn filtered(&self) -> usize {
        self.filtered.load(Ordering::Relaxed)
    }

    pub fn set_filtered(&self, n: usize) {
        self.filtered.store(n, Ordering::Relaxed);
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
        // Below its share again: its new connections are welcome.
        if shares.over.remove(&self.key) {
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

    #[test]
    fn a_source_gets_its_share_and_slots_come_back() {
        let conns = SourceConnections::new(2);
        let k = SourceKey::of("198.18.0.2".parse().unwrap());
        let other = SourceKey::of("198.18.0.6".parse().unwrap());
        let s1 = conns.try_open(k).unwrap();
        let _s2 = conns.try_open(k).unwrap();
        assert!(conns.try_open(k).is_none());
        assert!(
            conns.try_open(other).is_some(),
            "another source is unaffected"
        );
        assert_eq!(conns.over_share(10), vec![k], "it tried to go beyond");
        drop(s1);
        assert_eq!(conns.open(k), 1);
        assert!(conns.over_share(10).is_empty(), "below its share again");
        assert!(conns.try_open(k).is_some());
        let off = SourceConnections::new(0);
        let slots: Vec<_> = (0..1000).filter_map(|_| off.try_open(k)).collect();
        assert_eq!((slots.len(), off.open(k)), (1000, 0));
    }
}
