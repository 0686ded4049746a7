use std::{io, path::PathBuf};

/// Everything that can go wrong while naming, entering or watching a
/// network namespace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace file could not be read (missing, permission, ...).
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The path that was opened.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The path exists but `setns` refused it: it is not a network
    /// namespace, or we lack `CAP_SYS_ADMIN`.
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The path whose namespace could not be entered.
        path: PathBuf,
        /// The errno returned by `setns(2)`.
        source: nix::Error,
    },
    /// Between naming the namespace and entering it, the path started to
    /// point at another namespace.
    #[error("network namespace {path} changed while it was being opened")]
    Replaced {
        /// The path that now names another namespace.
        path: PathBuf,
    },
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
