//! X.509-SVIDs (SPEC §9): the node's CA, the CSRs pods send, and the
//! SPIFFE bundle that carries the trust domain's authorities.

pub mod authority;
pub mod bundle;
pub mod csr;

pub use authority::{AuthorityError, X509Authority, MAX_SVID_TTL};

/// `der` as one PEM block of `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::{engine::general_purpose::STANDARD, Engine};
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

use std::time::Duration;

use crate::jwt::IdentityDocs;

/// What the agent issues X509-SVIDs with.
pub struct Svids {
    pub authority: X509Authority,
    /// `--x509-ttl`.
    pub ttl: Duration,
    /// With `--etcd`: the other nodes' authorities and JWT keys, as last
    /// read from the cluster directory (the trust domain's bundle is every
    /// node's).
    pub cluster: parking_lot::RwLock<ClusterKeys>,
}

/// The trust domain's keys as the cluster directory lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterKeys {
    pub x509: Vec<Vec<u8>>,
    pub jwks: crate::jwt::JwkSet,
    /// When they last changed (Unix seconds).
    pub changed_at: u64,
}

impl Svids {
    pub fn new(authority: X509Authority, ttl: Duration) -> Self {
        Self {
            authority,
            ttl,
            cluster: parking_lot::RwLock::default(),
        }
    }

    /// The X.509 authorities a pod should trust: this node's, then the
    /// other nodes' of the trust domain (DER, each once).
    pub fn authorities(&self) -> Vec<Vec<u8>> {
        let mut all = self.authority.authorities();
        for a in &self.cluster.read().x509 {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        all
    }

    /// The JWT keys that verify the trust domain's JWT-SVIDs: this node's,
    /// then the other nodes' (each `kid` once).
    pub fn jwt_keys(&self, docs: &IdentityDocs) -> crate::jwt::JwkSet {
        let mut set = docs.keys.jwk_set(crate::jwt::now());
        for k in &self.cluster.read().jwks.keys {
            if !set.keys.iter().any(|o| o.kid == k.kid) {
                set.keys.push(k.clone());
            }
        }
        set
    }

    /// The trust domain's SPIFFE bundle, as JSON.
    pub fn bundle_json(&self, docs: &IdentityDocs) -> Vec<u8> {
        let jwt = self.jwt_keys(docs);
        // Grows with every new key of either kind (a rotation, a renewal).
        let sequence = docs
            .keys
            .list()
            .iter()
            .map(|k| k.created)
            .chain(std::iter::once(self.authority.issued_at()))
            .max()
            .unwrap_or(0);
        // Another node's keys count too: a new one makes a new bundle.
        let sequence = sequence.max(self.cluster_sequence());
        serde_json::to_vec(&bundle::spiffe_bundle(&self.authorities(), &jwt, sequence))
            .unwrap_or_default()
    }

    /// When the other nodes' keys last changed (Unix seconds; 0: none).
    fn cluster_sequence(&self) -> u64 {
        self.cluster.read().changed_at
    }

    /// Takes the other nodes' keys as the cluster directory lists them now
    /// (this node's own are left out); returns whether they changed.
    pub fn set_cluster(&self, x509: Vec<Vec<u8>>, jwks: crate::jwt::JwkSet) -> bool {
        let mut cluster = self.cluster.write();
        if cluster.x509 == x509 && cluster.jwks == jwks {
            return false;
        }
        *cluster = ClusterKeys {
            x509,
            jwks,
            changed_at: crate::jwt::now(),
        };
        true
    }
}
