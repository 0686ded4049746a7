//! Many hosts (SPEC §8): with `--etcd`, the agent publishes its node
//! record (the JWK Set of its identity documents) and one key per pod (its
//! `GET /pods` entry) under one lease it keeps alive; operators and
//! relying parties read the whole cluster from there.
//!
//! The publisher only reads the agent's state (generation counters and
//! views), so neither the server nor the pods service knows that etcd
//! exists; without `--etcd` nothing here runs or connects.
//!
//! - `layout`: key names and the node record
//! - `source`: what is published, read from the agent's state
//! - `plan`: what changed since the last write
//! - `store`: what the publisher needs of a store; `etcd`: etcd's
//! - `publisher`: sessions, leases, claims, backoff
//! - `directory`: the readers' side (audit, trust bundle)
//! - `trust_domain`: the other nodes' keys, for the bundle pods get

mod backoff;
pub mod directory;
pub mod etcd;
#[cfg(test)]
mod fake;
pub mod layout;
pub mod memory;
pub mod plan;
pub mod publisher;
pub mod rfc3339;
pub mod source;
pub mod stats;
pub mod store;
pub mod trust_domain;

pub use directory::{Directory, ReadError};
pub use layout::{Layout, NodeRecord, DEFAULT_PREFIX};
pub use publisher::{Settings, Timing};
pub use source::Source;
pub use stats::Stats;

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};

/// How long a stopping agent waits for the publisher to revoke its lease.
const STOP_LIMIT: Duration = Duration::from_secs(3);

/// `--etcd`, `--etcd-prefix`, `--etcd-lease-ttl`, and the node's name.
#[derive(Clone, Debug)]
pub struct Config {
    pub endpoints: Vec<String>,
    /// TLS and the user (`--etcd-cacert` ...).
    pub access: etcd::Access,
    pub prefix: String,
    pub lease_ttl: Duration,
    pub node: String,
    /// The node's memory in `--state-dir` (its last lease, its secret).
    pub memory: Option<memory::Memory>,
}

/// The member (an index into `--etcd`, modulo its length) a node's agent
/// asks first: the bytes of its name summed. A fleet whose agents are
/// all given the same list spreads over the members (names that count up
/// spread evenly), so that a member's death moves a share of the agents,
/// each costing a survivor a password check on a secure etcd, not all of
/// them onto the next member at once.
pub fn first_member(node: &str) -> usize {
    node.bytes()
        .fold(0usize, |sum, b| sum.wrapping_add(usize::from(b)))
}

/// The time bound of one etcd call: long enough for a batch on a busy
/// etcd, short enough that a lease of `ttl` is renewed in time.
pub fn call_timeout(ttl: Duration) -> Duration {
    (ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// The running publisher.
pub struct Handle {
    stop: watch::Sender<bool>,
    refresh: Arc<tokio::sync::Notify>,
    task: JoinHandle<()>,
    /// The trust domain's follower (`trust_domain`), when the agent's own.
    follower: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl Handle {
    /// Re-publishes now (SIGHUP): compares etcd with the agent's state and
    /// repairs it, or, between sessions, retries at once.
    pub fn refresh(&self) {
        self.refresh.notify_one();
    }

    /// Stops publishing and revokes the lease (the node's keys vanish
    /// now rather than at expiry), bounded in time.
    pub async fn stop(self) {
        if let Some((stop, task)) = self.follower {
            let _ = stop.send(true);
            task.abort();
        }
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(STOP_LIMIT, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Starts publishing the agent's state to etcd. Returns at once: etcd
/// being down delays nothing. `stats` feed the metrics.
pub fn start(config: Config, state: Arc<crate::state::AppState>, stats: Arc<Stats>) -> Handle {
    let (stopping, stopped) = watch::channel(false);
    let follower = tokio::spawn(trust_domain::follow(config.clone(), state.clone(), stopped));
    let mut handle = start_with(config, Arc::new(source::StateSource::new(state)), stats);
    handle.follower = Some((stopping, follower));
    handle
}

/// Starts publishing `source` to etcd.
pub fn start_with<S: Source>(config: Config, source: Arc<S>, stats: Arc<Stats>) -> Handle {
    let timeout = call_timeout(config.lease_ttl);
    let endpoints = config.endpoints.clone();
    let access = config.access.clone();
    let settings = Settings {
        layout: Layout::new(&config.prefix),
        node: config.node,
        lease_ttl: config.lease_ttl,
        timing: Timing::default(),
        refresh: Arc::default(),
        stats,
        memory: config.memory,
    };
    let refresh = settings.refresh.clone();
    let (stop, stopped) = watch::channel(false);
    let node = settings.node.clone();
    let connect = move || {
        let (endpoints, access, node) = (endpoints.clone(), access.clone(), node.clone());
        async move {
            let mut store = etcd::EtcdStore::connect(&endpoints, &access, timeout).await?;
            store.prefer_member(first_member(&node));
            Ok(store)
        }
    };
    let task = tokio::spawn(publisher::run(settings, source, connect, stopped));
    Handle {
        stop,
        refresh,
        task,
        follower: None,
    }
}

#[cfg(test)]
mod first_member_tests {
    use super::first_member;

    #[test]
    fn names_that_count_up_spread_evenly_over_the_members() {
        let mut per_member = [0; 3];
        for n in 0..99 {
            per_member[first_member(&format!("node-{n:03}")) % 3] += 1;
        }
        assert_eq!(per_member, [33, 33, 33]);
    }
}
