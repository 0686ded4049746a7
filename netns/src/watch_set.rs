//! The set of watched namespaces: starts one inventory per namespace
//! instance and path, shares it between the leases on it, stops it when the
//! last lease is dropped or its path stops naming the instance.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    host_view::HostView,
    inventory::{Command, Inventory, Phase, Published},
    nsid::nsid_of,
    route_socket::{RouteSocket, ADDRESS_GROUPS},
    stats::Counters,
    AddressIndex, Attribution, Error, NetnsCookie, NetnsFile, NetnsInstance, WatchStats,
};

/// Tuning of a [`WatchSet`].
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// How often the set checks, in one sweep over every watcher, that each
    /// watcher's path still names its namespace (one `stat` each); bounds
    /// how long a deleted namespace is kept alive by our socket.
    pub liveness_interval: Duration,
    /// A refresh asked for within this long after a dump completed is
    /// answered from that dump: bounds re-dumps per namespace.
    pub min_refresh_interval: Duration,
    /// How long [`Lease::refresh`] waits for a re-dump.
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

/// What is known of one watched namespace now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchStatus {
    /// The instance watched.
    pub instance: NetnsInstance,
    /// False once the watcher stopped for good.
    pub live: bool,
    /// Why it is not live, if it is not.
    pub reason: Option<String>,
    /// Addresses it holds now (empty when not live).
    pub addresses: Vec<IpAddr>,
}

type WatchId = u64;

/// What names a live watcher: the path it was opened by and the device and
/// inode seen through it. While the watcher's socket pins its namespace,
/// no other namespace can have that inode, so an open file with the same
/// key is the same instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LiveKey {
    dev: u64,
    ino: u64,
    path: PathBuf,
}

impl LiveKey {
    fn of(file: &NetnsFile) -> Self {
        Self {
            dev: file.dev(),
            ino: file.ino(),
            path: file.path().to_path_buf(),
        }
    }
}

struct Entry {
    instance: NetnsInstance,
    users: usize,
    /// Dropping it stops the inventory task; `None` once stopped.
    commands: Option<mpsc::Sender<Command>>,
    phase: watch::Receiver<Phase>,
    published: Arc<Published>,
    reason: Option<String>,
    /// The agent's namespace's id for this one (what host-side veths name
    /// it by), when known.
    nsid: Option<i32>,
}

#[derive(Default)]
struct Watches {
    entries: HashMap<WatchId, Entry>,
    live: HashMap<LiveKey, WatchId>,
    next: WatchId,
}

struct Shared {
    config: WatchConfig,
    index: AddressIndex,
    counters: Arc<Counters>,
    watches: Mutex<Watches>,
    sweeping: AtomicBool,
    host: tokio::sync::OnceCell<HostView>,
}

/// The watched namespaces and their shared [`AddressIndex`].
///
/// Cloning is cheap (shared). Must be used inside a tokio runtime.
#[derive(Clone)]
pub struct WatchSet {
    shared: Arc<Shared>,
}

/// One user's hold on a watched namespace instance. The watcher runs while
/// any lease on it exists and its path still names the instance; dropping
/// the last lease stops it, so the kernel can free the namespace.
///
/// A lease never moves to another instance: once [`Lease::is_live`] is
/// false it stays false, whatever appears at the path later.
pub struct Lease {
    shared: Arc<Shared>,
    id: WatchId,
    instance: NetnsInstance,
    published: Arc<Published>,
    phase: watch::Receiver<Phase>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("instance", &self.instance)
            .field("live", &self.is_live())
            .finish()
    }
}

