//! The network namespace of the process at the other end of a Unix stream
//! socket, named through its pidfd (`SO_PEERPIDFD`, Linux 6.5), never
//! through a bare PID that may have been reused.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use crate::{Error, NetnsFile};

/// `SO_PEERPIDFD` (asm-generic/socket.h); not in every libc yet.
const SO_PEERPIDFD: libc::c_int = 77;

impl NetnsFile {
    /// Opens the network namespace the peer of `socket` (a connected Unix
    /// stream socket) is in now.
    ///
    /// The peer is named by the pidfd the kernel took when it connected:
    /// its PID is read from the pidfd, `/proc/PID/ns/net` is opened, and
    /// then the pidfd is asked whether that very process is still alive. A
    /// process that has exited (whose PID another process may now hold) is
    /// an error, never the other process's namespace.
    pub fn of_peer(socket: BorrowedFd<'_>) -> Result<Self, Error> {
        let peer_err = |source| Error::Open {
            path: "the socket's peer".into(),
            source,
        };
        let pidfd = peer_pidfd(socket).map_err(peer_err)?;
        let pid = pidfd_pid(&pidfd).map_err(peer_err)?;
        let ns = Self::of_pid(pid)?;
        // Alive now: so alive since it was named, and the PID was its own.
        if !is_alive(&pidfd).map_err(peer_err)? {
            return Err(peer_err(io::Error::other("the peer process has exited")));
        }
        Ok(ns)
    }
}

/// The pidfd of `socket`'s peer, as the kernel recorded it at connect.
fn peer_pidfd(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` and `len` are valid for writes of the sizes given, and
    // `socket` is an open descriptor for the whole call.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if fd < 0 {
        return Err(io::Error::other("no pidfd for the peer"));
    }
    // SAFETY: the kernel just made `fd` for us; nothing else owns it.
    #[allow(unsafe_code)]
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(owned)
}

/// The PID a pidfd names (`Pid:` in its fdinfo; -1 once it has exited).
fn pidfd_pid(pidfd: &OwnedFd) -> io::Result<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .map(str::trim)
        .ok_or_else(|| io::Error::other("not a pidfd"))?;
    pid.parse::<u32>()
        .map_err(|_| io::Error::other("the peer process has exited"))
}

/// Whether the process a pidfd names is alive (signal 0).
fn is_alive(pidfd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: pidfd_send_signal with signal 0 and no siginfo only checks
    // that the process exists and may be signalled; `pidfd` is open.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        // Alive, though we may not signal it (not as root).
        e if e.raw_os_error() == Some(libc::EPERM) => Ok(true),
        e => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::{fd::AsFd, unix::net::UnixStream};

    use super::*;

    #[test]
    fn a_peer_in_this_process_is_in_this_namespace() {
        let (a, _b) = UnixStream::pair().unwrap();
        match NetnsFile::of_peer(a.as_fd()) {
            Ok(ns) => assert!(ns.same_namespace(&NetnsFile::current().unwrap())),
            // Kernels before 6.5 have no SO_PEERPIDFD.
            Err(Error::Open { source, .. }) if source.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                eprintln!("SKIPPED (SO_PEERPIDFD needs Linux 6.5)");
            }
            Err(e) => panic!("{e}"),
        }
    }
}
