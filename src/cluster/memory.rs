//! What a restarted agent remembers of its place in etcd, in
//! `--state-dir`, so that a crash restart is not a stranger: the lease its
//! last session held (to take its own node key back at once instead of
//! waiting a TTL) and a node secret, whose hash every node record carries
//! (`owner`). A lease id is visible to every reader of etcd; the secret is
//! not, so another host that copies the id still cannot take the name.

use std::path::{Path, PathBuf};

use ring::{
    digest,
    rand::{SecureRandom, SystemRandom},
};
use serde::{Deserialize, Serialize};

use crate::store::{read_regular_file, write_atomic, StoreError};

const SECRET_FILE: &str = "etcd-node-secret";
const LEASE_FILE: &str = "etcd-lease.json";

/// The node's memory in a state directory.
#[derive(Clone, Debug)]
pub struct Memory {
    dir: PathBuf,
    /// Hex SHA-256 of the node secret: the `owner` of its records.
    owner: String,
}

#[derive(Serialize, Deserialize)]
struct LeaseFile {
    node: String,
    prefix: String,
    lease: i64,
}

/// Why the memory could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("the system random number generator failed")]
    Random,
}

impl Memory {
    /// Loads the node secret from `dir`, making one the first time.
    pub fn load_or_create(dir: &Path) -> Result<Self, MemoryError> {
        let path = dir.join(SECRET_FILE);
        let secret = match read_regular_file(&path, 1024) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes).trim().to_owned();
                hex::decode(&text)
                    .ok()
                    .filter(|s| s.len() == 32)
                    .ok_or_else(|| MemoryError::Corrupt {
                        path: path.clone(),
                        why: "not 64 hex digits".into(),
                    })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = vec![0u8; 32];
                SystemRandom::new()
                    .fill(&mut secret)
                    .map_err(|_| MemoryError::Random)?;
                write_atomic(&path, hex::encode(&secret).as_bytes())?;
                secret
            }
            Err(e) => {
                return Err(MemoryError::Corrupt {
                    path,
                    why: e.to_string(),
                })
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            owner: hex::encode(digest::digest(&digest::SHA256, &secret)),
        })
    }

    /// The `owner` of this node's records.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The lease the last session of `node` under `prefix` held, if any.
    pub fn previous_lease(&self, node: &str, prefix: &str) -> Option<i64> {
        let bytes = read_regular_file(&self.dir.join(LEASE_FILE), 4096).ok()?;
        let file: LeaseFile = serde_json::from_slice(&bytes).ok()?;
        (file.node == node && file.prefix == prefix && file.lease != 0).then_some(file.lease)
    }

    /// Remembers `lease` as the one `node` holds now (durably: a crash
    /// right after must find it).
    pub fn remember(&self, node: &str, prefix: &str, lease: i64) -> Result<(), StoreError> {
        let file = LeaseFile {
            node: node.to_owned(),
            prefix: prefix.to_owned(),
            lease,
        };
        let bytes = serde_json::to_vec(&file).unwrap_or_default();
        write_atomic(&self.dir.join(LEASE_FILE), &bytes)
    }
}

/// The `owner` a node record names, if any.
pub fn owner_of(record: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(record).ok()?;
    v.get("owner")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_and_the_lease_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = Memory::load_or_create(dir.path()).unwrap();
        assert_eq!(first.owner().len(), 64);
        assert_eq!(first.previous_lease("n1", "/p/"), None);
        first.remember("n1", "/p/", 0x1234).unwrap();
        let again = Memory::load_or_create(dir.path()).unwrap();
        assert_eq!(again.owner(), first.owner());
        assert_eq!(again.previous_lease("n1", "/p/"), Some(0x1234));
        // Another name or prefix is not this lease's.
        assert_eq!(again.previous_lease("n2", "/p/"), None);
        assert_eq!(again.previous_lease("n1", "/q/"), None);
        // Another state directory is another node.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            Memory::load_or_create(other.path()).unwrap().owner(),
            first.owner()
        );
        assert_eq!(owner_of(br#"{"owner":"ab"}"#).as_deref(), Some("ab"));
        assert_eq!(owner_of(b"{}"), None);
    }
}
