//! rkt's pod directory (`<dir>/pods/run/<uuid>/`), read defensively: the
//! `netns` file rkt writes there after registering names the pod's
//! namespace. Blocking file I/O: call from a blocking thread.

use std::path::{Path, PathBuf};

use crate::store;

/// The longest `netns` file accepted: a path, not a payload.
const MAX_NETNS_FILE: u64 = 4096;

/// rkt's data directory.
#[derive(Clone, Debug)]
pub struct RktDir {
    root: PathBuf,
}

impl RktDir {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn pod_dir(&self, uuid: &crate::appc::PodUuid) -> PathBuf {
        self.root.join("pods/run").join(uuid.to_string())
    }

    /// Whether the pod's directory exists under `pods/run/`.
    pub fn has_pod(&self, uuid: &crate::appc::PodUuid) -> bool {
        self.pod_dir(uuid).is_dir()
    }

    /// The namespace path rkt recorded for the pod: `None` until rkt has
    /// written it. The file must be a small regular file holding an
    /// absolute path; anything else (a FIFO, a device, a huge file) is
    /// refused without blocking, with the reason.
    pub fn netns_path(&self, uuid: &crate::appc::PodUuid) -> Result<Option<PathBuf>, String> {
        let file = self.pod_dir(uuid).join("netns");
        let text = match store::read_regular_file(&file, MAX_NETNS_FILE) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        let text = String::from_utf8_lossy(&text);
        let path = text.trim();
        if path.is_empty() {
            // rkt may have created the file and not written it yet.
            return Ok(None);
        }
        if !Path::new(path).is_absolute() {
            return Err(format!(
                "{}: {path:?} is not an absolute path",
                file.display()
            ));
        }
        Ok(Some(PathBuf::from(path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appc::PodUuid;

    fn setup() -> (tempfile::TempDir, RktDir, PodUuid) {
        let dir = tempfile::tempdir().unwrap();
        let rkt = RktDir::new(dir.path().to_path_buf());
        let uuid = PodUuid::parse("de305d54-75b4-431b-adb2-eb6b9e546013").unwrap();
        std::fs::create_dir_all(rkt.pod_dir(&uuid)).unwrap();
        (dir, rkt, uuid)
    }

    #[test]
    fn absent_empty_and_written() {
        let (_d, rkt, uuid) = setup();
        assert_eq!(rkt.netns_path(&uuid), Ok(None));
        let f = rkt.pod_dir(&uuid).join("netns");
        std::fs::write(&f, "").unwrap();
        assert_eq!(rkt.netns_path(&uuid), Ok(None));
        std::fs::write(&f, "/var/run/netns/x\n").unwrap();
        assert_eq!(
            rkt.netns_path(&uuid),
            Ok(Some(PathBuf::from("/var/run/netns/x")))
        );
        std::fs::write(&f, "relative").unwrap();
        assert!(rkt.netns_path(&uuid).is_err());
    }

    #[test]
    fn a_fifo_or_a_huge_file_is_refused_without_blocking() {
        let (_d, rkt, uuid) = setup();
        let f = rkt.pod_dir(&uuid).join("netns");
        let made = std::process::Command::new("mkfifo")
            .arg(&f)
            .status()
            .unwrap();
        assert!(made.success());
        let err = rkt.netns_path(&uuid).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_file(&f).unwrap();
        std::fs::write(&f, vec![b'/'; 5000]).unwrap();
        let err = rkt.netns_path(&uuid).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }
}
