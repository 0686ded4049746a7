//! Naming namespaces and running code inside them.

use std::{
    fmt,
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use nix::sched::{setns, CloneFlags};

use crate::Error;

/// The identity of a namespace: device and inode of its nsfs file.
///
/// Two paths (a bind mount in `/var/run/netns` and `/proc/PID/ns/net`) name
/// the same namespace exactly when their `NetnsId`s are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsId {
    /// `st_dev` of the namespace file.
    pub dev: u64,
    /// `st_ino` of the namespace file (what `ip netns identify` compares).
    pub ino: u64,
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

/// A network namespace known by a path, identified by its [`NetnsId`].
///
/// Holding a `NetnsRef` keeps no file descriptor open, so it never keeps a
/// namespace alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsRef {
    path: PathBuf,
    id: NetnsId,
}

impl NetnsRef {
    /// Names the namespace that `path` points at now.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let id = stat_id(&path).map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path, id })
    }

    /// Names the namespace of process `pid` (`/proc/PID/ns/net`).
    pub fn of_pid(pid: u32) -> Result<Self, Error> {
        Self::open(format!("/proc/{pid}/ns/net"))
    }

    /// The path this namespace was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's identity.
    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// Whether the path still names this same namespace. False when the
    /// file is gone (`ip netns del`, process exit) or names another one.
    pub fn is_current(&self) -> bool {
        stat_id(&self.path).is_ok_and(|id| id == self.id)
    }
}

fn stat_id(path: &Path) -> std::io::Result<NetnsId> {
    let meta = std::fs::metadata(path)?;
    Ok(NetnsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Runs `f` on a new, dedicated thread that has entered `ns`, and returns
/// its result. The calling thread and every other thread stay where they
/// are. Sockets created by `f` stay bound to `ns` after the thread ends.
///
/// Blocks the caller until `f` returns: from async code use
/// [`run_in_async`].
pub fn run_in<T, F>(ns: &NetnsRef, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = ns.clone();
    std::thread::Builder::new()
        .name("netns-enter".into())
        .spawn(move || enter_and_run(&ns, f))
        .map_err(|e| Error::Thread(e.to_string()))?
        .join()
        .map_err(|_| Error::Thread("panicked inside the namespace".into()))?
}

/// Like [`run_in`], but awaits the helper thread instead of blocking, so it
/// can be called from a tokio task. The thread is still a plain
/// `std::thread`, never a runtime worker.
pub async fn run_in_async<T, F>(ns: &NetnsRef, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = ns.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-enter".into())
        .spawn(move || {
            // The receiver may be gone if the caller was cancelled; the
            // result (and any socket in it) is then simply dropped here.
            let _ = tx.send(enter_and_run(&ns, f));
        })
        .map_err(|e| Error::Thread(e.to_string()))?;
    rx.await
        .map_err(|_| Error::Thread("panicked inside the namespace".into()))?
}

/// Body of the helper thread. Owns the thread: it ends right after `f`, so
/// the switched namespace never leaks into other work.
fn enter_and_run<T>(ns: &NetnsRef, f: impl FnOnce() -> T) -> Result<T, Error> {
    let open_err = |source| Error::Open {
        path: ns.path.clone(),
        source,
    };
    let file = File::open(&ns.path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    // The path may have been re-pointed since `NetnsRef::open`: enter only
    // the namespace the caller named, never a newcomer at the same path.
    if (meta.dev(), meta.ino()) != (ns.id.dev, ns.id.ino) {
        return Err(Error::Replaced {
            path: ns.path.clone(),
        });
    }
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Enter {
        path: ns.path.clone(),
        source,
    })?;
    // Close the namespace fd before running `f`: only what `f` creates may
    // hold the namespace.
    drop(file);
    Ok(f())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_has_a_stable_id() {
        let a = NetnsRef::of_pid(std::process::id()).unwrap();
        let b = NetnsRef::open("/proc/self/ns/net").unwrap();
        assert_eq!(a.id(), b.id());
        assert!(a.is_current());
    }

    #[test]
    fn missing_path_is_an_open_error() {
        let err = NetnsRef::open("/nonexistent/netns").unwrap_err();
        assert!(matches!(err, Error::Open { .. }), "{err}");
    }

    #[test]
    fn a_regular_file_cannot_be_entered() {
        let file = std::env::temp_dir().join(format!("netns-test-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let ns = NetnsRef::open(&file).unwrap();
        let err = run_in(&ns, || ()).unwrap_err();
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(err, Error::Enter { .. }), "{err}");
    }

    #[test]
    fn replaced_path_is_refused() {
        let dir = std::env::temp_dir();
        let a = dir.join(format!("netns-repl-a-{}", std::process::id()));
        let b = dir.join(format!("netns-repl-b-{}", std::process::id()));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let ns = NetnsRef::open(&a).unwrap();
        // b's inode differs from a's: both existed at once.
        std::fs::rename(&b, &a).unwrap();
        assert!(!ns.is_current());
        let err = run_in(&ns, || ()).unwrap_err();
        std::fs::remove_file(&a).unwrap();
        assert!(matches!(err, Error::Replaced { .. }), "{err}");
    }
}
