//! The lasting identity of a namespace instance: its netns cookie.

use std::{
    fmt,
    os::fd::{AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use crate::Error;

/// `SO_NETNS_COOKIE` (Linux 5.14; not in the libc crate yet): 71 in
/// `asm-generic/socket.h` and on most architectures, 0x0050 on SPARC.
#[cfg(not(target_arch = "sparc64"))]
const SO_NETNS_COOKIE: libc::c_int = 71;
#[cfg(target_arch = "sparc64")]
const SO_NETNS_COOKIE: libc::c_int = 0x0050;

/// A network namespace instance's cookie: a 64-bit number the kernel gives
/// each namespace at creation and never gives another until reboot (unlike
/// the nsfs inode number, which is recycled at once). Read with
/// `getsockopt(SO_NETNS_COOKIE)` on any socket created inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsCookie(pub u64);

impl fmt::Display for NetnsCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "netns-cookie:{}", self.0)
    }
}

impl NetnsCookie {
    /// The cookie of the namespace `socket` was created in.
    pub fn of_socket(socket: BorrowedFd<'_>) -> Result<Self, Error> {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: the descriptor is valid (borrowed); `cookie` and `len`
        // are live locals of the sizes passed, and the kernel writes at
        // most `len` bytes.
        #[allow(unsafe_code)]
        let r = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(Error::NoCookies(std::io::Error::last_os_error()));
        }
        if len as usize != std::mem::size_of::<u64>() {
            return Err(Error::NoCookies(std::io::Error::other(
                "SO_NETNS_COOKIE returned an unexpected size",
            )));
        }
        Ok(Self(cookie))
    }

    /// The cookie of the namespace the calling thread is in. Fails with
    /// [`Error::NoCookies`] on kernels older than 5.14: callers should
    /// refuse to start rather than fall back to inode numbers.
    pub fn current() -> Result<Self, Error> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")
            .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
            .map_err(Error::NoCookies)?;
        use std::os::fd::AsFd;
        Self::of_socket(socket.as_fd())
    }
}

/// A namespace instance as a binding remembers it: the path it was named
/// by, the nsfs device and inode seen then (for display, and as a cheap
/// check while the instance is known to be alive), and its cookie, which
/// is the identity. Holds no descriptor, so it never keeps a namespace
/// alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsInstance {
    path: PathBuf,
    dev: u64,
    ino: u64,
    cookie: NetnsCookie,
}

impl NetnsInstance {
    /// Assembles an instance from remembered parts (for reloading state).
    pub fn new(path: PathBuf, dev: u64, ino: u64, cookie: NetnsCookie) -> Self {
        Self {
            path,
            dev,
            ino,
            cookie,
        }
    }

    /// The path it was named by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `st_dev` of its nsfs file when it was named.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// `st_ino` of its nsfs file when it was named (display only: the
    /// number may belong to another namespace by now).
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The identity.
    pub fn cookie(&self) -> NetnsCookie {
        self.cookie
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): cookies are unique
/// only until reboot, so a remembered cookie is meaningful only with it.
pub fn boot_id() -> std::io::Result<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    Ok(id.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_cookie_is_stable_and_nonzero() {
        let a = NetnsCookie::current().unwrap();
        let b = NetnsCookie::current().unwrap();
        assert_eq!(a, b);
        assert_ne!(a.0, 0);
    }

    #[test]
    fn boot_id_is_a_uuid() {
        let id = boot_id().unwrap();
        assert_eq!(id.len(), 36, "{id}");
    }
}