impl WatchSet {
    /// An empty set.
    pub fn new(config: WatchConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                index: AddressIndex::default(),
                counters: Arc::default(),
                watches: Mutex::default(),
                sweeping: AtomicBool::new(false),
                host: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// The address index all watchers of this set keep current.
    pub fn index(&self) -> &AddressIndex {
        &self.shared.index
    }

    /// Starts watching the namespace `file` names (or joins the live
    /// watcher of the same instance and path) and waits until its first
    /// address dump is in the index. The instance's cookie is read from a
    /// socket created through `file`'s descriptor, so it is the instance
    /// `file` was opened on, whatever has happened to its path since.
    pub async fn acquire(&self, file: &NetnsFile) -> Result<Lease, Error> {
        self.start_sweeper();
        let host = self.host().await?.clone();
        let key = LiveKey::of(file);
        let lease = match self.join(&key) {
            Some(lease) => lease,
            None => {
                // Opened outside the lock: it takes a thread and a setns.
                let (socket, cookie) = RouteSocket::open_in(file, ADDRESS_GROUPS).await?;
                let nsid = self.nsid(file).await;
                let lease = self.insert_or_join(key, cookie, socket, nsid);
                if let Some(nsid) = nsid {
                    host.register_nsid(nsid, cookie, lease.published.clone());
                }
                lease
            }
        };
        let mut phase = lease.phase.clone();
        let outcome = phase
            .wait_for(|p| *p != Phase::Starting)
            .await
            .map(|p| p.clone());
        match outcome {
            Ok(Phase::Ready) => Ok(lease),
            Ok(Phase::Failed(reason)) => Err(Error::Netlink(std::io::Error::other(reason))),
            _ => Err(Error::Gone {
                path: file.path().to_path_buf(),
            }),
        }
    }

    /// Where the host says `addr` lives: the route, veth (or bridge
    /// neighbour and FDB entry) and peer namespace, facts a pod cannot
    /// change from inside. Memory only, no syscall. `Elsewhere` until the
    /// first namespace is acquired.
    pub fn attribute(&self, addr: IpAddr) -> Attribution {
        match self.shared.host.get() {
            Some(host) => host.attribute(addr),
            None => Attribution::Elsewhere("the host view has not started"),
        }
    }

    /// The host-side ends of the veths into watched instance `cookie`, by
    /// interface index: where the host receives what the instance sends
    /// through a routed veth (the ingress interface a socket filter sees
    /// as `SKF_AD_IFINDEX`). What it sends over a bridge arrives on the
    /// bridge instead. Memory only, no syscall; empty until the first
    /// namespace is acquired.
    pub fn veths_into(&self, cookie: NetnsCookie) -> Vec<u32> {
        self.shared
            .host
            .get()
            .map_or_else(Vec::new, |host| host.veths_into(cookie))
    }

    /// A number that changes whenever an answer of this set may: the
    /// index, a watcher's liveness, or the host's attribution.
    pub fn generation(&self) -> u64 {
        self.shared.index.generation() + self.shared.host.get().map_or(0, HostView::generation)
    }

    /// Waits until the host view has applied every event queued before the
    /// call (for a lookup that missed: the route may have just been
    /// added). False when the host view is not running.
    pub async fn sync_host(&self) -> bool {
        match self.shared.host.get() {
            Some(host) => host.sync().await,
            None => false,
        }
    }

    /// The host view, started on first use in the calling task's (the
    /// agent's) namespace.
    async fn host(&self) -> Result<&HostView, Error> {
        let counters = self.shared.counters.clone();
        self.shared
            .host
            .get_or_try_init(|| HostView::start(counters))
            .await
    }

    /// The agent's namespace's id for the namespace `file` names (a
    /// blocking netlink round trip, off the runtime's workers).
    async fn nsid(&self, file: &NetnsFile) -> Option<i32> {
        let file = file.try_clone().ok()?;
        let path = file.path().display().to_string();
        match tokio::task::spawn_blocking(move || nsid_of(&file)).await {
            Ok(Ok(id)) => Some(id),
            Ok(Err(e)) => {
                tracing::warn!(netns = %path, error = %e, "no nsid for the namespace: the host cannot attribute its addresses");
                None
            }
            Err(_) => None,
        }
    }

    /// Counters of netlink work so far.
    pub fn stats(&self) -> WatchStats {
        let watched = self.shared.watches.lock().entries.len();
        self.shared.counters.snapshot(watched)
    }

    /// Joins a live watcher of the instance `key` names, if any.
    fn join(&self, key: &LiveKey) -> Option<Lease> {
        let mut watches = self.shared.watches.lock();
        let id = *watches.live.get(key)?;
        let entry = watches.entries.get_mut(&id)?;
        if !entry.published.live.load(Ordering::Acquire) {
            return None;
        }
        entry.users += 1;
        Some(self.lease(id, entry))
    }

    /// Starts a watcher on `socket`, unless a live one of the same instance
    /// and path appeared meanwhile (then `socket` is dropped and that one is
    /// joined).
    fn insert_or_join(
        &self,
        key: LiveKey,
        cookie: NetnsCookie,
        socket: RouteSocket,
        nsid: Option<i32>,
    ) -> Lease {
        let mut watches = self.shared.watches.lock();
        if let Some(id) = watches.live.get(&key).copied() {
            if let Some(entry) = watches.entries.get_mut(&id) {
                if entry.instance.cookie() == cookie && entry.published.live.load(Ordering::Acquire)
                {
                    entry.users += 1;
                    return self.lease(id, entry);
                }
            }
        }
        let instance = NetnsInstance::new(key.path.clone(), key.dev, key.ino, cookie);
        let (phase_tx, phase_rx) = watch::channel(Phase::Starting);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let published = Arc::new(Published::default());
        let inventory = Inventory {
            cookie,
            path: key.path.clone(),
            socket,
            index: self.shared.index.clone(),
            published: published.clone(),
            phase: phase_tx,
            counters: self.shared.counters.clone(),
            min_refresh: self.shared.config.min_refresh_interval,
        };
        tokio::spawn(inventory.run(cmd_rx));
        let id = watches.next;
        watches.next += 1;
        watches.live.insert(key, id);
        let entry = watches.entries.entry(id).or_insert(Entry {
            instance,
            users: 1,
            commands: Some(cmd_tx),
            phase: phase_rx,
            published,
            reason: None,
            nsid,
        });
        self.lease(id, entry)
    }

    fn lease(&self, id: WatchId, entry: &Entry) -> Lease {
        Lease {
            shared: self.shared.clone(),
            id,
            instance: entry.instance.clone(),
            published: entry.published.clone(),
            phase: entry.phase.clone(),
        }
    }

    /// One task per set checks every watcher's path: far fewer wake-ups
    /// than a timer per namespace, and the `stat`s run off the runtime's
    /// workers.
    fn start_sweeper(&self) {
        if self.shared.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.shared);
        let every = self.shared.config.liveness_interval;
        tokio::spawn(sweep_liveness(weak, every));
    }
}

