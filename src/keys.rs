//! The HMAC keyring (SPEC §3.2): 64-byte keys from the OS CSPRNG, persisted
//! in the state directory; the newest signs, every kept key verifies.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use parking_lot::RwLock;

use base64::{engine::general_purpose::STANDARD, Engine};
use ring::{
    hmac,
    rand::{SecureRandom, SystemRandom},
};
use serde::{Deserialize, Serialize};

use crate::{appc::PodUuid, store};

/// Length of a key in bytes (SHA-512's block size).
pub const KEY_LEN: usize = 64;
const FILE: &str = "hmac-keys.json";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{path}: not a valid key file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the system random number generator failed")]
    Random,
}

struct Key {
    id: u32,
    created: u64,
    raw: [u8; KEY_LEN],
    hmac: hmac::Key,
}

impl Key {
    fn new(id: u32, created: u64, raw: [u8; KEY_LEN]) -> Self {
        Self {
            id,
            created,
            raw,
            hmac: hmac::Key::new(hmac::HMAC_SHA512, &raw),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    id: u32,
    created: u64,
    key: String,
}

/// Public facts about one key (never the key itself).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: u32,
    pub created: u64,
}

/// Keys, oldest first; the last one signs.
pub struct Keyring {
    file: Option<PathBuf>,
    retention: usize,
    keys: RwLock<Vec<Key>>,
}

impl Keyring {
    /// Loads the keyring from `state_dir`, creating the directory (0700)
    /// and a first key (file 0600) when there is none.
    pub fn load_or_create(state_dir: &Path, retention: usize) -> Result<Self, KeyError> {
        store::ensure_private_dir(state_dir)?;
        let path = state_dir.join(FILE);
        // Like every state file: a FIFO in its place cannot hang the start.
        let keys = match store::read_regular_file(&path, 1 << 20) {
            Ok(bytes) => parse(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(store::StoreError { path, source }.into()),
        };
        let ring = Self {
            file: Some(path),
            retention: retention.max(1),
            keys: RwLock::new(keys),
        };
        if ring.read().is_empty() {
            ring.rotate()?;
        }
        Ok(ring)
    }

    /// A keyring with one given key and no file, for tests and vectors.
    pub fn with_key(raw: [u8; KEY_LEN]) -> Self {
        Self {
            file: None,
            retention: usize::MAX,
            keys: RwLock::new(vec![Key::new(1, now(), raw)]),
        }
    }

    /// Adds a fresh key that signs from now on, drops keys beyond the
    /// retention, and persists before returning. Returns the new key's id.
    pub fn rotate(&self) -> Result<u32, KeyError> {
        let mut raw = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| KeyError::Random)?;
        let mut keys = self.keys.write();
        let id = keys.last().map_or(1, |k| k.id.wrapping_add(1));
        let mut next: Vec<Key> = keys
            .iter()
            .map(|k| Key::new(k.id, k.created, k.raw))
            .collect();
        next.push(Key::new(id, now(), raw));
        let excess = next.len().saturating_sub(self.retention);
        next.drain(..excess);
        // Persist first: a key that signs must survive a restart.
        if let Some(file) = &self.file {
            store::write_atomic(file, &serialize(&next))?;
        }
        *keys = next;
        Ok(id)
    }

    /// SPEC §3.2: base64(HMAC-SHA512(newest key, uuid bytes ‖ content)).
    pub fn sign(&self, uuid: &PodUuid, content: &[u8]) -> String {
        let keys = self.read();
        // `keys` is never empty: construction and rotation guarantee one.
        let key = &keys[keys.len() - 1];
        let mut ctx = hmac::Context::with_key(&key.hmac);
        ctx.update(uuid.as_bytes());
        ctx.update(content);
        STANDARD.encode(ctx.sign().as_ref())
    }

    /// Whether `signature` is the HMAC of (uuid, content) under any kept key,
    /// compared in constant time.
    pub fn verify(&self, uuid: &PodUuid, content: &[u8], signature: &[u8]) -> bool {
        let mut data = Vec::with_capacity(16 + content.len());
        data.extend_from_slice(uuid.as_bytes());
        data.extend_from_slice(content);
        self.read()
            .iter()
            .rev()
            .any(|k| hmac::verify(&k.hmac, &data, signature).is_ok())
    }

