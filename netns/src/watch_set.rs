//! The set of watched namespaces: starts one inventory per namespace,
//! shares it between users, and stops it when the last user lets go.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    inventory::{Command, Inventory, Phase, Published},
    route_socket::RouteSocket,
    AddressIndex, Error, NetnsId, NetnsRef,
};

/// Tuning of a [`WatchSet`].
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// How often each watcher checks that its namespace file still names
    /// the namespace (a `stat`); bounds how long a deleted namespace is
    /// kept alive by our socket.
    pub liveness_interval: Duration,
    /// A refresh asked for within this long after a dump completed is
    /// answered from that dump: bounds re-dumps per namespace.
    pub min_refresh_interval: Duration,
    /// How long [`WatchSet::refresh`] waits for a re-dump.
    pub refresh_timeout: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            liveness_interval: Duration::from_millis(500),
            min_refresh_interval: Duration::from_millis(250),
            refresh_timeout: Duration::from_secs(2),
        }
    }
}

/// Counters of netlink work, for metrics and for proving that the request
/// path does none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Namespaces currently watched (live or gone but still referenced).
    pub watched: usize,
    /// Address dumps requested, initial ones included.
    pub dumps: u64,
    /// Dumps beyond the initial one of each watcher (refreshes, overruns,
    /// interrupted dumps).
    pub redumps: u64,
    /// Kernel receive-buffer overruns (`ENOBUFS`).
    pub overruns: u64,
}

/// What is known of one watched namespace now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchStatus {
    /// The path it was opened by.
    pub path: PathBuf,
    /// False once the namespace is gone or its watcher failed.
    pub live: bool,
    /// Why it is not live, if it is not.
    pub reason: Option<String>,
    /// Addresses it holds now (empty when not live).
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) dumps: AtomicU64,
    pub(crate) redumps: AtomicU64,
    pub(crate) overruns: AtomicU64,
}

struct Entry {
    ns: NetnsRef,
    users: usize,
    commands: mpsc::Sender<Command>,
    phase: watch::Receiver<Phase>,
    published: Arc<Published>,
}

struct Shared {
    config: WatchConfig,
    index: AddressIndex,
    counters: Arc<Counters>,
    entries: Mutex<HashMap<NetnsId, Entry>>,
}

/// The watched namespaces and their shared [`AddressIndex`].
///
/// Cloning is cheap (shared). Must be used inside a tokio runtime.
#[derive(Clone)]
pub struct WatchSet {
    shared: Arc<Shared>,
}

impl WatchSet {
    /// An empty set.
    pub fn new(config: WatchConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                index: AddressIndex::default(),
                counters: Arc::default(),
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The address index all watchers of this set keep current.
    pub fn index(&self) -> &AddressIndex {
        &self.shared.index
    }

    /// Starts watching `ns` (or joins the watcher already there) and waits
    /// until its first address dump is in the index. Each successful call
    /// must be paired with one [`WatchSet::release`].
    pub async fn acquire(&self, ns: &NetnsRef) -> Result<(), Error> {
        let mut phase = match self.join_existing(ns) {
            Some(phase) => phase,
            None => {
                // Opened outside the lock: it takes a thread and a setns.
                let socket = RouteSocket::open_in(ns).await?;
                self.insert_or_join(ns, socket)
            }
        };
        let outcome = phase
            .wait_for(|p| *p != Phase::Starting)
            .await
            .map(|p| p.clone());
        match outcome {
            Ok(Phase::Ready) => Ok(()),
            Ok(Phase::Failed(reason)) => {
                self.release(ns.id());
                Err(Error::Netlink(std::io::Error::other(reason)))
            }
            _ => {
                self.release(ns.id());
                Err(Error::Gone {
                    path: ns.path().to_path_buf(),
                })
            }
        }
    }

    /// Drops one user of namespace `id`; the last one closes its socket.
    pub fn release(&self, id: NetnsId) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(&id) {
            entry.users = entry.users.saturating_sub(1);
            if entry.users == 0 {
                // Dropping the command sender ends the inventory task, which
                // drops the socket and withdraws the addresses.
                entries.remove(&id);
            }
        }
    }

