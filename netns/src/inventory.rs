//! One namespace's address inventory: a task that owns the namespace's
//! netlink socket, dumps once, follows events, re-dumps on demand or after
//! an overrun, and lets go of the namespace when it is told to stop.

use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    RouteNetlinkMessage,
};
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    route_socket::{Received, RouteSocket},
    stats::Counters,
    AddressIndex, NetnsCookie,
};

/// Where a watcher is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The first dump has not completed yet.
    Starting,
    /// The inventory is complete and followed by events.
    Ready,
    /// Told to stop (released, or its path no longer names it); the
    /// socket is closed and the addresses withdrawn.
    Stopped,
    /// The socket failed; the addresses are withdrawn.
    Failed(String),
}

pub(crate) enum Command {
    /// Re-dump unless a dump finished less than `min_refresh` ago; answer
    /// when the inventory reflects a dump at least that recent.
    Refresh(oneshot::Sender<()>),
}

/// What the task shares with its watch set and the leases on it.
#[derive(Debug)]
pub(crate) struct Published {
    /// False once the watcher stopped or failed, or its path no longer
    /// names the instance: a binding to it is over for good.
    pub(crate) live: AtomicBool,
    pub(crate) addresses: RwLock<BTreeSet<IpAddr>>,
}

impl Default for Published {
    fn default() -> Self {
        Self {
            live: AtomicBool::new(true),
            addresses: RwLock::default(),
        }
    }
}

pub(crate) struct Inventory {
    pub(crate) cookie: NetnsCookie,
    /// For log lines only.
    pub(crate) path: PathBuf,
    pub(crate) socket: RouteSocket,
    pub(crate) index: AddressIndex,
    pub(crate) published: Arc<Published>,
    pub(crate) phase: watch::Sender<Phase>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) min_refresh: Duration,
}

/// A dump in flight: its sequence number, the set it is rebuilding (events
/// that arrive meanwhile are applied to it too) and who waits for it.
struct Dump {
    seq: u32,
    entries: HashSet<(IpAddr, u32)>,
    waiters: Vec<oneshot::Sender<()>>,
}

/// The inventory task's mutable state.
#[derive(Default)]
struct State {
    /// (address, interface index) pairs the namespace holds.
    entries: HashSet<(IpAddr, u32)>,
    seq: u32,
    dump: Option<Dump>,
    last_dump_done: Option<Instant>,
}

