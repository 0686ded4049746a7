//! The keys that sign identity documents: ECDSA P-256 (ring), each kept as
//! PKCS#8 in its own 0600 file of the state directory, listed in an index
//! that says when each was made and retired. The newest signs; a retired
//! key stays in the JWK Set as long as a document it signed can be valid.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use parking_lot::RwLock;
use ring::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use serde::{Deserialize, Serialize};

use super::jwk::{Jwk, JwkSet};
use crate::store;

/// The longest a document can be valid (`--jwt-ttl` at most).
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// How long a retired key is still published: the longest TTL, plus the
/// clock skew verifiers allow, plus a margin.
const PUBLISHED_AFTER_RETIREMENT: Duration = Duration::from_secs(3600 + 60 + 240);

const INDEX: &str = "jwt-keys.json";

#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot make an ECDSA key: {0}")]
    Crypto(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct IndexEntry {
    kid: String,
    created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Index {
    keys: Vec<IndexEntry>,
}

struct Key {
    entry: IndexEntry,
    pair: Arc<EcdsaKeyPair>,
    jwk: Jwk,
}

/// Public facts about one key (never the key itself).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct JwtKeyInfo {
    pub kid: String,
    pub created: u64,
    pub retired: Option<u64>,
    /// Signs now.
    pub active: bool,
}

/// The signing keys, oldest first; the last one signs.
pub struct JwtKeyring {
    dir: Option<PathBuf>,
    rng: SystemRandom,
    keys: RwLock<Vec<Key>>,
}

impl JwtKeyring {
    /// Loads the keys from `state_dir` (created 0700), making a first one
    /// when there is none.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, JwtKeyError> {
        store::ensure_private_dir(state_dir)?;
        let ring = Self {
            dir: Some(state_dir.to_path_buf()),
            rng: SystemRandom::new(),
            keys: RwLock::new(Vec::new()),
        };
        let index = state_dir.join(INDEX);
        let corrupt = |reason: String| JwtKeyError::Corrupt {
            path: index.clone(),
            reason,
        };
        match store::read_regular_file(&index, 1 << 20) {
            Ok(bytes) => {
                let parsed: Index =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                let mut keys = Vec::new();
                for entry in parsed.keys {
                    keys.push(ring.load_key(entry)?);
                }
                if keys.is_empty() {
                    return Err(corrupt("the index lists no key".into()));
                }
                *ring.keys.write() = keys;
                ring.prune(super::now())?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ring.rotate(super::now())?;
            }
            Err(source) => {
                return Err(store::StoreError {
                    path: index,
                    source,
                }
                .into())
            }
        }
        Ok(ring)
    }

    /// A keyring with one fresh key and no files (tests, benchmarks).
    pub fn ephemeral() -> Result<Self, JwtKeyError> {
        let ring = Self {
            dir: None,
            rng: SystemRandom::new(),
            keys: RwLock::new(Vec::new()),
        };
        ring.rotate(super::now())?;
        Ok(ring)
    }

    fn key_file(dir: &Path, kid: &str) -> PathBuf {
        dir.join(format!("jwt-{kid}.pk8"))
    }

    fn load_key(&self, entry: IndexEntry) -> Result<Key, JwtKeyError> {
        let Some(dir) = &self.dir else {
            return Err(JwtKeyError::Crypto("no state directory".into()));
        };
        let path = Self::key_file(dir, &entry.kid);
        let pkcs8 = store::read_regular_file(&path, 4096).map_err(|e| JwtKeyError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let key = self
            .key(entry, &pkcs8)
            .map_err(|reason| JwtKeyError::Corrupt {
                path: path.clone(),
                reason,
            })?;
        Ok(key)
    }

    fn key(&self, entry: IndexEntry, pkcs8: &[u8]) -> Result<Key, String> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &self.rng)
            .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))?;
        let jwk = Jwk::p256(pair.public_key().as_ref())
            .ok_or_else(|| "not an uncompressed P-256 public key".to_string())?;
        if jwk.kid != entry.kid {
            return Err(format!(
                "the key's thumbprint is {}, not {}",
                jwk.kid, entry.kid
            ));
        }
        Ok(Key {
            entry,
            pair: Arc::new(pair),
            jwk,
        })
    }

    /// Makes a new key that signs from now on; the previous one is retired
    /// (still published for [`MAX_TTL`] and some). Durable before it
    /// returns. Returns the new key's id.
    pub fn rotate(&self, now: u64) -> Result<String, JwtKeyError> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.rng)
            .map_err(|e| JwtKeyError::Crypto(e.to_string()))?;
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &self.rng)
                .map_err(|e| JwtKeyError::Crypto(e.to_string()))?;
        let jwk = Jwk::p256(pair.public_key().as_ref())
            .ok_or_else(|| JwtKeyError::Crypto("unexpected public key form".into()))?;
        let kid = jwk.kid.clone();
        let mut keys = self.keys.write();
        if let Some(dir) = &self.dir {
            // The key first, then the index that names it: a crash in
            // between leaves an unlisted file, never a listed missing one.
            store::write_atomic(&Self::key_file(dir, &kid), pkcs8.as_ref())?;
        }
        for k in keys.iter_mut() {
            k.entry.retired.get_or_insert(now);
        }
        keys.push(Key {
            entry: IndexEntry {
                kid: kid.clone(),
                created: now,
                retired: None,
            },
            pair: Arc::new(pair),
            jwk,
        });
        let removed = drop_expired(&mut keys, now);
        self.write_index(&keys)?;
        self.remove_files(&removed);
        Ok(kid)
    }

    /// Forgets retired keys that no valid document can name any more.
    fn prune(&self, now: u64) -> Result<(), JwtKeyError> {
        let mut keys = self.keys.write();
        let removed = drop_expired(&mut keys, now);
        if !removed.is_empty() {
            self.write_index(&keys)?;
            self.remove_files(&removed);
        }
        Ok(())
    }

    fn write_index(&self, keys: &[Key]) -> Result<(), JwtKeyError> {
        if let Some(dir) = &self.dir {
            let index = Index {
                keys: keys.iter().map(|k| k.entry.clone()).collect(),
            };
            let bytes = serde_json::to_vec_pretty(&index).unwrap_or_default();
            store::write_atomic(&dir.join(INDEX), &bytes)?;
        }
        Ok(())
    }

    fn remove_files(&self, kids: &[String]) {
        if let Some(dir) = &self.dir {
            for kid in kids {
                if let Err(e) = store::remove_durable(&Self::key_file(dir, kid)) {
                    tracing::warn!(kid, error = %e, "cannot remove a retired signing key");
                }
            }
        }
    }

    /// The signing key: its id and the key pair.
    pub(super) fn signer(&self) -> Option<(String, Arc<EcdsaKeyPair>)> {
        let keys = self.keys.read();
        let active = keys.last()?;
        Some((active.jwk.kid.clone(), active.pair.clone()))
    }

    pub(super) fn rng(&self) -> &SystemRandom {
        &self.rng
    }

    /// The public keys to publish at `now`: the signing one and those
    /// retired recently enough that a document they signed may be valid.
    pub fn jwk_set(&self, now: u64) -> JwkSet {
        JwkSet {
            keys: self
                .keys
                .read()
                .iter()
                .filter(|k| published(&k.entry, now))
                .map(|k| k.jwk.clone())
                .collect(),
        }
    }

    /// Every kept key, oldest first.
    pub fn list(&self) -> Vec<JwtKeyInfo> {
        let keys = self.keys.read();
        let last = keys.len().saturating_sub(1);
        keys.iter()
            .enumerate()
            .map(|(i, k)| JwtKeyInfo {
                kid: k.entry.kid.clone(),
                created: k.entry.created,
                retired: k.entry.retired,
                active: i == last,
            })
            .collect()
    }
}