    /// Asks for a fresh dump of `id` (rate-limited by
    /// [`WatchConfig::min_refresh_interval`]) and waits for it. Returns
    /// false when `id` is not watched, is gone, or the dump timed out.
    pub async fn refresh(&self, id: NetnsId) -> bool {
        let commands = {
            let entries = self.lock();
            match entries.get(&id) {
                Some(e) if *e.phase.borrow() == Phase::Ready => e.commands.clone(),
                _ => return false,
            }
        };
        let (tx, rx) = oneshot::channel();
        if commands.send(Command::Refresh(tx)).await.is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(self.shared.config.refresh_timeout, rx).await,
            Ok(Ok(()))
        )
    }

    /// The state of namespace `id`, if watched.
    pub fn status(&self, id: NetnsId) -> Option<WatchStatus> {
        let entries = self.lock();
        let entry = entries.get(&id)?;
        let phase = entry.phase.borrow().clone();
        let addresses = entry
            .published
            .addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        let (live, reason) = match phase {
            Phase::Starting | Phase::Ready => (true, None),
            Phase::Gone => (false, Some("namespace is gone".to_string())),
            Phase::Failed(r) => (false, Some(r)),
        };
        Some(WatchStatus {
            path: entry.ns.path().to_path_buf(),
            live,
            reason,
            addresses,
        })
    }

    /// Whether namespace `id` is watched and live (cheaper than
    /// [`WatchSet::status`]: no address list is copied).
    pub fn is_live(&self, id: NetnsId) -> bool {
        self.lock()
            .get(&id)
            .is_some_and(|e| matches!(*e.phase.borrow(), Phase::Starting | Phase::Ready))
    }

    /// Counters of netlink work so far.
    pub fn stats(&self) -> WatchStats {
        let c = &self.shared.counters;
        WatchStats {
            watched: self.lock().len(),
            dumps: c.dumps.load(Ordering::Relaxed),
            redumps: c.redumps.load(Ordering::Relaxed),
            overruns: c.overruns.load(Ordering::Relaxed),
        }
    }

    /// Joins a live watcher of `ns`, if any.
    fn join_existing(&self, ns: &NetnsRef) -> Option<watch::Receiver<Phase>> {
        let mut entries = self.lock();
        let entry = entries.get_mut(&ns.id())?;
        if matches!(*entry.phase.borrow(), Phase::Gone | Phase::Failed(_)) {
            return None;
        }
        entry.users += 1;
        Some(entry.phase.clone())
    }

    /// Starts a watcher on `socket`, unless a live one appeared meanwhile
    /// (then `socket` is dropped and that one is joined). A dead watcher of
    /// the same id is replaced; its users carry over.
    fn insert_or_join(&self, ns: &NetnsRef, socket: RouteSocket) -> watch::Receiver<Phase> {
        let mut entries = self.lock();
        let mut users = 1;
        if let Some(entry) = entries.get_mut(&ns.id()) {
            if !matches!(*entry.phase.borrow(), Phase::Gone | Phase::Failed(_)) {
                entry.users += 1;
                return entry.phase.clone();
            }
            users += entry.users;
        }
        let (phase_tx, phase_rx) = watch::channel(Phase::Starting);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let published = Arc::new(Published::default());
        let inventory = Inventory {
            ns: ns.clone(),
            socket,
            index: self.shared.index.clone(),
            published: published.clone(),
            phase: phase_tx,
            counters: self.shared.counters.clone(),
            liveness_interval: self.shared.config.liveness_interval,
            min_refresh: self.shared.config.min_refresh_interval,
        };
        tokio::spawn(inventory.run(cmd_rx));
        entries.insert(
            ns.id(),
            Entry {
                ns: ns.clone(),
                users,
                commands: cmd_tx,
                phase: phase_rx.clone(),
                published,
            },
        );
        phase_rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NetnsId, Entry>> {
        self.shared
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}
