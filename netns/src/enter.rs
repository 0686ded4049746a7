//! Running code inside a namespace without moving the process.

use nix::sched::{setns, CloneFlags};

use crate::{Error, NetnsFile};

/// Runs `f` on a new, dedicated thread that has entered `ns`, and returns
/// its result. The calling thread and every other thread stay where they
/// are. Sockets created by `f` stay bound to `ns` after the thread ends.
///
/// Blocks the caller until `f` returns: from async code use
/// [`run_in_async`].
pub fn run_in<T, F>(ns: &NetnsFile, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = ns.try_clone()?;
    std::thread::Builder::new()
        .name("netns-enter".into())
        .spawn(move || enter_and_run(ns, f))
        .map_err(|e| Error::Thread(e.to_string()))?
        .join()
        .map_err(|_| Error::Thread("panicked inside the namespace".into()))?
}

/// Like [`run_in`], but awaits the helper thread instead of blocking, so it
/// can be called from a tokio task. The thread is still a plain
/// `std::thread`, never a runtime worker.
pub async fn run_in_async<T, F>(ns: &NetnsFile, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = ns.try_clone()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-enter".into())
        .spawn(move || {
            // The receiver may be gone if the caller was cancelled; the
            // result (and any socket in it) is then simply dropped here.
            let _ = tx.send(enter_and_run(ns, f));
        })
        .map_err(|e| Error::Thread(e.to_string()))?;
    rx.await
        .map_err(|_| Error::Thread("panicked inside the namespace".into()))?
}

/// Body of the helper thread. Owns the thread: it ends right after `f`, so
/// the switched namespace never leaks into other work. It enters through
/// the open descriptor, never the path, so a path re-pointed since it was
/// opened cannot send it elsewhere.
fn enter_and_run<T>(ns: NetnsFile, f: impl FnOnce() -> T) -> Result<T, Error> {
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Enter {
        path: ns.path().to_path_buf(),
        source,
    })?;
    // Close the namespace fd before running `f`: only what `f` creates may
    // hold the namespace.
    drop(ns);
    Ok(f())
}