    /// The kept keys' ids and creation times, oldest first.
    pub fn list(&self) -> Vec<KeyInfo> {
        self.read()
            .iter()
            .map(|k| KeyInfo {
                id: k.id,
                created: k.created,
            })
            .collect()
    }

    fn read(&self) -> parking_lot::RwLockReadGuard<'_, Vec<Key>> {
        self.keys.read()
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Key>, KeyError> {
    let corrupt = |reason: String| KeyError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    file.keys
        .into_iter()
        .map(|k| {
            let raw: [u8; KEY_LEN] = STANDARD
                .decode(&k.key)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| corrupt(format!("key {} is not {KEY_LEN} base64 bytes", k.id)))?;
            Ok(Key::new(k.id, k.created, raw))
        })
        .collect()
}

fn serialize(keys: &[Key]) -> Vec<u8> {
    let file = KeyFile {
        keys: keys
            .iter()
            .map(|k| StoredKey {
                id: k.id,
                created: k.created,
                key: STANDARD.encode(k.raw),
            })
            .collect(),
    };
    serde_json::to_vec_pretty(&file).unwrap_or_default()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_fifo_in_place_of_the_key_file_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(FILE);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // A plain read would wait for a writer forever.
        let err = Keyring::load_or_create(dir.path(), 4)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[derive(Deserialize)]
    struct Vectors {
        vectors: Vec<Vector>,
    }
    #[derive(Deserialize)]
    struct Vector {
        key_hex: String,
        uuid: String,
        content: String,
        signature_base64: String,
    }

    fn hex(s: &str) -> [u8; KEY_LEN] {
        let mut key = [0u8; KEY_LEN];
        hex::decode_to_slice(s, &mut key).unwrap();
        key
    }

    #[test]
    fn every_shared_vector() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/hmac-vectors.json"
        );
        let v: Vectors = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(!v.vectors.is_empty());
        for t in &v.vectors {
            let ring = Keyring::with_key(hex(&t.key_hex));
            let uuid = PodUuid::parse(&t.uuid).unwrap();
            let sig = ring.sign(&uuid, t.content.as_bytes());
            assert_eq!(sig, t.signature_base64, "{} {:?}", t.uuid, t.content);
            assert_eq!(sig.len(), 88);
            let raw = STANDARD.decode(&sig).unwrap();
            assert!(ring.verify(&uuid, t.content.as_bytes(), &raw));
            assert!(!ring.verify(&uuid, b"other", &raw));
            assert!(!ring.verify(&uuid, t.content.as_bytes(), &raw[..63]));
        }
    }

    #[test]
    fn persisted_rotated_and_retained() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let uuid = PodUuid::parse("de305d54-75b4-431b-adb2-eb6b9e546013").unwrap();
        let ring = Keyring::load_or_create(&state, 2).unwrap();
        let first = STANDARD.decode(ring.sign(&uuid, b"x")).unwrap();
        let file = state.join(FILE);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // Restart: same key.
        let ring = Keyring::load_or_create(&state, 2).unwrap();
        assert!(ring.verify(&uuid, b"x", &first));
        // Rotate: old verifies, new signs differently.
        ring.rotate().unwrap();
        let second = STANDARD.decode(ring.sign(&uuid, b"x")).unwrap();
        assert_ne!(first, second);
        let ring = Keyring::load_or_create(&state, 2).unwrap();
        assert!(ring.verify(&uuid, b"x", &first));
        assert!(ring.verify(&uuid, b"x", &second));
        // Beyond retention, the oldest key is gone.
        ring.rotate().unwrap();
        assert_eq!(ring.list().len(), 2);
        assert!(!ring.verify(&uuid, b"x", &first));
        assert!(ring.verify(&uuid, b"x", &second));
    }

    #[test]
    fn corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{garbage").unwrap();
        assert!(matches!(
            Keyring::load_or_create(dir.path(), 3),
            Err(KeyError::Corrupt { .. })
        ));
    }
}
