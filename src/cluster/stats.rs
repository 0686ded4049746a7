//! What the publisher tells the metrics: whether it is connected, how
//! long its writes take, how often they fail, when one last succeeded,
//! and how often the node's name was refused. Atomics: written by the
//! publishing task, read by a scrape.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

/// Publish latency bucket bounds, seconds.
pub const BUCKETS: [f64; 8] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5];

#[derive(Debug, Default)]
pub struct Stats {
    connected: AtomicBool,
    errors: AtomicU64,
    refusals: AtomicU64,
    /// Unix seconds of the last successful write (0: none yet).
    last_success: AtomicU64,
    /// Not cumulative: summed at render.
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// A copy for a scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub connected: bool,
    pub errors: u64,
    pub refusals: u64,
    pub last_success: u64,
    /// Cumulative, one per bound in [`BUCKETS`].
    pub buckets: [u64; BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

impl Stats {
    /// A write (a transaction or a batch of them) that etcd applied.
    pub fn published(&self, took: Duration) {
        self.connected.store(true, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.last_success
            .store(crate::pods::unix_now(), Ordering::Relaxed);
    }

    /// A renewal etcd answered.
    pub fn reached(&self) {
        self.connected.store(true, Ordering::Relaxed);
    }

    /// A session ended on a store failure.
    pub fn failed(&self) {
        self.connected.store(false, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Another live lease holds the node's name.
    pub fn refused(&self) {
        self.connected.store(false, Ordering::Relaxed);
        self.refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// Stopped publishing.
    pub fn disconnected(&self) {
        self.connected.store(false, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut buckets = [0; BUCKETS.len()];
        let mut cumulative = 0;
        for (out, b) in buckets.iter_mut().zip(&self.buckets) {
            cumulative += b.load(Ordering::Relaxed);
            *out = cumulative;
        }
        Snapshot {
            connected: self.connected.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
            last_success: self.last_success.load(Ordering::Relaxed),
            buckets,
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}
