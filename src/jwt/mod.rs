//! Identity documents (SPEC §7): short-lived, audience-bound ES256 JWTs
//! that follow SPIFFE JWT-SVID rules, signed with keys of their own (the
//! HMAC keyring of rkt's sign/verify is apart, in `keys`), and the JWK Set
//! that verifies them.

mod jwk;
mod signing_keys;
mod token;

pub use jwk::{thumbprint, Jwk, JwkSet};
pub use signing_keys::{JwtKeyError, JwtKeyInfo, JwtKeyring, MAX_TTL};
pub use token::{
    check_audience, is_spiffe_id, issue, verify, verify_with, Assurance, DocConfig, Expect,
    IssueError, LEEWAY_SECS, MAX_AUDIENCE,
};

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the agent issues documents with.
pub struct IdentityDocs {
    pub keys: JwtKeyring,
    pub config: DocConfig,
    /// `--jwks-file`: where the JWK Set is also written.
    pub jwks_file: Option<std::path::PathBuf>,
    /// `/.well-known/openid-configuration`: fixed for the agent's life;
    /// only for an `https://` issuer (an OIDC client fetches `jwks_uri`
    /// over HTTPS only).
    openid_configuration: Option<bytes::Bytes>,
}

impl IdentityDocs {
    pub fn new(keys: JwtKeyring, config: DocConfig, jwks_file: Option<std::path::PathBuf>) -> Self {
        let issuer = &config.issuer;
        let openid_configuration = issuer.starts_with("https://").then(|| {
            serde_json::to_vec(&serde_json::json!({
                "issuer": issuer,
                "jwks_uri": format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/')),
                "id_token_signing_alg_values_supported": ["ES256"],
                "subject_types_supported": ["public"],
                "response_types_supported": ["id_token"],
            }))
            .unwrap_or_default()
            .into()
        });
        Self {
            keys,
            config,
            jwks_file,
            openid_configuration,
        }
    }

    /// The JWK Set now, as JSON.
    pub fn jwks_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.keys.jwk_set(now())).unwrap_or_default()
    }

    /// Writes the JWK Set to `--jwks-file` (atomically), if one was given.
    pub fn write_jwks_file(&self) -> Result<(), crate::store::StoreError> {
        match &self.jwks_file {
            Some(path) => crate::store::write_public_atomic(path, &self.jwks_json()),
            None => Ok(()),
        }
    }

    /// `/.well-known/openid-configuration` (computed once), when the
    /// issuer is an `https://` URL.
    pub fn openid_configuration(&self) -> Option<bytes::Bytes> {
        self.openid_configuration.clone()
    }
}
