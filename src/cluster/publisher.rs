//! The publishing loop. One session per lease: claim the node's name,
//! write everything under the new lease and delete whatever else etcd
//! holds under the node's pods, then follow local changes until the
//! store fails, the lease is lost or the agent stops; then back off and
//! start a new session. Local service never waits on any of it.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::Arc,
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use super::{
    backoff::Backoff,
    layout::{Layout, NodeRecord},
    plan::{Plan, Published},
    rfc3339,
    source::Source,
    store::{Claim, Fence, Lease, Op, Store, StoreError},
};
use crate::jwt::JwkSet;

/// Writes per transaction (etcd's default `--max-txn-ops` is 128).
const MAX_OPS: usize = 100;
/// Bytes of keys and values per transaction (etcd's default
/// `--max-request-bytes` is 1.5 MiB).
const MAX_TXN_BYTES: usize = 1 << 20;
/// A pass whose planning cost C is followed by a pause of C times this
/// (at most `Timing::max_gap`).
const GAP_FACTOR: u32 = 10;
/// How etcd refuses a write while its space alarm is raised.
const NO_SPACE: &str = "database space exceeded";
/// Earlier leases remembered as ours (to take our node key back from).
const MAX_OURS: usize = 16;
/// The longest time between two renewals (a third of the TTL if shorter):
/// how long an idle agent may take to notice that etcd went away.
const RENEW_MAX: Duration = Duration::from_secs(2);

/// How often and how fast the loop acts.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How often the local generation and JWK Set are read.
    pub poll: Duration,
    /// The longest pause after a pass before the next: a pass whose
    /// planning cost C waits 10 C (at most this), so that a long burst of
    /// changes (or of the host's network events, which move the
    /// generation) costs at most about a tenth of a core. The time its
    /// write waits for etcd does not count: it costs the agent nothing,
    /// and a busy etcd would otherwise hold every change back by 10 times
    /// its latency (a burst's p99 was the 500 ms cap). Changes within one
    /// `poll` share a pass.
    pub max_gap: Duration,
    /// The first and the longest wait between two sessions.
    pub backoff_first: Duration,
    pub backoff_cap: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(20),
            max_gap: Duration::from_millis(500),
            backoff_first: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub layout: Layout,
    pub node: String,
    pub lease_ttl: Duration,
    pub timing: Timing,
    /// Notified to re-publish now (SIGHUP).
    pub refresh: Arc<tokio::sync::Notify>,
    /// For the metrics.
    pub stats: Arc<super::stats::Stats>,
    /// The node's memory in the state directory, if it has one.
    pub memory: Option<super::memory::Memory>,
}

/// Why a session ended.
enum End {
    Stopped,
    /// The store failed (down, unreachable, too slow).
    Failed(String),
    /// The lease expired or was revoked.
    Lost(String),
    /// etcd refused who we are or what we asked (a certificate, a
    /// password, a role): an operator must act.
    Denied(String),
    /// Another live lease holds the node's name.
    Refused {
        holder: i64,
    },
    /// A write found the node key no longer attached to our lease.
    Fenced,
}

impl From<StoreError> for End {
    fn from(e: StoreError) -> Self {
        match e {
            // INVALID_ARGUMENT, PERMISSION_DENIED, UNAUTHENTICATED.
            StoreError::Refused(_)
            | StoreError::Status {
                code: 3 | 7 | 16, ..
            } => End::Denied(e.to_string()),
            // Gone for good: a new session, a new lease.
            StoreError::LeaseLost => End::Lost(e.to_string()),
            e => End::Failed(e.to_string()),
        }
    }
}

/// What was last said in the log, so that an outage is one line.
#[derive(Clone, PartialEq, Eq)]
enum Said {
    Nothing,
    Publishing,
    Unreachable,
    Refused,
    /// This denial (each distinct one is said once).
    Denied(String),
}

/// One session's lease and its renewal clock.
struct Session {
    lease: Lease,
    fence: Fence,
    renew_every: Duration,
    next_renew: Instant,
    /// A call failed and the session goes on (said once).
    failing: bool,
    /// The last renewal failed (etcd is away, not refusing writes).
    renewal_failed: bool,
    /// Since when etcd has renewed the lease but refused every write.
    writes_refused_since: Option<Instant>,
}

struct Publisher<S: Source> {
    settings: Settings,
    source: Arc<S>,
    published: Published,
    /// The JWK Set in the node record etcd has.
    /// The node's keys as last published.
    jwks: Option<NodeKeys>,
    /// Leases this agent was granted that may still hold its keys.
    ours: Vec<i64>,
    /// Pods whose entry is too large for one etcd request, with the size
    /// that was warned about.
    oversize: HashMap<String, usize>,
    said: Said,
}

