//! One shard of `T` per thread: the hot path updates its own thread's
//! shard (an uncontended lock, no cache line shared with the other
//! workers); a reader visits every shard. For counters and log buffers
//! that every request touches.

use std::{
    any::Any,
    cell::RefCell,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

type Shard = Arc<dyn Any + Send + Sync>;

thread_local! {
    /// This thread's shards, by owner id (one entry per `PerThread`).
    static SHARDS: RefCell<Vec<(usize, Shard)>> = const { RefCell::new(Vec::new()) };
}

/// Shards of `T`, one per thread that used it.
pub struct PerThread<T> {
    id: usize,
    shards: Mutex<Vec<Arc<Mutex<T>>>>,
}

impl<T: Default + Send + 'static> Default for PerThread<T> {
    fn default() -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shards: Mutex::default(),
        }
    }
}

impl<T: Default + Send + 'static> PerThread<T> {
    /// Runs `f` on the calling thread's shard, creating it on first use.
    /// `f` may use other `PerThread`s.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        SHARDS.with(|cell| {
            // The common case: registered already; run under a shared
            // borrow of the thread's list (no reference count touched).
            if let Ok(local) = cell.try_borrow() {
                if let Some(shard) = local
                    .iter()
                    .find(|(id, _)| *id == self.id)
                    .and_then(|(_, shard)| shard.downcast_ref::<Mutex<T>>())
                {
                    return f(&mut shard.lock());
                }
            }
            let shard = Arc::new(Mutex::new(T::default()));
            self.shards.lock().push(shard.clone());
            // Registered for next time, unless this is a first use nested
            // inside another `with` (the list is borrowed): the shard then
            // serves this call alone, and still counts for readers.
            if let Ok(mut local) = cell.try_borrow_mut() {
                local.push((self.id, shard.clone() as Shard));
            }
            let mut guard = shard.lock();
            f(&mut guard)
        })
    }

    /// Runs `f` on every thread's shard, one at a time.
    pub fn for_each(&self, mut f: impl FnMut(&mut T)) {
        let shards: Vec<Arc<Mutex<T>>> = self.shards.lock().clone();
        for shard in shards {
            f(&mut shard.lock());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_has_its_shard_and_the_reader_sees_all() {
        let counters: Arc<PerThread<u64>> = Arc::default();
        let other: Arc<PerThread<String>> = Arc::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (counters, other) = (counters.clone(), other.clone());
                s.spawn(move || {
                    for _ in 0..1000 {
                        counters.with(|c| {
                            *c += 1;
                            // Another PerThread inside: no double borrow.
                            other.with(|o| o.push('x'));
                        });
                    }
                });
            }
        });
        let (mut total, mut shards) = (0, 0);
        counters.for_each(|c| {
            total += *c;
            shards += 1;
        });
        assert_eq!((total, shards), (4000, 4));
        let mut chars = 0;
        other.for_each(|o| chars += o.len());
        assert_eq!(chars, 4000);
    }
}
