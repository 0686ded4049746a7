//! Counters of netlink work, shared by the watch set and its inventories.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of netlink work, for metrics and for proving that the request
/// path does none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Namespace watchers in the set (live, or gone but still referenced).
    pub watched: usize,
    /// Address dumps requested, initial ones included.
    pub dumps: u64,
    /// Dumps beyond the initial one of each watcher (refreshes, overruns,
    /// interrupted dumps).
    pub redumps: u64,
    /// Kernel receive-buffer overruns (`ENOBUFS`).
    pub overruns: u64,
}

/// The running totals behind [`WatchStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) dumps: AtomicU64,
    pub(crate) redumps: AtomicU64,
    pub(crate) overruns: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, watched: usize) -> WatchStats {
        WatchStats {
            watched,
            dumps: self.dumps.load(Ordering::Relaxed),
            redumps: self.redumps.load(Ordering::Relaxed),
            overruns: self.overruns.load(Ordering::Relaxed),
        }
    }
}
