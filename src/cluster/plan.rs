//! What a pass must write: the local entries compared with what was last
//! published, so that an unchanged pod costs a serialization and a
//! comparison, never a write.

use std::{collections::HashMap, sync::Arc};

use super::source::Source;

/// What this agent wrote under its current lease: each pod's entry by
/// UUID, as etcd acknowledged it.
#[derive(Debug, Default)]
pub struct Published {
    entries: HashMap<String, Entry>,
    /// Which pass last saw each entry in the source.
    pass: u64,
}

#[derive(Debug)]
struct Entry {
    value: Arc<[u8]>,
    seen: u64,
}

/// Puts (UUID, entry) and deletes (UUID) that bring etcd to the source.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub puts: Vec<(String, Arc<[u8]>)>,
    pub deletes: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

impl Published {
    /// Forgets everything (a new lease: everything is written again).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, uuid: &str) -> bool {
        self.entries.contains_key(uuid)
    }

    pub fn uuids(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Compares the source's entries with the published ones.
    pub fn plan(&mut self, source: &dyn Source) -> Plan {
        self.pass += 1;
        let pass = self.pass;
        let mut puts = Vec::new();
        let entries = &mut self.entries;
        source.for_each_entry(&mut |uuid, value| match entries.get_mut(uuid) {
            Some(e) => {
                e.seen = pass;
                // The same buffer (an entry the source kept) or the
                // same bytes: unchanged.
                if !Arc::ptr_eq(&e.value, value) {
                    if *e.value == **value {
                        // The same bytes in a new buffer: keep the
                        // source's, so that the next pass compares pointers.
                        e.value = value.clone();
                    } else {
                        puts.push((uuid.to_owned(), value.clone()));
                    }
                }
            }
            None => puts.push((uuid.to_owned(), value.clone())),
        });
        let deletes = self
            .entries
            .iter()
            .filter(|(_, e)| e.seen != pass)
            .map(|(uuid, _)| uuid.clone())
            .collect();
        Plan { puts, deletes }
    }

    /// Records a put etcd acknowledged.
    pub fn put(&mut self, uuid: String, value: Arc<[u8]>) {
        let seen = self.pass;
        self.entries.insert(uuid, Entry { value, seen });
    }

    /// Records a delete etcd acknowledged, or an entry to write again.
    pub fn forget(&mut self, uuid: &str) {
        self.entries.remove(uuid);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::jwt::JwkSet;

    struct Entries(BTreeMap<&'static str, &'static str>);

    impl Source for Entries {
        fn generation(&self) -> u64 {
            0
        }
        fn jwks(&self) -> JwkSet {
            JwkSet::default()
        }
        fn for_each_entry(&self, f: &mut dyn FnMut(&str, &Arc<[u8]>)) {
            for (k, v) in &self.0 {
                f(k, &Arc::from(v.as_bytes()));
            }
        }
    }

    fn apply(p: &mut Published, plan: &Plan) {
        for (uuid, value) in &plan.puts {
            p.put(uuid.clone(), value.clone());
        }
        for uuid in &plan.deletes {
            p.forget(uuid);
        }
    }

    #[test]
    fn only_changes_are_written() {
        let mut p = Published::default();
        let mut src = Entries(BTreeMap::from([("a", "1"), ("b", "2")]));
        let plan = p.plan(&src);
        assert_eq!(plan.puts.len(), 2);
        assert!(plan.deletes.is_empty());
        apply(&mut p, &plan);
        assert!(p.plan(&src).is_empty(), "nothing changed, nothing written");

        src.0.insert("b", "3");
        src.0.remove("a");
        src.0.insert("c", "4");
        let plan = p.plan(&src);
        assert_eq!(
            plan.puts,
            vec![
                ("b".into(), Arc::from(b"3".as_slice())),
                ("c".into(), Arc::from(b"4".as_slice()))
            ]
        );
        assert_eq!(plan.deletes, vec!["a".to_string()]);
        apply(&mut p, &plan);
        assert!(p.plan(&src).is_empty());
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn an_unacknowledged_write_is_planned_again() {
        let mut p = Published::default();
        let src = Entries(BTreeMap::from([("a", "1")]));
        let plan = p.plan(&src);
        assert_eq!(plan.puts.len(), 1);
        // The write failed: nothing recorded.
        assert_eq!(p.plan(&src), plan);
    }
}
