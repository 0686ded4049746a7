//! One agent per `--state-dir`: an exclusive `flock` on `STATE_DIR/lock`,
//! held for the agent's life (the kernel drops it when the process dies,
//! SIGKILL included, so a crash never leaves a stale lock). The file holds
//! the holder's PID, for the refusal's message.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

/// Why the state directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another rkt-mds ({holder}) uses --state-dir {dir}: stop it first, or give this one its own --state-dir")]
    Held { dir: PathBuf, holder: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct StateLock {
    _file: Flock<File>,
}

/// Locks `dir` (which must exist) for this process.
pub fn lock(dir: &Path) -> Result<StateLock, LockError> {
    let path = dir.join("lock");
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let holder = match pid.trim() {
                "" => "PID unknown".to_owned(),
                pid => format!("PID {pid}"),
            };
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
    };
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(StateLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        // flock locks belong to the open file: a second open is refused
        // even within one process.
        let e = lock(dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("another rkt-mds (PID {})", std::process::id())),
            "{e}"
        );
        drop(held);
        lock(dir.path()).unwrap();
    }
}