/// Runs until `stop` turns true (or its sender goes), then revokes the
/// lease so that the node's keys vanish at once. `connect` makes a new
/// store connection for each session.
pub async fn run<S, St, C, F>(
    settings: Settings,
    source: Arc<S>,
    mut connect: C,
    mut stop: watch::Receiver<bool>,
) where
    S: Source,
    St: Store,
    C: FnMut() -> F + Send,
    F: Future<Output = Result<St, StoreError>> + Send,
{
    let mut backoff = Backoff::new(settings.timing.backoff_first, settings.timing.backoff_cap);
    // The lease of this node's last run (a crash restart): ours to take
    // back, if the record names our secret.
    let ours = settings
        .memory
        .as_ref()
        .and_then(|m| m.previous_lease(&settings.node, settings.layout.prefix()))
        .into_iter()
        .collect();
    let mut p = Publisher {
        settings,
        source,
        published: Published::default(),
        jwks: None,
        ours,
        oversize: HashMap::new(),
        said: Said::Nothing,
    };
    loop {
        if *stop.borrow() {
            return;
        }
        let end = match connect().await {
            Ok(mut store) => p.session(&mut store, &mut stop, &mut backoff).await,
            Err(e) => e.into(),
        };
        p.report(&end);
        if matches!(end, End::Stopped) {
            return;
        }
        let delay = backoff.next_jittered();
        let refresh = p.settings.refresh.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // Asked to publish now: retry at once.
            _ = refresh.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

impl<S: Source> Publisher<S> {
    fn node(&self) -> &str {
        &self.settings.node
    }

    /// One line per change of condition, not per retry.
    fn report(&mut self, end: &End) {
        let stats = &self.settings.stats;
        match end {
            End::Stopped => stats.disconnected(),
            End::Failed(_) | End::Lost(_) | End::Denied(_) | End::Fenced => stats.failed(),
            End::Refused { .. } => stats.refused(),
        }
        let node = self.settings.node.as_str();
        match end {
            End::Stopped => {}
            End::Lost(error) => {
                tracing::warn!(
                    node,
                    error = %error,
                    "the etcd lease is gone (it expired, or etcd lost its data): publishing everything again under a new lease"
                );
                self.said = Said::Unreachable;
            }
            End::Failed(error) if self.said != Said::Unreachable => {
                tracing::warn!(
                    node,
                    error = %error,
                    "etcd unreachable: not publishing the cluster directory (local service goes on); retrying with backoff"
                );
                self.said = Said::Unreachable;
            }
            End::Failed(error) => tracing::debug!(node, error = %error, "etcd still unreachable"),
            End::Denied(error) if self.said != Said::Denied(error.clone()) => {
                tracing::error!(
                    node,
                    error = %error,
                    "etcd refused this agent: not publishing the cluster directory (local service goes on); retrying with backoff"
                );
                self.said = Said::Denied(error.clone());
            }
            End::Denied(error) => {
                tracing::debug!(node, error = %error, "etcd still refuses this agent")
            }
            End::Refused { holder } if self.said != Said::Refused => {
                tracing::error!(
                    node,
                    holder = format!("{holder:x}"),
                    "this node name is held in etcd under another live lease (another agent with the same --node-name, or a previous run that cannot be proven this node's: a lost node secret): not publishing; local service goes on; the claim is retried"
                );
                self.said = Said::Refused;
            }
            End::Refused { .. } => tracing::debug!(node, "the node name is still held"),
            End::Fenced => {
                tracing::warn!(
                    node,
                    "the node key is no longer attached to this agent's lease: claiming it again"
                );
                self.said = Said::Unreachable;
            }
        }
    }

    async fn session<St: Store>(
        &mut self,
        store: &mut St,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> End {
        let lease = match store.grant(self.settings.lease_ttl).await {
            Ok(lease) => lease,
            Err(e) => return e.into(),
        };
        // From now on the lease may hold our keys, until revoked.
        self.ours.push(lease.id);
        if self.ours.len() > MAX_OURS {
            self.ours.remove(0);
        }
        let jwks = self.node_keys();
        let node_key = self.settings.layout.node(self.node());
        let previous: Vec<i64> = self.ours.clone();
        match store
            .claim(&node_key, self.node_record(&jwks), lease.id, &previous)
            .await
        {
            Ok(Claim::Claimed) => {}
            Ok(Claim::Held { lease: holder }) => {
                self.ours.retain(|l| *l != lease.id);
                if let Err(e) = store.revoke(lease.id).await {
                    tracing::debug!(error = %e, "cannot revoke an unused lease (it will expire)");
                }
                return End::Refused { holder };
            }
            Err(e) => return e.into(),
        }
        self.jwks = Some(jwks);
        if let Some(memory) = &self.settings.memory {
            if let Err(e) = memory.remember(self.node(), self.settings.layout.prefix(), lease.id) {
                tracing::warn!(error = %e, "cannot remember the etcd lease in the state directory: a crash restart will wait for it to expire");
            }
        }
        // Often enough to notice a lost etcd within seconds, whatever the TTL.
        let renew_every = (lease.ttl / 3).clamp(Duration::from_millis(200), RENEW_MAX);
        let mut s = Session {
            lease,
            fence: Fence {
                key: node_key,
                lease: lease.id,
            },
            renew_every,
            next_renew: Instant::now() + renew_every,
            failing: false,
            renewal_failed: false,
            writes_refused_since: None,
        };
        match self.republish(store, &mut s).await {
            Ok(()) => {}
            Err(end) => return end,
        }
        backoff.reset();
        self.follow(store, &mut s, stop).await
    }

    /// Everything under the new lease; whatever else etcd has under the
    /// node's pods goes (pods dropped while etcd was away, a write left
    /// half done by an earlier session). Then the older leases are
    /// revoked: nothing of ours is attached to them any more.
    async fn republish<St: Store>(&mut self, store: &mut St, s: &mut Session) -> Result<(), End> {
        let started = Instant::now();
        let listed = store
            .keys(&self.settings.layout.pods_of(self.node()))
            .await?;
        self.published.clear();
        self.oversize.clear();
        let plan = self.plan().await?;
        let layout = &self.settings.layout;
        let wanted: HashSet<Vec<u8>> = plan
            .puts
            .iter()
            .map(|(uuid, _)| layout.pod(&self.settings.node, uuid).into_bytes())
            .collect();
        let stale: Vec<Vec<u8>> = listed.into_iter().filter(|k| !wanted.contains(k)).collect();
        let (pods, removed) = (plan.puts.len(), stale.len());
        self.write(store, s, plan, stale).await?;
        for old in self.ours.clone() {
            if old != s.lease.id {
                if let Err(e) = store.revoke(old).await {
                    tracing::debug!(lease = format!("{old:x}"), error = %e, "cannot revoke an earlier lease (it will expire)");
                }
            }
        }
        self.ours = vec![s.lease.id];
        let node = self.settings.node.as_str();
        let lease = format!("{:x}", s.lease.id);
        let millis = started.elapsed().as_millis() as u64;
        match self.said {
            Said::Nothing | Said::Publishing => {
                tracing::info!(node, lease, pods, removed, millis, "publishing to etcd")
            }
            Said::Unreachable | Said::Refused | Said::Denied(_) => tracing::info!(
                node,
                lease,
                pods,
                removed,
                millis,
                "etcd reachable: re-published everything under a new lease"
            ),
        }
        self.said = Said::Publishing;
        Ok(())
    }

    /// Follows local changes until something ends the session.
    async fn follow<St: Store>(
        &mut self,
        store: &mut St,
        s: &mut Session,
        stop: &mut watch::Receiver<bool>,
    ) -> End {
        let timing = self.settings.timing.clone();
        let mut poll = tokio::time::interval(timing.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The directory is compared with what was published (a read).
        let check_every = (s.lease.ttl / 2).max(Duration::from_secs(1));
        let mut next_check = Instant::now() + check_every;
        let mut generation = self.source.generation();
        let mut next_pass = Instant::now();
        // The re-publish read the source after this generation.
        let mut dirty = false;
        let asked = self.settings.refresh.clone();
        // Between retries of a failed pass within the session.
        let mut retry = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            let mut forced = false;
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    // Leaving: the node's keys go now, not at expiry.
                    if let Err(e) = store.revoke(s.lease.id).await {
                        tracing::warn!(error = %e, "cannot revoke the lease: the node's keys stay in etcd until it expires");
                    }
                    return End::Stopped;
                }
                _ = asked.notified() => forced = true,
                _ = poll.tick() => {}
            }
            let result = async {
                self.renew_if_due(store, s).await?;
                let now = Instant::now();
                let current = self.source.generation();
                if current != generation {
                    generation = current;
                    dirty = true;
                }
                let check = now >= next_check || forced;
                if (dirty && now >= next_pass) || check {
                    dirty = false;
                    let started = Instant::now();
                    let plan = self.plan().await?;
                    let planned = started.elapsed();
                    if !plan.is_empty() {
                        let (puts, deletes) = (plan.puts.len(), plan.deletes.len());
                        self.write(store, s, plan, Vec::new()).await?;
                        tracing::debug!(
                            puts,
                            deletes,
                            micros = started.elapsed().as_micros() as u64,
                            "published changes"
                        );
                    }
                    // A pass that cost much spaces the next ones.
                    let gap = (planned * GAP_FACTOR).min(timing.max_gap);
                    next_pass = Instant::now() + gap;
                }
                // The record is written when it changes, not to show that
                // the agent lives: its lease says that (renewed from this
                // loop, which lets it go when etcd refuses its writes), so
                // an idle node costs etcd its keep-alives only.
                let jwks = self.node_keys();
                if forced || self.jwks.as_ref() != Some(&jwks) {
                    let record = (s.fence.key.clone(), self.node_record(&jwks));
                    self.apply(store, s, vec![Op::Put(record.0, record.1)])
                        .await?;
                    self.jwks = Some(jwks);
                }
                if check {
                    self.heal(store, s).await?;
                    next_check = Instant::now() + check_every;
                }
                Ok::<(), End>(())
            }
            .await;
            match result {
                Ok(()) if s.failing => {
                    s.writes_refused_since = None;
                    tracing::info!(
                        node = self.settings.node.as_str(),
                        "etcd answers again: the session and its lease went on"
                    );
                    s.failing = false;
                }
                Ok(()) => {}
                // A member died, an election is under way, etcd is away:
                // the lease may well be alive (a new leader extends every
                // lease by its TTL), so the session goes on; a new one
                // would re-publish every key. Unacknowledged writes are
                // planned again; the renewal is retried first, and says
                // when the lease is gone (then, and only then, a new
                // session re-publishes).
                Err(End::Failed(error)) => {
                    self.settings.stats.failed();
                    if let Some(end) = self.refused_too_long(s, &error) {
                        return end;
                    }
                    if !s.failing {
                        tracing::warn!(node = self.settings.node.as_str(), error = %error, "an etcd call failed; the lease is still alive: retrying within the session");
                        s.failing = true;
                    }
                    dirty = true;
                    let pause = retry.next_jittered();
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => {
                            if let Err(e) = store.revoke(s.lease.id).await {
                                tracing::warn!(error = %e, "cannot revoke the lease: the node's keys stay in etcd until it expires");
                            }
                            return End::Stopped;
                        }
                    }
                    continue;
                }
                Err(end) => return end,
            }
            retry.reset();
        }
    }

    /// Ends the session when etcd has kept renewing the lease while
    /// refusing every write for lack of space (its `NOSPACE` alarm) for 3
    /// TTLs: the node's entries then vanish at the lease's expiry, instead
    /// of standing in the directory, current by their lease, while the
    /// pods change. Only that refusal counts: writes that time out while
    /// renewals pass (a paused member, a loaded etcd) are a member's
    /// fault, which must cost no keys; nor does time while etcd is away.
    fn refused_too_long(&self, s: &mut Session, error: &str) -> Option<End> {
        if s.renewal_failed || !error.contains(NO_SPACE) {
            s.writes_refused_since = None;
            return None;
        }
        let since = *s.writes_refused_since.get_or_insert_with(Instant::now);
        (since.elapsed() > s.lease.ttl * 3).then(|| {
            tracing::error!(
                node = self.settings.node.as_str(),
                lease = s.lease.id,
                error,
                "etcd renews the lease but has refused every write for 3 lease TTLs: letting the lease go, so that the node's entries vanish rather than stand stale"
            );
            End::Failed(format!("writes refused for 3 lease TTLs: {error}"))
        })
    }

    /// Renews the lease when its time has come (also between the batches
    /// of a long write).
    async fn renew_if_due<St: Store>(&self, store: &mut St, s: &mut Session) -> Result<(), End> {
        if Instant::now() < s.next_renew {
            return Ok(());
        }
        s.renewal_failed = true;
        store.renew(s.lease.id).await?;
        s.renewal_failed = false;
        self.settings.stats.reached();
        s.next_renew = Instant::now() + s.renew_every;
        Ok(())
    }

    /// Compares etcd's keys with what was published: a key nobody wrote
    /// goes, a key that vanished is written again. Guards against hands
    /// on etcd (an operator's delete).
    async fn heal<St: Store>(&mut self, store: &mut St, s: &mut Session) -> Result<(), End> {
        // The fence alone, with nothing to write (a read for etcd): a node
        // record deleted or taken over is noticed within half a TTL, even
        // on an idle node that writes nothing else.
        self.apply(store, s, Vec::new()).await?;
        let prefix = self.settings.layout.pods_of(self.node());
        let listed = store.keys(&prefix).await?;
        let mut in_etcd = HashSet::with_capacity(listed.len());
        let mut strays = Vec::new();
        for key in listed {
            let uuid = String::from_utf8(key.clone())
                .ok()
                .and_then(|k| k.strip_prefix(prefix.as_str()).map(str::to_owned));
            match uuid {
                Some(uuid)
                    if self.published.contains(&uuid) && !self.oversize.contains_key(&uuid) =>
                {
                    in_etcd.insert(uuid);
                }
                _ => strays.push(key),
            }
        }
        let missing: Vec<String> = self
            .published
            .uuids()
            .filter(|u| !in_etcd.contains(*u) && !self.oversize.contains_key(*u))
            .map(str::to_owned)
            .collect();
        if !strays.is_empty() || !missing.is_empty() {
            tracing::warn!(
                strays = strays.len(),
                missing = missing.len(),
                "etcd differed from what this agent published (changed by hand?): repairing"
            );
        }
        for uuid in &missing {
            self.published.forget(uuid);
        }
        if !strays.is_empty() {
            self.write(store, s, Plan::default(), strays).await?;
        }
        if !missing.is_empty() {
            let plan = self.plan().await?;
            self.write(store, s, plan, Vec::new()).await?;
        }
        Ok(())
    }

    /// The plan of the source against what was published, computed on a
    /// blocking thread (a view of 10,000 pods takes milliseconds).
    async fn plan(&mut self) -> Result<Plan, End> {
        let source = self.source.clone();
        let mut published = std::mem::take(&mut self.published);
        let (published, plan) = tokio::task::spawn_blocking(move || {
            let plan = published.plan(&*source);
            (published, plan)
        })
        .await
        // What was published is unknown now: a new session lists etcd.
        .map_err(|e| End::Failed(format!("computing the directory failed: {e}")))?;
        self.published = published;
        Ok(plan)
    }

    /// Writes `plan` (and deletes the raw `extra` keys) in fenced
    /// batches, recording what etcd acknowledged.
    async fn write<St: Store>(
        &mut self,
        store: &mut St,
        s: &mut Session,
        plan: Plan,
        extra: Vec<Vec<u8>>,
    ) -> Result<(), End> {
        let layout = self.settings.layout.clone();
        let node = self.settings.node.clone();
        // Each op, with what to record once it is acknowledged.
        let mut ops: Vec<(Op, Record)> = Vec::new();
        for key in extra {
            ops.push((Op::Delete(key), Record::Nothing));
        }
        for uuid in plan.deletes {
            let key = layout.pod(&node, &uuid).into_bytes();
            ops.push((Op::Delete(key), Record::Forget(uuid)));
        }
        for (uuid, value) in plan.puts {
            let key = layout.pod(&node, &uuid);
            if key.len() + value.len() > MAX_TXN_BYTES {
                // One tenant's thousands of addresses must not stall the
                // node's directory: its entry goes, the rest goes on.
                if self.oversize.insert(uuid.clone(), value.len()).is_none() {
                    tracing::warn!(pod = %uuid, bytes = value.len(), "a pod's entry is too large for etcd: not published");
                }
                ops.push((Op::Delete(key.into_bytes()), Record::Put(uuid, value)));
                continue;
            }
            self.oversize.remove(&uuid);
            ops.push((Op::Put(key, value.to_vec()), Record::Put(uuid, value)));
        }
        let mut batch = Vec::new();
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut ops = ops.into_iter().peekable();
        while let Some((op, record)) = ops.next() {
            bytes += op_size(&op);
            batch.push(op);
            records.push(record);
            let full = batch.len() >= MAX_OPS
                || ops
                    .peek()
                    .is_some_and(|(next, _)| bytes + op_size(next) > MAX_TXN_BYTES);
            if full || ops.peek().is_none() {
                self.apply(store, s, std::mem::take(&mut batch)).await?;
                bytes = 0;
                for r in records.drain(..) {
                    match r {
                        Record::Nothing => {}
                        Record::Forget(uuid) => {
                            self.oversize.remove(&uuid);
                            self.published.forget(&uuid);
                        }
                        Record::Put(uuid, value) => self.published.put(uuid, value),
                    }
                }
            }
        }
        Ok(())
    }

    /// One fenced transaction, renewing the lease first when due.
    async fn apply<St: Store>(
        &self,
        store: &mut St,
        s: &mut Session,
        ops: Vec<Op>,
    ) -> Result<(), End> {
        self.renew_if_due(store, s).await?;
        let started = Instant::now();
        if store.apply(&s.fence, ops).await? {
            self.settings.stats.published(started.elapsed());
            Ok(())
        } else {
            Err(End::Fenced)
        }
    }

    fn node_keys(&self) -> NodeKeys {
        (self.source.jwks(), self.source.x509_authorities())
    }

    fn node_record(&self, keys: &NodeKeys) -> Vec<u8> {
        let record = NodeRecord {
            node: self.settings.node.clone(),
            jwks: keys.0.clone(),
            x509: keys.1.clone(),
            updated: rfc3339::format(crate::jwt::now()),
            owner: self
                .settings
                .memory
                .as_ref()
                .map(|m| m.owner().to_owned())
                .unwrap_or_default(),
        };
        serde_json::to_vec(&record).unwrap_or_default()
    }
}

