//! The churn test: a seeded, randomized run of everything a busy host does
//! to the agent (namespaces come and go, as routed veths or as ports of a
//! bridge that the operator pinned or not, and come back under a dead
//! one's name with its inode or on a dead one's addresses; pods register
//! in every form and leave, addresses move between pods, tenants take
//! addresses that are not theirs (another pod's, with its MAC address on
//! the bridge; nobody's; the host's), the agent is restarted or killed,
//! registrations race), interleaved with requests from random actors with
//! their own token, another pod's, a dead pod's, or none, each judged by
//! an oracle (see [`oracle`]).
//!
//! `CHURN_SEED` replays a run: the same seed gives the same operations.

pub mod oracle;
mod world;

use std::time::{Duration, Instant};

pub use world::World;

/// What one run does.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    /// `token`, `token+netns` or `netns`.
    pub mode: &'static str,
    /// Stops once both `requests` and `lifecycles` are reached, or at
    /// `duration`, whichever comes first.
    pub duration: Duration,
    pub requests: usize,
    pub lifecycles: usize,
    /// Namespaces alive at once, at most.
    pub slots: usize,
    /// Pool addresses per family, moved between pods.
    pub pool: usize,
}

impl Config {
    /// The seed from `CHURN_SEED`, else from the clock.
    pub fn seed_from_env() -> u64 {
        std::env::var("CHURN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
    }
}

/// What one run saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub mode: String,
    pub requests: usize,
    /// Of them, X509-SVID requests (a CSR posted; the SVID's SPIFFE ID is
    /// judged as the pod it names).
    pub svid_requests: usize,
    pub served: usize,
    pub refused: usize,
    /// Connections that never completed (a source the host routes
    /// elsewhere, as a hostile claim makes).
    pub connect_failures: usize,
    pub misattributions: Vec<String>,
    pub false_refusals_in_window: usize,
    /// False refusals outside the window: each one a failure.
    pub false_refusals: Vec<String>,
    pub lifecycles: usize,
    /// Namespaces created as ports of the bridge.
    pub bridged: usize,
    /// Requests from bridge ports that were served.
    pub bridged_served: usize,
    pub registrations: usize,
    pub restarts: usize,
    pub recycled_inodes: usize,
    pub takeovers: usize,
    pub races: usize,
    /// The agent's peak resident set (VmHWM), KiB, over its last life.
    pub peak_rss_kib: u64,
    /// Every namespace the run deleted was freed by the kernel (its veth
    /// vanished): the agent let go of all of them.
    pub all_freed: bool,
    pub elapsed: Duration,
    /// How long the kernel took to free the last deleted namespaces.
    pub free_wait: Duration,
    /// The last operations, for a failure's message.
    pub last_ops: Vec<String>,
}

impl Report {
    /// Whether the run found nothing wrong.
    pub fn clean(&self) -> bool {
        self.misattributions.is_empty() && self.false_refusals.is_empty() && self.all_freed
    }

    /// The false-refusal rate over all requests.
    pub fn false_refusal_rate(&self) -> f64 {
        (self.false_refusals_in_window + self.false_refusals.len()) as f64
            / self.requests.max(1) as f64
    }

    /// One paragraph for a failure message or a log.
    pub fn summary(&self) -> String {
        format!(
            "churn {mode} CHURN_SEED={seed}: {req} requests ({svids} for X509-SVIDs; {served} served, {refused} refused, {cf} connections refused by the network), {life} namespace lifecycles ({bridged} bridged, {bridged_served} answers to bridge ports), {regs} registrations, {restarts} restarts, {recycled} recycled inodes, {take} takeovers, {races} races in {secs:.1} s; misattributions {mis}, false refusals {fr_in} in window + {fr_out} outside ({rate:.4}%), peak RSS {rss} KiB, all freed: {freed} (in {fw} ms)",
            mode = self.mode,
            seed = self.seed,
            req = self.requests,
            svids = self.svid_requests,
            served = self.served,
            refused = self.refused,
            cf = self.connect_failures,
            life = self.lifecycles,
            bridged = self.bridged,
            bridged_served = self.bridged_served,
            regs = self.registrations,
            restarts = self.restarts,
            recycled = self.recycled_inodes,
            take = self.takeovers,
            races = self.races,
            secs = self.elapsed.as_secs_f64(),
            mis = self.misattributions.len(),
            fr_in = self.false_refusals_in_window,
            fr_out = self.false_refusals.len(),
            rate = 100.0 * self.false_refusal_rate(),
            rss = self.peak_rss_kib,
            freed = self.all_freed,
            fw = self.free_wait.as_millis(),
        )
    }

    /// The summary, the problems and the last operations.
    pub fn details(&self) -> String {
        let mut s = self.summary();
        for m in &self.misattributions {
            s += &format!("\nMISATTRIBUTION: {m}");
        }
        for f in self.false_refusals.iter().take(20) {
            s += &format!("\nfalse refusal: {f}");
        }
        s += "\nlast operations:";
        for op in &self.last_ops {
            s += &format!("\n  {op}");
        }
        s
    }
}

/// A small deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// Runs one churn and reports. Stops at the first misattribution.
pub fn run(config: &Config) -> Report {
    let start = Instant::now();
    let mut world = World::new(config);
    let mut rng = Rng::new(config.seed);
    while start.elapsed() < config.duration
        && (world.report.requests < config.requests || world.report.lifecycles < config.lifecycles)
        && world.report.misattributions.is_empty()
    {
        world.step(&mut rng);
    }
    world.finish(start.elapsed())
}
