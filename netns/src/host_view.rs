//! The host's view, kept current: a task that owns a route socket in the
//! agent's own namespace, dumps links, routes, neighbours and the bridge
//! FDB, follows their events (re-dumping after an overrun or an
//! interrupted dump), and answers attribution lookups from memory.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use netlink_packet_route::{
    link::LinkMessage, neighbour::NeighbourMessage, route::RouteMessage, AddressFamily,
    RouteNetlinkMessage,
};
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    host_tables::{Attribution, HostTables, NsidEntry, Table},
    inventory::Published,
    route_socket::{Received, RouteSocket},
    stats::Counters,
    Error, NetnsCookie,
};

/// A complete re-dump this often, whatever the events said: a safety net
/// for changes the kernel does not announce.
const RESYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Links, IPv4 and IPv6 routes, neighbours (and FDB entries, which are
/// neighbour messages of the bridge family).
const HOST_GROUPS: u32 =
    (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_IPV6_ROUTE | libc::RTMGRP_NEIGH)
        as u32;

#[derive(Default)]
struct Shared {
    tables: RwLock<HostTables>,
    nsids: RwLock<HashMap<i32, NsidEntry>>,
    /// Bumped whenever an attribution may have changed.
    generation: AtomicU64,
}

/// The host's forwarding facts and their attribution of addresses to
/// watched namespace instances. Cloning is cheap (shared).
#[derive(Clone)]
pub(crate) struct HostView {
    shared: Arc<Shared>,
    sync: mpsc::Sender<oneshot::Sender<()>>,
}

impl HostView {
    /// Starts the task in the calling thread's (the agent's) namespace and
    /// waits for the first complete picture.
    pub(crate) async fn start(counters: Arc<Counters>) -> Result<Self, Error> {
        let (socket, _) = RouteSocket::open_here(HOST_GROUPS)?;
        let shared = Arc::new(Shared::default());
        let (sync_tx, sync_rx) = mpsc::channel(64);
        let (ready_tx, mut ready_rx) = watch::channel(None);
        let task = Task {
            socket,
            shared: shared.clone(),
            counters,
            ready: ready_tx,
            seq: 0,
            resync: None,
            waiters: Vec::new(),
            redump_at: None,
            redump_backoff: FIRST_REDUMP,
        };
        tokio::spawn(task.run(sync_rx));
        let outcome = ready_rx
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone())
            .map_err(|_| Error::Netlink(std::io::Error::other("host view task ended")))?;
        match outcome {
            Some(Ok(())) => Ok(Self {
                shared,
                sync: sync_tx,
            }),
            Some(Err(reason)) => Err(Error::Netlink(std::io::Error::other(reason))),
            None => Err(Error::Netlink(std::io::Error::other("host view not ready"))),
        }
    }

    /// Where the host says `addr` lives. Memory only: no syscall.
    pub(crate) fn attribute(&self, addr: IpAddr) -> Attribution {
        let nsids = self.shared.nsids.read();
        self.shared.tables.read().attribute(addr, &nsids)
    }

    /// The host-side ends of watched instance `cookie`'s veths.
    pub(crate) fn veths_into(&self, cookie: NetnsCookie) -> Vec<u32> {
        let nsids = self.shared.nsids.read();
        self.shared.tables.read().veths_into(cookie, &nsids)
    }

    /// Changes whenever an attribution may have changed.
    pub(crate) fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Waits until every event queued before the call has been applied
    /// (and any re-dump in progress has completed).
    pub(crate) async fn sync(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.sync.send(tx).await.is_ok() && rx.await.is_ok()
    }

    /// Records that this namespace's id `nsid` names watched instance
    /// `cookie` (while `published.live` holds). An instance named by
    /// several paths has a watcher per path, each registered here.
    pub(crate) fn register_nsid(&self, nsid: i32, cookie: NetnsCookie, published: Arc<Published>) {
        let mut nsids = self.shared.nsids.write();
        match nsids.get_mut(&nsid) {
            Some(entry) if entry.cookie == cookie => {
                if !entry.watchers.iter().any(|w| Arc::ptr_eq(w, &published)) {
                    entry.watchers.push(published);
                }
            }
            // A new id, or one a freed namespace had.
            _ => {
                nsids.insert(
                    nsid,
                    NsidEntry {
                        cookie,
                        watchers: vec![published],
                    },
                );
            }
        }
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Withdraws one watcher of instance `cookie` from `nsid`; the id is
    /// forgotten with the instance's last watcher.
    pub(crate) fn forget_nsid(&self, nsid: i32, cookie: NetnsCookie, published: &Arc<Published>) {
        let mut nsids = self.shared.nsids.write();
        if let Some(entry) = nsids.get_mut(&nsid).filter(|e| e.cookie == cookie) {
            entry.watchers.retain(|w| !Arc::ptr_eq(w, published));
            if entry.watchers.is_empty() {
                nsids.remove(&nsid);
            }
        }
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The dumps that make up a complete picture, in order, each with the
/// table it fills.
fn dumps() -> [(Table, RouteNetlinkMessage); 6] {
    let route = |family| {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        RouteNetlinkMessage::GetRoute(m)
    };
    let neighbour = |family| {
        let mut m = NeighbourMessage::default();
        m.header.family = family;
        RouteNetlinkMessage::GetNeighbour(m)
    };
    [
        (
            Table::Links,
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        ),
        (Table::RoutesV4, route(AddressFamily::Inet)),
        (Table::RoutesV6, route(AddressFamily::Inet6)),
        (Table::NeighboursV4, neighbour(AddressFamily::Inet)),
        (Table::NeighboursV6, neighbour(AddressFamily::Inet6)),
        (Table::Fdb, neighbour(AddressFamily::Bridge)),
    ]
}

/// A complete re-dump in progress: the tables being rebuilt (events are
/// applied to them too) and which dump of [`dumps`] is running.
struct Resync {
    next: HostTables,
    step: usize,
    seq: u32,
    /// Times the current dump has been run again after an interruption.
    retries: u32,
    /// A dump was taken although interrupted (see [`MAX_RETRIES`]).
    provisional: bool,
}

/// Runs of one interrupted dump before its result is taken as it is. On a
/// host whose tables change faster than a dump takes (thousands of pods
/// coming and going), no dump of them ever completes uninterrupted; the
/// view would never be ready and the agent never start. What an
/// interrupted dump gave is mostly right: its parts and the events arrive
/// in the order the kernel made them, so a change during the dump is
/// applied after the part that preceded it. A re-dump follows soon
/// (from 1 s, doubling up to [`RESYNC_INTERVAL`]) to replace it.
const MAX_RETRIES: u32 = 3;

/// The first wait before replacing a provisional view.
const FIRST_REDUMP: std::time::Duration = std::time::Duration::from_secs(1);

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + RESYNC_INTERVAL
}

struct Task {
    socket: RouteSocket,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    ready: watch::Sender<Option<Result<(), String>>>,
    seq: u32,
    resync: Option<Resync>,
    /// Sync requests waiting for a re-dump to complete.
    waiters: Vec<oneshot::Sender<()>>,
    /// When to re-dump after a provisional view, and the wait after that.
    redump_at: Option<tokio::time::Instant>,
    redump_backoff: std::time::Duration,
}

impl Task {
    async fn run(mut self, mut sync: mpsc::Receiver<oneshot::Sender<()>>) {
        if let Err(e) = self.start_resync().await {
            self.ready.send_replace(Some(Err(e)));
            return;
        }
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        loop {
            // Biased, socket first: a sync is answered only after the
            // events queued before it.
            let step = tokio::select! {
                biased;
                received = self.socket.receive() => self.on_receive(received).await,
                request = sync.recv() => match request {
                    Some(reply) => {
                        if self.resync.is_some() {
                            self.waiters.push(reply);
                        } else {
                            let _ = reply.send(());
                        }
                        Ok(())
                    }
                    // Every handle is gone.
                    None => return,
                },
                () = tokio::time::sleep_until(self.redump_at.unwrap_or_else(far_future)),
                    if self.redump_at.is_some() && self.resync.is_none() => {
                    self.redump_at = None;
                    Counters::add(&self.counters.redumps);
                    self.start_resync().await
                }
                _ = resync.tick() => {
                    if self.resync.is_none() {
                        Counters::add(&self.counters.redumps);
                        self.start_resync().await
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(e) = step {
                tracing::warn!(error = %e, "host view failed; attribution unavailable");
                if self.ready.borrow().is_none() {
                    self.ready.send_replace(Some(Err(e)));
                }
                return;
            }
        }
    }

    async fn start_resync(&mut self) -> Result<(), String> {
        self.seq = self.seq.wrapping_add(1);
        Counters::add(&self.counters.dumps);
        self.resync = Some(Resync {
            next: HostTables::default(),
            step: 0,
            seq: self.seq,
            retries: 0,
            provisional: false,
        });
        self.request(0).await
    }

    async fn request(&mut self, step: usize) -> Result<(), String> {
        let seq = self.seq;
        let Some((_, request)) = dumps().into_iter().nth(step) else {
            return Ok(());
        };
        self.socket
            .request_dump(seq, request)
            .await
            .map_err(|e| format!("host dump: {e}"))
    }

    async fn on_receive(&mut self, received: std::io::Result<Vec<Received>>) -> Result<(), String> {
        let messages = match received {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                Counters::add(&self.counters.overruns);
                tracing::warn!("netlink overrun on the host view, re-dumping");
                return self.start_resync().await;
            }
            Err(e) => return Err(format!("host netlink receive: {e}")),
        };
        let mut changed = false;
        for m in messages {
            match m {
                Received::Message(msg) => {
                    if let Some(r) = self.resync.as_mut() {
                        r.next.apply(&msg);
                    }
                    changed |= self.shared.tables.write().apply(&msg);
                }
                Received::DumpDone { seq, interrupted } => {
                    if self.resync.as_ref().is_some_and(|r| r.seq == seq) {
                        if interrupted {
                            Counters::add(&self.counters.redumps);
                            if self.retry_again() {
                                return self.redo_step().await;
                            }
                        }
                        changed |= self.next_dump().await?;
                    }
                }
                Received::DumpFailed { seq, errno } => {
                    if self.resync.as_ref().is_some_and(|r| r.seq == seq) {
                        // EOPNOTSUPP: no bridge support, hence no FDB.
                        if errno != libc::EOPNOTSUPP && errno != libc::EAFNOSUPPORT {
                            return Err(format!("host dump refused: errno {errno}"));
                        }
                        changed |= self.next_dump().await?;
                    }
                }
            }
        }
        if changed {
            self.shared.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Whether the interrupted dump should run again; else it is taken as
    /// it is, and the view it completes is provisional.
    fn retry_again(&mut self) -> bool {
        let Some(resync) = self.resync.as_mut() else {
            return false;
        };
        if resync.retries < MAX_RETRIES {
            resync.retries += 1;
            return true;
        }
        if !resync.provisional {
            tracing::warn!(
                dump = resync.step,
                "the host's tables changed during every dump; taking an interrupted one, and dumping again soon"
            );
        }
        resync.provisional = true;
        false
    }

    /// The current dump was interrupted (its table changed meanwhile): run
    /// that one dump again on a cleared table, keeping the complete ones,
    /// which events keep current. Starting over from the first dump would
    /// never finish on a host whose links change faster than a whole
    /// re-dump takes (thousands of pods, churning): the agent's first view,
    /// and so its start, waited for ever.
    async fn redo_step(&mut self) -> Result<(), String> {
        let Some(resync) = self.resync.as_mut() else {
            return Ok(());
        };
        let step = resync.step;
        if let Some((table, _)) = dumps().into_iter().nth(step) {
            resync.next.clear(table);
        }
        self.seq = self.seq.wrapping_add(1);
        resync.seq = self.seq;
        self.request(step).await
    }

    /// The current dump is complete: ask for the next one, or install the
    /// rebuilt tables when there is none left. Returns whether they were
    /// installed.
    async fn next_dump(&mut self) -> Result<bool, String> {
        let Some(resync) = self.resync.as_mut() else {
            return Ok(false);
        };
        resync.step += 1;
        resync.retries = 0;
        let step = resync.step;
        if step < dumps().len() {
            self.seq = self.seq.wrapping_add(1);
            resync.seq = self.seq;
            self.request(step).await?;
            return Ok(false);
        }
        if let Some(done) = self.resync.take() {
            *self.shared.tables.write() = done.next;
            if done.provisional {
                self.redump_at = Some(tokio::time::Instant::now() + self.redump_backoff);
                self.redump_backoff = (self.redump_backoff * 2).min(RESYNC_INTERVAL);
            } else {
                self.redump_backoff = FIRST_REDUMP;
            }
        }
        self.ready.send_if_modified(|r| {
            let first = r.is_none();
            if first {
                *r = Some(Ok(()));
            }
            first
        });
        for w in self.waiters.drain(..) {
            let _ = w.send(());
        }
        Ok(true)
    }
}