/// A node's JWT keys and X.509 authorities (base64 DER), as its record
/// carries them.
type NodeKeys = (JwkSet, Vec<String>);

/// What an acknowledged op changes in [`Published`].
enum Record {
    Nothing,
    Forget(String),
    Put(String, Arc<[u8]>),
}

fn op_size(op: &Op) -> usize {
    match op {
        Op::Put(k, v) => k.len() + v.len() + 16,
        Op::Delete(k) => k.len() + 16,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use parking_lot::Mutex;

    use super::*;
    use crate::cluster::fake::{Entries, Etcd, FakeStore};

    const NODE: &str = "n1";

    struct Running {
        etcd: Arc<Mutex<Etcd>>,
        source: Arc<Entries>,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(etcd: Arc<Mutex<Etcd>>, source: Arc<Entries>) -> Running {
        start_with_ttl(etcd, source, Duration::from_secs(2))
    }

    fn start_with_ttl(etcd: Arc<Mutex<Etcd>>, source: Arc<Entries>, ttl: Duration) -> Running {
        let settings = Settings {
            layout: Layout::new("/t/"),
            node: NODE.into(),
            lease_ttl: ttl,
            timing: Timing {
                poll: Duration::from_millis(5),
                max_gap: Duration::from_millis(20),
                backoff_first: Duration::from_millis(5),
                backoff_cap: Duration::from_millis(20),
            },
            refresh: Arc::default(),
            stats: Arc::default(),
            memory: None,
        };
        let (stop, stopped) = watch::channel(false);
        let connect = {
            let etcd = etcd.clone();
            move || {
                let etcd = etcd.clone();
                async move { Ok(FakeStore(etcd)) }
            }
        };
        let task = tokio::spawn(run(settings, source.clone(), connect, stopped));
        Running {
            etcd,
            source,
            stop,
            task,
        }
    }

    /// Polls `cond` every 5 ms for at most 5 s.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The pods etcd has for the node: UUID → (entry, lease).
    fn pods(etcd: &Mutex<Etcd>) -> BTreeMap<String, (String, i64)> {
        etcd.lock()
            .under("/t/pods/n1/")
            .into_iter()
            .map(|(k, v)| (k.trim_start_matches("/t/pods/n1/").to_owned(), v))
            .collect()
    }

    fn matches(r: &Running) -> bool {
        let want = r.source.snapshot();
        let have = pods(&r.etcd);
        let node_lease = r
            .etcd
            .lock()
            .under("/t/nodes/n1")
            .values()
            .next()
            .map(|v| v.1);
        have.len() == want.len()
            && have
                .iter()
                .all(|(k, (v, l))| want.get(k) == Some(v) && Some(*l) == node_lease)
    }

    impl Running {
        async fn stop(self) {
            let _ = self.stop.send(true);
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("the publisher stops")
                .expect("the publisher does not panic");
        }
    }

    #[tokio::test]
    async fn publishes_follows_and_leaves() {
        let etcd = Arc::new(Mutex::new(Etcd::default()));
        let source = Arc::new(Entries::default());
        source.set("a", "1");
        source.set("b", "2");
        let r = start(etcd.clone(), source.clone());
        until("the first publication", || matches(&r)).await;
        let record = etcd.lock().under("/t/nodes/n1");
        let record: NodeRecord = serde_json::from_str(&record.values().next().unwrap().0).unwrap();
        assert_eq!(record.node, NODE);
        assert!(rfc3339::parse(&record.updated).is_some());

        source.set("b", "3");
        source.remove("a");
        source.set("c", "4");
        until("the changes", || matches(&r)).await;
        r.stop().await;
        assert!(
            etcd.lock().kv.is_empty(),
            "a stopping agent revokes its lease"
        );
    }

    #[tokio::test]
    async fn etcd_down_at_start_then_everything() {
        let etcd = Arc::new(Mutex::new(Etcd {
            down: true,
            ..Etcd::default()
        }));
        let source = Arc::new(Entries::default());
        source.set("a", "1");
        let r = start(etcd.clone(), source.clone());
        until("a few refused attempts", || etcd.lock().refused >= 3).await;
        etcd.lock().down = false;
        until("the publication", || matches(&r)).await;
        r.stop().await;
    }

    #[tokio::test]
    async fn after_an_outage_etcd_matches_exactly_under_one_lease() {
        let etcd = Arc::new(Mutex::new(Etcd::default()));
        let source = Arc::new(Entries::default());
        for i in 0..250 {
            source.set(&format!("p{i:03}"), "v");
        }
        let r = start(etcd.clone(), source.clone());
        until("the first publication", || matches(&r)).await;
        let first = pods(&etcd)["p000"].1;

        // etcd goes away (its data and our lease survive, as on a
        // restart on the same data dir); pods are dropped and changed.
        let refused = {
            let mut e = etcd.lock();
            e.down = true;
            e.refused
        };
        for i in 0..100 {
            source.remove(&format!("p{i:03}"));
        }
        source.set("p200", "changed");
        source.set("new", "v");
        until("a refused attempt", || etcd.lock().refused > refused).await;
        // On return, the re-publish breaks after its first batch.
        {
            let mut e = etcd.lock();
            e.fail_apply_after = Some(1);
            e.down = false;
        }
        until("the re-publish to be broken", || etcd.lock().down).await;
        etcd.lock().down = false;
        until("etcd to match the agent", || matches(&r)).await;
        {
            // An outage shorter than the TTL: the session (and its lease)
            // may go on; if a new one was granted, the old is revoked.
            let e = etcd.lock();
            let leases: std::collections::HashSet<i64> =
                e.under("/t/").values().map(|(_, l)| *l).collect();
            assert_eq!(leases.len(), 1, "one lease holds everything");
            if !leases.contains(&first) {
                assert!(!e.leases.contains(&first), "the old lease is revoked");
            }
        }
        r.stop().await;
    }

    #[tokio::test]
    async fn a_held_node_name_is_not_published_until_it_is_free() {
        let etcd = Arc::new(Mutex::new(Etcd::default()));
        let other = {
            let mut e = etcd.lock();
            let other = e.grant();
            e.kv.insert(b"/t/nodes/n1".to_vec(), (b"{}".to_vec(), other));
            other
        };
        let source = Arc::new(Entries::default());
        source.set("a", "1");
        let r = start(etcd.clone(), source.clone());
        until("a few refused claims", || etcd.lock().held >= 3).await;
        assert!(
            pods(&etcd).is_empty(),
            "nothing published under a held name"
        );
        assert_eq!(
            etcd.lock().under("/t/nodes/n1").values().next().unwrap().1,
            other
        );
        assert_eq!(etcd.lock().leases.len(), 1, "unused leases are revoked");

        etcd.lock().expire(other);
        until("the publication once the name is free", || matches(&r)).await;
        r.stop().await;
    }

    #[tokio::test]
    async fn a_lost_lease_means_a_full_publication_under_a_new_one() {
        let etcd = Arc::new(Mutex::new(Etcd::default()));
        let source = Arc::new(Entries::default());
        source.set("a", "1");
        let r = start(etcd.clone(), source.clone());
        until("the first publication", || matches(&r)).await;
        let first = pods(&etcd)["a"].1;
        // The lease expires (the agent was stalled past its TTL).
        etcd.lock().expire(first);
        until("the re-publication", || {
            matches(&r) && pods(&etcd).get("a").is_some_and(|(_, l)| *l != first)
        })
        .await;
        r.stop().await;
    }

    /// A publisher with TTL `ttl` of one pod ("a"), once it is in etcd.
    async fn first_publication(ttl: Duration) -> Running {
        let etcd = Arc::new(Mutex::new(Etcd::default()));
        let source = Arc::new(Entries::default());
        source.set("a", "1");
        let r = start_with_ttl(etcd, source, ttl);
        until("the first publication", || matches(&r)).await;
        r
    }

    /// The node's current lease: the one its record is attached to.
    fn node_lease(etcd: &Mutex<Etcd>) -> Option<i64> {
        etcd.lock()
            .under("/t/nodes/n1")
            .values()
            .next()
            .map(|v| v.1)
    }

    #[tokio::test]
    async fn an_idle_node_only_renews_its_lease() {
        let r = first_publication(Duration::from_secs(2)).await;
        let (etcd, source) = (r.etcd.clone(), r.source.clone());
        let (applies, listings) = {
            let e = etcd.lock();
            (e.applies, e.listings)
        };
        // Three checks of the directory (one per half TTL) and their
        // renewals: no write among them.
        until("three checks", || etcd.lock().listings >= listings + 3).await;
        assert_eq!(etcd.lock().applies, applies, "an idle node wrote");
        assert!(!etcd.lock().renewals.is_empty());
        // A change is still written.
        source.set("b", "2");
        until("the change", || matches(&r)).await;
        assert!(etcd.lock().applies > applies);
        r.stop().await;
    }

    #[tokio::test]
    async fn an_idle_node_notices_its_record_deleted() {
        let r = first_publication(Duration::from_secs(2)).await;
        let etcd = r.etcd.clone();
        etcd.lock().kv.remove(b"/t/nodes/n1".as_slice());
        // Nothing changes locally: only the check can see it.
        until("the record, claimed again", || {
            node_lease(&etcd).is_some() && matches(&r)
        })
        .await;
        r.stop().await;
    }

    #[tokio::test]
    async fn a_lease_renewed_while_every_write_is_refused_is_let_go() {
        let ttl = Duration::from_millis(600);
        let r = first_publication(ttl).await;
        let (etcd, source) = (r.etcd.clone(), r.source.clone());
        let first = node_lease(&etcd).expect("a node record");
        // etcd keeps the lease but takes no write (its space alarm).
        etcd.lock().refuse_writes_with = Some("etcdserver: mvcc: database space exceeded".into());
        let refused_at = Instant::now();
        source.set("b", "2");
        let deadline = refused_at + Duration::from_secs(10);
        while etcd.lock().next_lease == first {
            assert!(Instant::now() < deadline, "the refused lease was kept");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            refused_at.elapsed() >= ttl * 3,
            "gave up before 3 TTLs: {:?}",
            refused_at.elapsed()
        );
        // The old lease is no longer renewed (the fake never expires it by
        // itself) while new sessions try to write.
        let renewed = |e: &Etcd| e.renewals.get(&first).copied().unwrap_or(0);
        let (renewals, lease) = {
            let e = etcd.lock();
            (renewed(&e), e.next_lease)
        };
        until("more sessions", || etcd.lock().next_lease >= lease + 2).await;
        assert_eq!(renewed(&etcd.lock()), renewals, "the old lease was renewed");
        assert!(!matches(&r), "the refused change cannot be in etcd");
        etcd.lock().refuse_writes_with = None;
        until("the change, under a new lease", || {
            matches(&r) && node_lease(&etcd).is_some_and(|l| l != first)
        })
        .await;
        r.stop().await;
    }

    #[tokio::test]
    async fn writes_failing_otherwise_while_renewals_pass_keep_the_lease() {
        let ttl = Duration::from_millis(600);
        let r = first_publication(ttl).await;
        let (etcd, source) = (r.etcd.clone(), r.source.clone());
        let first = node_lease(&etcd).expect("a node record");
        // Writes time out (a paused member, a loaded etcd), renewals pass.
        etcd.lock().refuse_writes_with = Some("no member answered within 1.5s".into());
        source.set("b", "2");
        tokio::time::sleep(ttl * 5).await;
        assert_eq!(etcd.lock().next_lease, first, "a new lease was taken");
        etcd.lock().refuse_writes_with = None;
        until("the change", || matches(&r)).await;
        assert_eq!(node_lease(&etcd), Some(first), "the session went on");
        r.stop().await;
    }

    #[tokio::test]
    async fn a_lease_outlives_an_outage_longer_than_three_ttls() {
        let ttl = Duration::from_millis(600);
        let r = first_publication(ttl).await;
        let (etcd, source) = (r.etcd.clone(), r.source.clone());
        let first = node_lease(&etcd).expect("a node record");
        // etcd is away (a new leader extends every lease on its return):
        // neither renewals nor writes, for longer than 3 TTLs.
        etcd.lock().down = true;
        source.set("b", "2");
        let refused = etcd.lock().refused;
        tokio::time::sleep(ttl * 4).await;
        assert!(etcd.lock().refused > refused, "the agent kept trying");
        etcd.lock().down = false;
        until("the change", || matches(&r)).await;
        assert_eq!(node_lease(&etcd), Some(first), "the session went on");
        r.stop().await;
    }

    #[tokio::test]
    async fn keys_changed_by_hand_are_repaired() {
        let etcd = Arc::new(Mutex::new(Etcd::default()));
        let source = Arc::new(Entries::default());
        source.set("a", "1");
        source.set("b", "2");
        let r = start(etcd.clone(), source.clone());
        until("the first publication", || matches(&r)).await;
        {
            let mut e = etcd.lock();
            let lease = e.kv[b"/t/pods/n1/a".as_slice()].1;
            e.kv.remove(b"/t/pods/n1/a".as_slice());
            e.kv.insert(b"/t/pods/n1/stray".to_vec(), (b"x".to_vec(), lease));
        }
        // Repaired at the next refresh (TTL/2, at least 1 s).
        until("the repair", || matches(&r)).await;
        r.stop().await;
    }
}
