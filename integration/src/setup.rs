//! What every set-up step shares: failing with the step's name, and the
//! lock that keeps namespace and device creation away from a test that
//! makes the kernel recycle an inode number.

use std::{
    fmt::Display,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use crate::netlink;

/// Whatever draws inode numbers from the kernel's proc allocator takes
/// this shared: a namespace, and a network device too (each device gets a
/// `/proc/net/dev_snmp6` entry, which takes a number). A test that makes
/// the kernel recycle an inode number takes it exclusively, from before the
/// old namespace dies until the new one has the number, so that no other
/// test's namespace or veth takes the number first.
static CREATION: RwLock<()> = RwLock::new(());

/// Holds off [`exclusive_namespace_creation`] while this thread creates
/// namespaces or network devices.
pub(crate) fn shared_creation() -> RwLockReadGuard<'static, ()> {
    CREATION.read().unwrap_or_else(|p| p.into_inner())
}

/// Holds off every other namespace and device creation of this process
/// (see [`crate::PodNet::recycling`]). Create nothing on this thread
/// meanwhile except through `recycling`.
pub fn exclusive_namespace_creation() -> RwLockWriteGuard<'static, ()> {
    CREATION.write().unwrap_or_else(|p| p.into_inner())
}

/// The value of a set-up step, or a panic naming the step.
pub(crate) fn step<T>(what: impl Display, result: Result<T, netlink::Error>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}
