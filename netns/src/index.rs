//! The address index: which watched namespaces hold an address right now.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::NetnsCookie;

/// Holders of one address, each with how many watchers report it.
type Holders = Vec<(NetnsCookie, u32)>;

/// Address → namespace instances holding it, kept current by the watchers.
///
/// Reads take a shared lock and do no syscall. Cloning is cheap (shared).
/// Each holder is counted, so two watchers of one namespace (one leaving
/// while the next starts, or the same namespace named by two paths) never
/// erase each other's entries.
#[derive(Clone, Debug, Default)]
pub struct AddressIndex {
    map: Arc<RwLock<HashMap<IpAddr, Holders>>>,
    /// Bumped by every change of the index or of a watcher's liveness.
    generation: Arc<AtomicU64>,
}

impl AddressIndex {
    /// Every watched namespace that holds `addr`, in no particular order.
    pub fn holders(&self, addr: &IpAddr) -> Vec<NetnsCookie> {
        self.map
            .read()
            .get(addr)
            .map(|v| v.iter().map(|(c, _)| *c).collect())
            .unwrap_or_default()
    }

    /// Whether namespace `cookie` holds `addr`.
    pub fn holds(&self, addr: &IpAddr, cookie: NetnsCookie) -> bool {
        self.map
            .read()
            .get(addr)
            .is_some_and(|v| v.iter().any(|(h, _)| *h == cookie))
    }

    /// Number of distinct addresses indexed.
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    /// Whether no address is indexed.
    pub fn is_empty(&self) -> bool {
        self.map.read().is_empty()
    }

    /// Changes whenever the index, or a watcher's liveness, does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Marks a change that is not in the map (a watcher stopped): call it
    /// after the change.
    pub(crate) fn touch(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Moves namespace `cookie` from address set `old` to `new`.
    pub(crate) fn update(
        &self,
        cookie: NetnsCookie,
        old: &BTreeSet<IpAddr>,
        new: &BTreeSet<IpAddr>,
    ) {
        if old == new {
            return;
        }
        let mut map = self.map.write();
        for addr in old.difference(new) {
            if let Some(holders) = map.get_mut(addr) {
                if let Some(pos) = holders.iter().position(|(h, _)| *h == cookie) {
                    holders[pos].1 -= 1;
                    if holders[pos].1 == 0 {
                        holders.swap_remove(pos);
                    }
                }
                if holders.is_empty() {
                    map.remove(addr);
                }
            }
        }
        for addr in new.difference(old) {
            let holders = map.entry(*addr).or_default();
            match holders.iter_mut().find(|(h, _)| *h == cookie) {
                Some((_, count)) => *count += 1,
                None => holders.push((cookie, 1)),
            }
        }
        // After the change, before the lock is released: whoever reads the
        // new number reads the new map.
        self.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(c: u64) -> NetnsCookie {
        NetnsCookie(c)
    }

    fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn update_moves_addresses_and_tracks_shared_ones() {
        let index = AddressIndex::default();
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        index.update(ns(1), &set(&[]), &set(&["198.18.0.2", "fd00::2"]));
        index.update(ns(2), &set(&[]), &set(&["198.18.0.2"]));
        let mut holders = index.holders(&a);
        holders.sort();
        assert_eq!(holders, vec![ns(1), ns(2)]);
        assert!(index.holds(&a, ns(1)));

        index.update(ns(1), &set(&["198.18.0.2", "fd00::2"]), &set(&["fd00::2"]));
        assert_eq!(index.holders(&a), vec![ns(2)]);
        index.update(ns(2), &set(&["198.18.0.2"]), &set(&[]));
        assert!(index.holders(&a).is_empty());
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn two_watchers_of_one_namespace_do_not_erase_each_other() {
        let index = AddressIndex::default();
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        index.update(ns(1), &set(&[]), &set(&["198.18.0.2"]));
        index.update(ns(1), &set(&[]), &set(&["198.18.0.2"]));
        index.update(ns(1), &set(&["198.18.0.2"]), &set(&[]));
        assert!(index.holds(&a, ns(1)));
        index.update(ns(1), &set(&["198.18.0.2"]), &set(&[]));
        assert!(!index.holds(&a, ns(1)));
    }
}
