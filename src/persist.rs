//! Registrations on disk (`--runtime-dir`): one file per pod, replaced
//! atomically before the registration is acknowledged. Tokens are stored
//! only as SHA-256 digests.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    appc::PodUuid,
    registry::{NetnsBinding, Pod, Registrant},
    store::{self, StoreError},
};

/// The file format of one registration.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub uuid: PodUuid,
    /// Hex SHA-256 of the token.
    pub token_sha256: String,
    /// The pod manifest as echoed (the registered one, normalized).
    pub manifest: String,
    /// Image manifests as echoed, by app name.
    pub apps: BTreeMap<String, String>,
    pub netns: StoredNetns,
    pub registered_at: u64,
    pub registrant: Registrant,
    #[serde(default)]
    pub rkt_pod: bool,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StoredNetns {
    /// The namespace instance the pod is bound to: its cookie is the
    /// identity, valid only within the boot it was read in. Records of
    /// version 1 have neither and cannot be trusted after a restart.
    Known {
        path: PathBuf,
        dev: u64,
        ino: u64,
        #[serde(default)]
        cookie: Option<u64>,
        #[serde(default)]
        boot_id: Option<String>,
    },
    HostNetwork,
    Pending,
}

/// The largest record read back: a pod manifest and its apps' image
/// manifests, each at most the 1 MiB registration body limit.
const MAX_RECORD: u64 = 64 * 1024 * 1024;

/// The record format written now.
pub const VERSION: u32 = 2;

impl Record {
    /// The record of `pod`; `boot_id` is this boot's (see [`netns::boot_id`]).
    pub fn of(pod: &Pod, boot_id: &str) -> Self {
        Self {
            version: VERSION,
            uuid: pod.uuid,
            token_sha256: hex::encode(pod.token.0),
            manifest: String::from_utf8_lossy(&pod.manifest_body).into_owned(),
            apps: pod
                .apps
                .iter()
                .map(|(n, a)| {
                    (
                        n.clone(),
                        String::from_utf8_lossy(&a.image_manifest).into_owned(),
                    )
                })
                .collect(),
            netns: match &pod.netns {
                NetnsBinding::Known(lease) => {
                    let i = lease.instance();
                    StoredNetns::Known {
                        path: i.path().to_path_buf(),
                        dev: i.dev(),
                        ino: i.ino(),
                        cookie: Some(i.cookie().0),
                        boot_id: Some(boot_id.to_owned()),
                    }
                }
                NetnsBinding::HostNetwork => StoredNetns::HostNetwork,
                NetnsBinding::Pending => StoredNetns::Pending,
            },
            registered_at: pod.registered_at,
            registrant: pod.registrant,
            rkt_pod: pod.rkt_pod,
        }
    }

    pub fn token_digest(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.token_sha256, &mut out).ok()?;
        Some(out)
    }
}

/// The runtime directory of registrations.
#[derive(Clone, Debug)]
pub struct PodStore {
    dir: PathBuf,
    boot_id: String,
}

impl PodStore {
    /// `boot_id` is written into every record that names a namespace.
    pub fn open(dir: &Path, boot_id: String) -> Result<Self, StoreError> {
        store::ensure_private_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            boot_id,
        })
    }

    /// The boot id records are written with.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    fn path(&self, uuid: &PodUuid) -> PathBuf {
        self.dir.join(format!("{uuid}.json"))
    }

    pub fn save(&self, pod: &Pod) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(&Record::of(pod, &self.boot_id)).unwrap_or_default();
        store::write_atomic(&self.path(&pod.uuid), &bytes)
    }

    pub fn remove(&self, uuid: &PodUuid) -> Result<(), StoreError> {
        store::remove_durable(&self.path(uuid))
    }

    /// Every readable record. Leftover temporary files are deleted;
    /// unreadable or foreign files are logged and skipped.
    pub fn load(&self) -> Vec<Record> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list the runtime directory");
                return Vec::new();
            }
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if store::is_temporary(&name) {
                // A crash between write and rename: the old file, if any,
                // is still whole.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                tracing::warn!(file = %path.display(), "skipping a foreign file in the runtime directory");
                continue;
            };
            // Not a plain read: a FIFO or a device put there must not
            // block the start-up.
            let record = store::read_regular_file(&path, MAX_RECORD)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
                .and_then(|r| match PodUuid::parse(stem) {
                    Ok(u) if u == r.uuid => Ok(r),
                    _ => Err("file name does not match the UUID inside".into()),
                });
            match record {
                Ok(r) => records.push(r),
                Err(reason) => {
                    tracing::warn!(file = %path.display(), %reason, "skipping an unreadable registration file")
                }
            }
        }
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_among_the_records_is_skipped_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let store = PodStore::open(dir.path(), "boot".into()).unwrap();
        let fifo = dir.path().join("de305d54-75b4-431b-adb2-eb6b9e546013.json");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // A blocking read of a FIFO with no writer would hang here.
        assert!(store.load().is_empty());
        assert!(fifo.exists(), "left in place for the operator");
    }
}