async fn sweep_liveness(shared: Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(set) = shared.upgrade() else {
            return;
        };
        let watched: Vec<(WatchId, LiveKey)> = {
            let watches = set.watches.lock();
            watches
                .live
                .iter()
                .map(|(k, id)| (*id, k.clone()))
                .collect()
        };
        drop(set);
        if watched.is_empty() {
            continue;
        }
        let Ok(dead) = tokio::task::spawn_blocking(move || {
            watched
                .into_iter()
                .filter(|(_, key)| !still_names(key))
                .collect::<Vec<_>>()
        })
        .await
        else {
            continue;
        };
        let Some(set) = shared.upgrade() else {
            return;
        };
        let mut watches = set.watches.lock();
        for (id, key) in dead {
            stop(&mut watches, id, &key, "its path no longer names it");
        }
    }
}

/// Whether `key.path` still names the watched namespace. Sound while the
/// watcher's socket pins the namespace: its inode cannot be reused.
fn still_names(key: &LiveKey) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(&key.path).is_ok_and(|m| (m.dev(), m.ino()) == (key.dev, key.ino))
}

/// Stops watcher `id` for good: its leases see it dead at once, and its
/// task drops the socket.
fn stop(watches: &mut Watches, id: WatchId, key: &LiveKey, reason: &str) {
    if watches.live.get(key) == Some(&id) {
        watches.live.remove(key);
    }
    let Some(entry) = watches.entries.get_mut(&id) else {
        return;
    };
    if entry.commands.take().is_some() {
        entry.published.live.store(false, Ordering::Release);
        entry.reason = Some(reason.to_owned());
        tracing::info!(netns = %key.path.display(), cookie = %entry.instance.cookie(), reason, "letting go of a network namespace");
    }
}

impl Lease {
    /// The instance this lease holds.
    pub fn instance(&self) -> &NetnsInstance {
        &self.instance
    }

    /// The instance's identity.
    pub fn cookie(&self) -> NetnsCookie {
        self.instance.cookie()
    }

    /// Whether the watcher still runs: the instance is watched and its
    /// path still names it. One atomic load.
    pub fn is_live(&self) -> bool {
        self.published.live.load(Ordering::Acquire)
    }

    /// The instance's addresses now (empty once not live).
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.published.addresses.read().iter().copied().collect()
    }

    /// What is known of the instance now.
    pub fn status(&self) -> WatchStatus {
        let live = self.is_live();
        let reason = if live {
            None
        } else {
            let watches = self.shared.watches.lock();
            let stored = watches.entries.get(&self.id).and_then(|e| e.reason.clone());
            Some(stored.unwrap_or_else(|| match &*self.phase.borrow() {
                Phase::Failed(r) => r.clone(),
                _ => "the namespace watcher stopped".into(),
            }))
        };
        WatchStatus {
            instance: self.instance.clone(),
            live,
            reason,
            addresses: self.addresses(),
        }
    }

    /// Asks for a fresh dump (rate-limited by
    /// [`WatchConfig::min_refresh_interval`]) and waits for it. Returns
    /// false when the watcher is not live or the dump timed out.
    pub async fn refresh(&self) -> bool {
        let commands = {
            let watches = self.shared.watches.lock();
            match watches.entries.get(&self.id) {
                Some(e) if *e.phase.borrow() == Phase::Ready => e.commands.clone(),
                _ => None,
            }
        };
        let Some(commands) = commands else {
            return false;
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
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut watches = self.shared.watches.lock();
        let Some(entry) = watches.entries.get_mut(&self.id) else {
            return;
        };
        entry.users = entry.users.saturating_sub(1);
        if entry.users > 0 {
            return;
        }
        // The last user: dropping the entry (and its command sender) ends
        // the inventory task, which drops the socket and withdraws the
        // addresses.
        if let Some(entry) = watches.entries.remove(&self.id) {
            if let (Some(nsid), Some(host)) = (entry.nsid, self.shared.host.get()) {
                host.forget_nsid(nsid, entry.instance.cookie(), &entry.published);
            }
            let key = LiveKey {
                dev: entry.instance.dev(),
                ino: entry.instance.ino(),
                path: entry.instance.path().to_path_buf(),
            };
            if watches.live.get(&key) == Some(&self.id) {
                watches.live.remove(&key);
            }
        }
    }
}