fn published(entry: &IndexEntry, now: u64) -> bool {
    entry
        .retired
        .is_none_or(|r| now < r.saturating_add(PUBLISHED_AFTER_RETIREMENT.as_secs()))
}

/// Drops retired keys no longer published; returns their ids.
fn drop_expired(keys: &mut Vec<Key>, now: u64) -> Vec<String> {
    let mut removed = Vec::new();
    keys.retain(|k| {
        let keep = published(&k.entry, now);
        if !keep {
            removed.push(k.entry.kid.clone());
        }
        keep
    });
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_persist_rotate_and_retire_after_the_longest_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let ring = JwtKeyring::load_or_create(&state).unwrap();
        let first = ring.list()[0].kid.clone();
        let file = JwtKeyring::key_file(&state, &first);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // PKCS#8 DER on disk.
        assert_eq!(std::fs::read(&file).unwrap()[0], 0x30);
        // A restart: the same key.
        let again = JwtKeyring::load_or_create(&state).unwrap();
        assert_eq!(again.list()[0].kid, first);
        // Rotation: the new one signs, the old one is still published.
        let t = super::super::now();
        let second = again.rotate(t).unwrap();
        assert_ne!(second, first);
        assert_eq!(again.signer().unwrap().0, second);
        let kids = |r: &JwtKeyring, at| {
            r.jwk_set(at)
                .keys
                .into_iter()
                .map(|k| k.kid)
                .collect::<Vec<_>>()
        };
        assert_eq!(kids(&again, t), vec![first.clone(), second.clone()]);
        assert_eq!(kids(&again, t + 3600), vec![first.clone(), second.clone()]);
        // Past the longest TTL (and the leeway), only the signing key.
        let later = t + PUBLISHED_AFTER_RETIREMENT.as_secs();
        assert_eq!(kids(&again, later), vec![second.clone()]);
        // A rotation then forgets it, file included.
        let third = again.rotate(later).unwrap();
        assert_eq!(
            again
                .list()
                .iter()
                .map(|k| k.kid.clone())
                .collect::<Vec<_>>(),
            vec![second, third]
        );
        assert!(!file.exists());
    }

    #[test]
    fn a_key_file_that_is_not_its_kid_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ring = JwtKeyring::load_or_create(dir.path()).unwrap();
        let kid = ring.list()[0].kid.clone();
        let other = JwtKeyring::ephemeral().unwrap();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &other.rng).unwrap();
        std::fs::write(JwtKeyring::key_file(dir.path(), &kid), pkcs8.as_ref()).unwrap();
        assert!(matches!(
            JwtKeyring::load_or_create(dir.path()),
            Err(JwtKeyError::Corrupt { .. })
        ));
    }
}
