//! Network namespaces as seen from a host agent.
//!
//! This crate answers two questions about Linux network namespaces, and
//! nothing else: *which addresses does namespace instance N hold now*, and
//! *tell me when that changes*. It knows nothing of pods, tokens or HTTP.
//!
//! - [`NetnsFile`] opens a namespace file named by untrusted input without
//!   blocking and checks that it is a network namespace.
//! - [`NetnsCookie`] is a namespace instance's identity: the kernel never
//!   gives it to another namespace until reboot. Device and inode numbers
//!   are *not* an identity: a freed namespace's inode goes to the next new
//!   one at once, often at the same path. They are sound only while the
//!   namespace is pinned (by an open [`NetnsFile`] or a live watcher).
//! - [`run_in`] / [`run_in_async`] run a closure on a dedicated, short-lived
//!   thread that has entered a namespace; nothing else in the process moves.
//! - [`WatchSet`] keeps one netlink socket per watched namespace instance,
//!   dumps its addresses once, follows `RTM_NEWADDR`/`RTM_DELADDR` events,
//!   and keeps an [`AddressIndex`] (address → cookies) that readers query
//!   without any syscall. A [`Lease`] holds a watched instance; the watcher
//!   stops for good when its path no longer names the instance or the last
//!   lease is dropped, so the kernel can free the namespace.
//! - [`WatchSet::attribute`] answers from the host's side where an address
//!   lives: the agent's namespace's route to it, the veth it leaves by
//!   (or, on a bridge, the neighbour entry and the FDB port) and that
//!   veth's peer namespace (`IFLA_LINK_NETNSID`, matched to watched
//!   instances by nsid). Facts a pod cannot change from inside; kept
//!   current by events, answered from memory.
//!
//! # Why not rtnetlink
//!
//! The watchers' sockets are hand-written on `netlink-sys`; the test
//! harness uses `rtnetlink` 0.24 for plumbing. Measured against
//! rtnetlink 0.24 / netlink-proto 0.14.1 (a namespace with 2,004
//! addresses, 20 dumps each):
//! - Overruns would be fine: netlink-proto turns `ENOBUFS` into an
//!   `Overrun` message on the connection's message channel.
//! - `NLM_F_DUMP_INTR` is not: `address().get().execute()` strips the
//!   header of every reply and drops the end-of-dump message, so a dump
//!   the kernel flags as inconsistent looks whole (while another thread
//!   changed addresses, 14/20 and 20/20 dumps were flagged on a raw
//!   socket; `execute()` reported all 40 as plain successes).
//! - A socket subscribed to events and asking for dumps matches replies by
//!   sequence number alone, and the kernel copies the sequence number of
//!   whoever caused a change into its event: another process's request
//!   with the same number (rtnetlink numbers from 1, like this project's
//!   own harness) ends our dump early, silently. 15/20 dumps came back cut
//!   short that way; 0/20 on a raw socket.
//! - Speed is no argument either way: a full dump took 1.5-2.3 ms through
//!   rtnetlink, 1.3-1.8 ms here.
//!
//! So dumps and events share one raw socket here, events during a dump
//! are applied to it in order, and both failure signals lead to a re-dump.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod enter;
mod error;
mod file;
mod host_tables;
mod host_view;
mod index;
mod instance;
mod inventory;
mod nsid;
mod peer;
mod route_socket;
mod stats;
mod watch_set;

pub use enter::{run_in, run_in_async};
pub use error::Error;
pub use file::NetnsFile;
pub use host_tables::{is_link_local, Attribution};
pub use index::AddressIndex;
pub use instance::{boot_id, NetnsCookie, NetnsInstance};
pub use stats::WatchStats;
pub use watch_set::{Lease, WatchConfig, WatchSet, WatchStatus};
