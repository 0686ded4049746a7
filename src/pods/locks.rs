//! One async lock per pod UUID: the steps that change one registration
//! (find its namespace, store it, write it to disk, remove it) never
//! interleave with another change of the same pod, so memory and disk end
//! in the same state whatever order racing requests arrive in.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

use crate::appc::PodUuid;

#[derive(Default)]
pub struct PodLocks {
    locks: Mutex<HashMap<PodUuid, Weak<tokio::sync::Mutex<()>>>>,
}

impl PodLocks {
    /// Waits for exclusive use of `uuid`'s registration.
    pub async fn lock(&self, uuid: &PodUuid) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock();
            if locks.len() > 64 {
                // Forget the locks nobody holds or waits for.
                locks.retain(|_, w| w.strong_count() > 0);
            }
            match locks.get(uuid).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(*uuid, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_pod_and_independent_pods() {
        let locks = PodLocks::default();
        let a = PodUuid::parse("de305d54-75b4-431b-adb2-eb6b9e546013").unwrap();
        let b = PodUuid::parse("fe305d54-75b4-431b-adb2-eb6b9e546013").unwrap();
        let held = locks.lock(&a).await;
        // Another pod is not held up.
        let _other = locks.lock(&b).await;
        let second = tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock(&a));
        assert!(second.await.is_err(), "the same pod must wait");
        drop(held);
        let _again = locks.lock(&a).await;
    }
}
