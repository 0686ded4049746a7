//! Network namespaces as seen from a host agent.
//!
//! This crate answers two questions about Linux network namespaces, and
//! nothing else: *which addresses does namespace N hold now*, and *tell me
//! when that changes*. It knows nothing of pods, tokens or HTTP.
//!
//! - [`NetnsRef`] names a namespace by the device and inode of its nsfs file.
//! - [`run_in`] / [`run_in_async`] run a closure on a dedicated, short-lived
//!   thread that has entered a namespace; nothing else in the process moves.
//! - [`WatchSet`] keeps one netlink socket per watched namespace, dumps its
//!   addresses once, follows `RTM_NEWADDR`/`RTM_DELADDR` events, and keeps an
//!   [`AddressIndex`] (address → namespaces) that readers query without any
//!   syscall. It lets go of a namespace as soon as nobody needs it or its
//!   file disappears, so the kernel can free it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod handle;
mod index;
mod inventory;
mod route_socket;
mod watch_set;

pub use error::Error;
pub use handle::{run_in, run_in_async, NetnsId, NetnsRef};
pub use index::AddressIndex;
pub use watch_set::{WatchConfig, WatchSet, WatchStats, WatchStatus};
