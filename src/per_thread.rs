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
        let shard = SHARDS.with(|cell| {
            let found = cell
                .borrow()
                .iter()
                .find(|(id, _)| *id == self.id)
                .map(|(_, shard)| shard.clone());
            let shard = found.unwrap_or_else(|| {
                let shard = Arc::new(Mutex::new(T::default()));
                self.shards.lock().push(shard.clone());
                cell.borrow_mut().push((self.id, shard.clone() as Shard));
                shard as Shard
            });
            // Ids are unique per `PerThread`, whose `T` is fixed.
            shard.downcast::<Mutex<T>>().ok()
        });
        match shard {
            Some(shard) => f(&mut shard.lock()),
            None => unreachable!("a thread's shard has the wrong type"),
        }
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