impl Inventory {
    /// Runs until it is told to stop (every command sender dropped) or the
    /// socket fails. Dropping `self.socket` on return is what lets the
    /// kernel free the namespace.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut state = State::default();
        let end = match self.start_dump(&mut state, Vec::new()).await {
            Err(end) => end,
            Ok(()) => loop {
                // Biased, socket first: events queued before a refresh was
                // asked for are applied before it is answered.
                let step = tokio::select! {
                    biased;
                    received = self.socket.receive() => self.on_receive(&mut state, received).await,
                    command = commands.recv() => self.on_command(&mut state, command).await,
                };
                if let Err(end) = step {
                    break end;
                }
            },
        };
        self.finish(end);
    }

    async fn on_receive(
        &mut self,
        state: &mut State,
        received: std::io::Result<Vec<Received>>,
    ) -> Result<(), Phase> {
        let messages = match received {
            Ok(messages) => messages,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // Events were dropped: only a fresh dump tells the truth.
                Counters::add(&self.counters.overruns);
                Counters::add(&self.counters.redumps);
                tracing::warn!(netns = %self.path.display(), "netlink overrun, re-dumping addresses");
                let waiters = state.dump.take().map(|d| d.waiters).unwrap_or_default();
                return self.start_dump(state, waiters).await;
            }
            Err(e) => return Err(Phase::Failed(format!("netlink receive: {e}"))),
        };
        for m in messages {
            match m {
                Received::Message(RouteNetlinkMessage::NewAddress(m)) => {
                    if let Some(entry) = entry_of(&m) {
                        state.entries.insert(entry);
                        if let Some(d) = state.dump.as_mut() {
                            d.entries.insert(entry);
                        }
                    }
                }
                Received::Message(RouteNetlinkMessage::DelAddress(m)) => {
                    if let Some(entry) = entry_of(&m) {
                        state.entries.remove(&entry);
                        if let Some(d) = state.dump.as_mut() {
                            d.entries.remove(&entry);
                        }
                    }
                }
                Received::Message(_) => {}
                Received::DumpDone { seq, interrupted } => {
                    let Some(d) = state.dump.take_if(|d| d.seq == seq) else {
                        continue;
                    };
                    if interrupted {
                        // The kernel says the dump may be inconsistent.
                        Counters::add(&self.counters.redumps);
                        self.start_dump(state, d.waiters).await?;
                        continue;
                    }
                    state.entries = d.entries;
                    state.last_dump_done = Some(Instant::now());
                    self.publish(&state.entries);
                    self.phase.send_if_modified(|p| {
                        let first = *p == Phase::Starting;
                        if first {
                            *p = Phase::Ready;
                        }
                        first
                    });
                    for w in d.waiters {
                        let _ = w.send(());
                    }
                }
                Received::DumpFailed { seq, errno } => {
                    if state.dump.as_ref().is_some_and(|d| d.seq == seq) {
                        return Err(Phase::Failed(format!(
                            "address dump refused: errno {errno}"
                        )));
                    }
                }
            }
        }
        if state.dump.is_none() {
            self.publish(&state.entries);
        }
        Ok(())
    }

    async fn on_command(
        &mut self,
        state: &mut State,
        command: Option<Command>,
    ) -> Result<(), Phase> {
        match command {
            // Stopped: nobody needs this namespace any more, or its path
            // no longer names it.
            None => Err(Phase::Stopped),
            Some(Command::Refresh(reply)) => {
                if let Some(d) = state.dump.as_mut() {
                    d.waiters.push(reply);
                } else if state
                    .last_dump_done
                    .is_some_and(|t| t.elapsed() < self.min_refresh)
                {
                    let _ = reply.send(());
                } else {
                    Counters::add(&self.counters.redumps);
                    self.start_dump(state, vec![reply]).await?;
                }
                Ok(())
            }
        }
    }

    async fn start_dump(
        &self,
        state: &mut State,
        waiters: Vec<oneshot::Sender<()>>,
    ) -> Result<(), Phase> {
        state.seq = state.seq.wrapping_add(1);
        Counters::add(&self.counters.dumps);
        state.dump = Some(Dump {
            seq: state.seq,
            entries: HashSet::new(),
            waiters,
        });
        self.socket
            .request_dump(
                state.seq,
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            )
            .await
            .map_err(|e| Phase::Failed(format!("address dump: {e}")))
    }

    /// Makes the index and the published set match `entries`.
    fn publish(&self, entries: &HashSet<(IpAddr, u32)>) {
        let new: BTreeSet<IpAddr> = entries.iter().map(|(a, _)| *a).collect();
        let mut current = self.published.addresses.write();
        if *current != new {
            self.index.update(self.cookie, &current, &new);
            *current = new;
        }
    }

    /// Withdraws every address and reports how the watcher ended. The
    /// socket is dropped with `self` right after.
    fn finish(self, end: Phase) {
        if let Phase::Failed(reason) = &end {
            tracing::warn!(netns = %self.path.display(), reason = %reason, "namespace watcher failed");
        }
        self.published.live.store(false, Ordering::Release);
        self.publish(&HashSet::new());
        self.phase.send_replace(end);
        // Last: whoever reads the state at the new generation sees all of
        // it, the reason included.
        self.index.touch();
    }
}

/// The (address, interface) pair of an address message. The address is
/// `IFA_LOCAL` when present (it differs from `IFA_ADDRESS` on
/// point-to-point links), else `IFA_ADDRESS`.
fn entry_of(m: &AddressMessage) -> Option<(IpAddr, u32)> {
    let mut address = None;
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Local(a) => return Some((*a, m.header.index)),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    address.map(|a| (a, m.header.index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_address_wins_on_point_to_point_links() {
        let mut m = AddressMessage::default();
        m.header.index = 3;
        let (peer, local): (IpAddr, IpAddr) =
            ("198.18.0.9".parse().unwrap(), "198.18.0.2".parse().unwrap());
        m.attributes = vec![
            AddressAttribute::Address(peer),
            AddressAttribute::Local(local),
        ];
        assert_eq!(entry_of(&m), Some((local, 3)));
        m.attributes = vec![AddressAttribute::Address(peer)];
        assert_eq!(entry_of(&m), Some((peer, 3)));
        m.attributes = vec![];
        assert_eq!(entry_of(&m), None);
    }
}
