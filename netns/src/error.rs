use std::{io, path::PathBuf};

/// Everything that can go wrong while naming, entering or watching a
/// network namespace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace file could not be opened or inspected (missing,
    /// permission, ...).
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The path that was opened.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The path names something that is not a network namespace: a
    /// regular file, a FIFO, a device, or a namespace of another type.
    #[error("{path} is not a network namespace file: {what}")]
    NotANetns {
        /// The path that was opened.
        path: PathBuf,
        /// What it is instead.
        what: String,
    },
    /// `setns` refused the namespace (we lack `CAP_SYS_ADMIN`).
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The path whose namespace could not be entered.
        path: PathBuf,
        /// The errno returned by `setns(2)`.
        source: nix::Error,
    },
    /// The kernel does not report netns cookies (`SO_NETNS_COOKIE` needs
    /// Linux 5.14 or later). Namespace identity cannot be established
    /// without them: inode numbers are recycled.
    #[error(
        "this kernel does not report network namespace cookies (SO_NETNS_COOKIE, Linux >= 5.14): {0}"
    )]
    NoCookies(io::Error),
    /// The namespace disappeared while it was being watched.
    #[error("network namespace {path} is gone")]
    Gone {
        /// The path the namespace was known by.
        path: PathBuf,
    },
    /// The helper thread could not be started or died.
    #[error("namespace helper thread failed: {0}")]
    Thread(String),
    /// A netlink socket operation failed.
    #[error("netlink: {0}")]
    Netlink(#[source] io::Error),
}
