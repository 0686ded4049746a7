//! Test doubles: an in-memory etcd that can go down or fail a write
//! half-way, and a source of entries the test changes at will.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;

use super::{
    source::Source,
    store::{Claim, Fence, Lease, Op, Store, StoreError},
};
use crate::jwt::JwkSet;

#[derive(Default)]
pub struct Etcd {
    pub kv: BTreeMap<Vec<u8>, (Vec<u8>, i64)>,
    pub leases: BTreeSet<i64>,
    pub next_lease: i64,
    pub down: bool,
    /// Calls refused while down.
    pub refused: usize,
    /// Claims answered `Held`.
    pub held: usize,
    /// Applies to let through before one fails (then `None` again).
    pub fail_apply_after: Option<usize>,
    /// Every write fails with this error while renewals go on (etcd's
    /// space alarm, or writes that time out).
    pub refuse_writes_with: Option<String>,
    /// Applies that wrote something.
    pub applies: usize,
    /// Renewals answered, by lease.
    pub renewals: BTreeMap<i64, usize>,
    /// `keys` calls answered.
    pub listings: usize,
}

impl Etcd {
    pub fn grant(&mut self) -> i64 {
        self.next_lease += 1;
        self.leases.insert(self.next_lease);
        self.next_lease
    }

    /// The lease ends (expiry or revocation): its keys go.
    pub fn expire(&mut self, lease: i64) {
        self.leases.remove(&lease);
        self.kv.retain(|_, (_, l)| *l != lease);
    }

    /// Keys starting with `prefix`, as text, with their values and leases.
    pub fn under(&self, prefix: &str) -> BTreeMap<String, (String, i64)> {
        self.kv
            .iter()
            .filter(|(k, _)| k.starts_with(prefix.as_bytes()))
            .map(|(k, (v, l))| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    (String::from_utf8_lossy(v).into_owned(), *l),
                )
            })
            .collect()
    }

    fn check(&mut self) -> Result<(), StoreError> {
        if self.down {
            self.refused += 1;
            return Err(StoreError::Etcd("connection refused".into()));
        }
        Ok(())
    }
}

pub struct FakeStore(pub Arc<Mutex<Etcd>>);

impl Store for FakeStore {
    async fn grant(&mut self, ttl: Duration) -> Result<Lease, StoreError> {
        let mut e = self.0.lock();
        e.check()?;
        Ok(Lease { id: e.grant(), ttl })
    }

    async fn renew(&mut self, lease: i64) -> Result<(), StoreError> {
        let mut e = self.0.lock();
        e.check()?;
        if e.leases.contains(&lease) {
            *e.renewals.entry(lease).or_default() += 1;
            Ok(())
        } else {
            Err(StoreError::LeaseLost)
        }
    }

    async fn revoke(&mut self, lease: i64) -> Result<(), StoreError> {
        let mut e = self.0.lock();
        e.check()?;
        e.expire(lease);
        Ok(())
    }

    async fn claim(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        ours: &[i64],
    ) -> Result<Claim, StoreError> {
        let mut e = self.0.lock();
        e.check()?;
        if let Some(holder) = e.kv.get(key.as_bytes()).map(|(_, l)| *l) {
            if holder != lease && !ours.contains(&holder) {
                e.held += 1;
                return Ok(Claim::Held { lease: holder });
            }
        }
        e.kv.insert(key.as_bytes().to_vec(), (value, lease));
        Ok(Claim::Claimed)
    }

    async fn keys(&mut self, prefix: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut e = self.0.lock();
        e.check()?;
        e.listings += 1;
        Ok(e.kv
            .keys()
            .filter(|k| k.starts_with(prefix.as_bytes()))
            .cloned()
            .collect())
    }

    async fn apply(&mut self, fence: &Fence, ops: Vec<Op>) -> Result<bool, StoreError> {
        let mut e = self.0.lock();
        e.check()?;
        match e.fail_apply_after {
            Some(0) => {
                // The connection drops: nothing of this batch is written.
                e.fail_apply_after = None;
                e.down = true;
                return Err(StoreError::Etcd("connection reset".into()));
            }
            Some(n) => e.fail_apply_after = Some(n - 1),
            None => {}
        }
        if let Some(error) = e.refuse_writes_with.clone().filter(|_| !ops.is_empty()) {
            return Err(StoreError::Etcd(error));
        }
        if e.kv.get(fence.key.as_bytes()).map(|(_, l)| *l) != Some(fence.lease) {
            return Ok(false);
        }
        let writes = !ops.is_empty();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    e.kv.insert(k.into_bytes(), (v, fence.lease));
                }
                Op::Delete(k) => {
                    e.kv.remove(&k);
                }
            }
        }
        if writes {
            e.applies += 1;
        }
        Ok(true)
    }
}

/// Entries by UUID; every change moves the generation.
#[derive(Default)]
pub struct Entries {
    entries: Mutex<BTreeMap<String, String>>,
    generation: AtomicU64,
    pub jwks: Mutex<JwkSet>,
}

impl Entries {
    pub fn set(&self, uuid: &str, value: &str) {
        self.entries.lock().insert(uuid.into(), value.into());
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn remove(&self, uuid: &str) {
        self.entries.lock().remove(uuid);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.entries.lock().clone()
    }
}

impl Source for Entries {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn jwks(&self) -> JwkSet {
        self.jwks.lock().clone()
    }

    fn for_each_entry(&self, f: &mut dyn FnMut(&str, &Arc<[u8]>)) {
        for (k, v) in self.entries.lock().iter() {
            f(k, &Arc::from(v.as_bytes()));
        }
    }
}
