//! Opening a namespace file named by untrusted input, safely.

use std::{
    fs::{File, OpenOptions},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd},
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use crate::Error;

/// An open network namespace file (`/var/run/netns/NAME`,
/// `/proc/PID/ns/net`, ...).
///
/// The open descriptor keeps the namespace alive, so while a `NetnsFile`
/// exists its device and inode name exactly this namespace instance: two
/// `NetnsFile`s held at the same time are the same namespace exactly when
/// [`NetnsFile::same_namespace`] says so. Once closed, the inode number may
/// be handed to another namespace at once; use the
/// [`NetnsCookie`](crate::NetnsCookie) for a lasting identity.
#[derive(Debug)]
pub struct NetnsFile {
    path: PathBuf,
    file: File,
    dev: u64,
    ino: u64,
}

impl NetnsFile {
    /// Opens `path` without blocking (a FIFO or a device never hangs the
    /// caller) and checks that it is a network namespace: a file of the
    /// nsfs filesystem whose namespace type is `CLONE_NEWNET`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| Error::Open {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&path)
            .map_err(open_err)?;
        let fs = fstatfs(&file).map_err(|e| open_err(e.into()))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            let kind = file
                .metadata()
                .map(|m| describe(&m.file_type()))
                .unwrap_or("a file");
            return Err(Error::NotANetns {
                path,
                what: format!("it is {kind}, not a namespace"),
            });
        }
        let nstype = namespace_type(file.as_fd()).map_err(open_err)?;
        if nstype != libc::CLONE_NEWNET {
            return Err(Error::NotANetns {
                path,
                what: "it is a namespace of another type".into(),
            });
        }
        let meta = file.metadata().map_err(open_err)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            path,
            file,
        })
    }

    /// Opens the network namespace of process `pid` (`/proc/PID/ns/net`).
    pub fn of_pid(pid: u32) -> Result<Self, Error> {
        Self::open(format!("/proc/{pid}/ns/net"))
    }

    /// Opens the namespace of this process (its main thread).
    pub fn current() -> Result<Self, Error> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `st_dev` of the namespace file.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// `st_ino` of the namespace file (what `ip netns identify` compares).
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Whether `other` is the same namespace. Sound because both files are
    /// open: neither namespace can be freed and its inode reused meanwhile.
    pub fn same_namespace(&self, other: &NetnsFile) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }

    /// A second descriptor of the same namespace, with the same path.
    pub fn try_clone(&self) -> Result<Self, Error> {
        Ok(Self {
            path: self.path.clone(),
            file: self.file.try_clone().map_err(|source| Error::Open {
                path: self.path.clone(),
                source,
            })?,
            dev: self.dev,
            ino: self.ino,
        })
    }
}

impl AsFd for NetnsFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// `ioctl(NS_GET_NSTYPE)`: the `CLONE_NEW*` type of an nsfs file.
fn namespace_type(fd: BorrowedFd<'_>) -> std::io::Result<libc::c_int> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only returns a value; the
    // descriptor is valid for the duration of the call (borrowed).
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn describe(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_opens_and_is_the_same_by_two_paths() {
        let a = NetnsFile::of_pid(std::process::id()).unwrap();
        let b = NetnsFile::open("/proc/self/ns/net").unwrap();
        assert!(a.same_namespace(&b));
        assert!(a.same_namespace(&NetnsFile::current().unwrap()));
    }

    #[test]
    fn missing_path_is_an_open_error() {
        let err = NetnsFile::open("/nonexistent/netns").unwrap_err();
        assert!(matches!(err, Error::Open { .. }), "{err}");
    }

    #[test]
    fn a_regular_file_is_refused() {
        let dir = tempfile_dir();
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = NetnsFile::open(&file).unwrap_err();
        assert!(
            err.to_string().contains("a regular file, not a namespace"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile_dir();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // A blocking open of a FIFO with no writer would hang this test.
        let err = NetnsFile::open(&fifo).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_namespace_of_another_type_is_refused() {
        let err = NetnsFile::open("/proc/self/ns/uts").unwrap_err();
        assert!(err.to_string().contains("another type"), "{err}");
    }

    fn tempfile_dir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "netns-file-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
