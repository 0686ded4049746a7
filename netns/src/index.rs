//! The address index: which watched namespaces hold an address right now.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::{Arc, RwLock},
};

use crate::NetnsId;

/// Holders of one address, each with how many watchers report it.
type Holders = Vec<(NetnsId, u32)>;

/// Address → namespaces holding it, kept current by the watchers.
///
/// Reads take a shared lock and do no syscall. Cloning is cheap (shared).
/// Each holder is counted, so two watchers of one namespace (one leaving
/// while the next starts) never erase each other's entries.
#[derive(Clone, Debug, Default)]
pub struct AddressIndex {
    map: Arc<RwLock<HashMap<IpAddr, Holders>>>,
}

impl AddressIndex {
    /// Every watched namespace that holds `addr`, in no particular order.
    pub fn holders(&self, addr: &IpAddr) -> Vec<NetnsId> {
        self.read()
            .get(addr)
            .map(|v| v.iter().map(|(id, _)| *id).collect())
            .unwrap_or_default()
    }

    /// Whether namespace `id` holds `addr`.
    pub fn holds(&self, addr: &IpAddr, id: NetnsId) -> bool {
        self.read()
            .get(addr)
            .is_some_and(|v| v.iter().any(|(h, _)| *h == id))
    }

    /// Number of distinct addresses indexed.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no address is indexed.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Moves namespace `id` from address set `old` to `new`.
    pub(crate) fn update(&self, id: NetnsId, old: &BTreeSet<IpAddr>, new: &BTreeSet<IpAddr>) {
        if old == new {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        for addr in old.difference(new) {
            if let Some(holders) = map.get_mut(addr) {
                if let Some(pos) = holders.iter().position(|(h, _)| *h == id) {
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
            match holders.iter_mut().find(|(h, _)| *h == id) {
                Some((_, count)) => *count += 1,
                None => holders.push((id, 1)),
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<IpAddr, Holders>> {
        // A panic while holding the lock cannot leave the map half-updated
        // in a way that matters more than refusing service forever would.
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> NetnsId {
        NetnsId { dev: 4, ino }
    }

    fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn update_moves_addresses_and_tracks_shared_ones() {
        let index = AddressIndex::default();
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        index.update(id(1), &set(&[]), &set(&["198.18.0.2", "fd00::2"]));
        index.update(id(2), &set(&[]), &set(&["198.18.0.2"]));
        let mut holders = index.holders(&a);
        holders.sort();
        assert_eq!(holders, vec![id(1), id(2)]);
        assert!(index.holds(&a, id(1)));

        index.update(id(1), &set(&["198.18.0.2", "fd00::2"]), &set(&["fd00::2"]));
        assert_eq!(index.holders(&a), vec![id(2)]);
        index.update(id(2), &set(&["198.18.0.2"]), &set(&[]));
        assert!(index.holders(&a).is_empty());
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn two_watchers_of_one_namespace_do_not_erase_each_other() {
        let index = AddressIndex::default();
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        index.update(id(1), &set(&[]), &set(&["198.18.0.2"]));
        index.update(id(1), &set(&[]), &set(&["198.18.0.2"]));
        index.update(id(1), &set(&["198.18.0.2"]), &set(&[]));
        assert!(index.holds(&a, id(1)));
        index.update(id(1), &set(&["198.18.0.2"]), &set(&[]));
        assert!(!index.holds(&a, id(1)));
    }
}
