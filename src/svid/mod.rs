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
}

impl Svids {
    /// This node's SPIFFE bundle, as JSON: its X.509 authorities and the
    /// JWT keys of `docs`.
    pub fn bundle_json(&self, docs: &IdentityDocs) -> Vec<u8> {
        let now = crate::jwt::now();
        let jwt = docs.keys.jwk_set(now);
        // Grows with every new key of either kind (a rotation, a renewal).
        let sequence = docs
            .keys
            .list()
            .iter()
            .map(|k| k.created)
            .chain(std::iter::once(self.authority.issued_at()))
            .max()
            .unwrap_or(0);
        serde_json::to_vec(&bundle::spiffe_bundle(
            &self.authority.authorities(),
            &jwt,
            sequence,
        ))
        .unwrap_or_default()
    }
}
