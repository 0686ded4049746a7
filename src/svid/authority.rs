//! The node's X.509 CA (SPEC §9): an ECDSA P-256 key and a self-signed CA
//! certificate for `spiffe://TRUST_DOMAIN`, kept in one 0600 file of the
//! state directory (`x509-ca.json`, written atomically: a crash never
//! leaves a key beside another key's certificate), and the X509-SVIDs it
//! signs.
//!
//! The CA certificate is valid for a year. Within a month of its end it is
//! renewed with the same key and subject, so every SVID it signed still
//! verifies against the new certificate. `rotate` makes a new key; the old
//! CA stays in the bundle for the longest SVID life, until every SVID it
//! signed has expired.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine};
use parking_lot::RwLock;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store;

const FILE: &str = "x509-ca.json";

/// A CA certificate's life, and how long before its end it is renewed.
const CA_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The longest an X509-SVID may live (`--x509-ttl` at most).
pub const MAX_SVID_TTL: Duration = Duration::from_secs(24 * 3600);

/// How far back an SVID's `notBefore` is set, for clocks behind ours.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the X.509 CA in {dir} is for {found}, not {wanted}: move {file} away to make a new one"
    )]
    OtherTrustDomain {
        dir: PathBuf,
        found: String,
        wanted: String,
        file: &'static str,
    },
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{what}: {reason}")]
    Operator { what: String, reason: String },
    #[error("the CA is the operator's (--x509-ca-cert): replace its files and restart the agent to change it")]
    OperatorOwned,
    #[error(
        "the X.509 CA expires at {0}: no SVID can be issued under it (replace --x509-ca-cert)"
    )]
    Expiring(OffsetDateTime),
}

/// `x509-ca.json`: the key (PKCS#8) and certificate, base64 DER, and the
/// retired CAs still in the bundle.
#[derive(Serialize, Deserialize)]
struct Stored {
    key: String,
    cert: String,
    #[serde(default)]
    retired: Vec<StoredRetired>,
}

#[derive(Clone, Serialize, Deserialize)]
struct StoredRetired {
    cert: String,
    /// Unix seconds: in the bundle until then.
    until: i64,
}

/// One CA: its key, its certificate, and what signing under it needs.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    key_der: Vec<u8>,
    der: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// A rotated-out CA certificate, in the bundle until `until`.
#[derive(Clone)]
struct Retired {
    der: Vec<u8>,
    until: OffsetDateTime,
}

/// The operator's intermediates (served after each SVID) and roots (the
/// bundle), DER.
type OperatorCa = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// The node's X.509 CA.
pub struct X509Authority {
    trust_domain: String,
    file: Option<PathBuf>,
    current: RwLock<Arc<Ca>>,
    retired: RwLock<Vec<Retired>>,
    /// With the operator's intermediate: it and any further intermediates
    /// (DER, served after each SVID), and the operator's roots (the
    /// bundle).
    operator: Option<OperatorCa>,
    rng: SystemRandom,
}

impl X509Authority {
    /// Loads the CA from `state_dir`, or makes one (a new key and a
    /// self-signed certificate) when there is none.
    pub fn load_or_create(state_dir: &Path, trust_domain: &str) -> Result<Self, AuthorityError> {
        store::ensure_private_dir(state_dir)?;
        let path = state_dir.join(FILE);
        let now = OffsetDateTime::now_utc();
        let bytes = match store::read_regular_file(&path, 1 << 20) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ca = make_ca(trust_domain, new_key()?, now)?;
                let authority = Self::with(trust_domain, Some(path), ca, Vec::new());
                authority.save()?;
                return Ok(authority);
            }
            Err(source) => return Err(store::StoreError { path, source }.into()),
        };
        let corrupt = |reason: String| AuthorityError::Corrupt {
            path: path.clone(),
            reason,
        };
        let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let decode = |b: &str| STANDARD.decode(b).map_err(|e| corrupt(e.to_string()));
        let (key_der, cert_der) = (decode(&stored.key)?, decode(&stored.cert)?);
        let key = KeyPair::try_from(key_der.as_slice()).map_err(|e| corrupt(e.to_string()))?;
        let (found, not_before, not_after, cert_key) = ca_facts(&cert_der).map_err(&corrupt)?;
        if cert_key != key.subject_public_key_info() {
            return Err(corrupt("the certificate is not the key's".into()));
        }
        let wanted = format!("spiffe://{trust_domain}");
        if found != wanted {
            return Err(AuthorityError::OtherTrustDomain {
                dir: state_dir.to_path_buf(),
                found,
                wanted,
                file: FILE,
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
            .map_err(|e| corrupt(e.to_string()))?;
        let mut retired = Vec::new();
        for r in stored.retired {
            let until =
                OffsetDateTime::from_unix_timestamp(r.until).map_err(|e| corrupt(e.to_string()))?;
            if until > now {
                retired.push(Retired {
                    der: decode(&r.cert)?,
                    until,
                });
            }
        }
        let ca = Ca {
            issuer,
            key_der,
            der: cert_der,
            not_before,
            not_after,
        };
        let authority = Self::with(trust_domain, Some(path), ca, retired);
        authority.renew_if_due(now)?;
        Ok(authority)
    }

    /// The operator's intermediate CA: its certificate (PEM, first the
    /// CA that signs, then any intermediates above it), its private key
    /// (PEM PKCS#8), and the trust domain's roots (PEM, the bundle). The
    /// certificate must be a CA and the key's; it is never renewed or
    /// rotated by the agent.
    pub fn from_operator(
        cert_pem: &[u8],
        key_pem: &[u8],
        bundle_pem: &[u8],
        trust_domain: &str,
    ) -> Result<Self, AuthorityError> {
        let err = |what: &str, reason: String| AuthorityError::Operator {
            what: what.to_owned(),
            reason,
        };
        let chain = pem_certificates(cert_pem).map_err(|r| err("--x509-ca-cert", r))?;
        let bundle = pem_certificates(bundle_pem).map_err(|r| err("--x509-bundle", r))?;
        let key_text = std::str::from_utf8(key_pem)
            .map_err(|_| err("--x509-ca-key", "not PEM text".into()))?;
        let key = KeyPair::from_pem(key_text).map_err(|e| err("--x509-ca-key", e.to_string()))?;
        let signing = &chain[0];
        let (_, cert) = x509_parser::parse_x509_certificate(signing)
            .map_err(|e| err("--x509-ca-cert", e.to_string()))?;
        if !cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|b| b.value.ca)
        {
            return Err(err(
                "--x509-ca-cert",
                "the first certificate is not a CA (basicConstraints CA:TRUE)".into(),
            ));
        }
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(err(
                "--x509-ca-key",
                "not the key of --x509-ca-cert's first certificate".into(),
            ));
        }
        let validity = cert.validity();
        let (not_before, not_after) = (
            validity.not_before.to_datetime(),
            validity.not_after.to_datetime(),
        );
        let key_der = key.serialize_der();
        let issuer = Issuer::from_ca_cert_der(&signing.as_slice().into(), key)
            .map_err(|e| err("--x509-ca-cert", e.to_string()))?;
        let ca = Ca {
            issuer,
            key_der,
            der: signing.clone(),
            not_before,
            not_after,
        };
        let mut authority = Self::with(trust_domain, None, ca, Vec::new());
        authority.operator = Some((chain, bundle));
        Ok(authority)
    }

    /// The certificates served after an SVID, DER: the operator's
    /// intermediates (none for the agent's own CA, which is the root).
    pub fn chain(&self) -> Vec<Vec<u8>> {
        self.operator
            .as_ref()
            .map(|(chain, _)| chain.clone())
            .unwrap_or_default()
    }

    /// A CA with no files (tests, benchmarks).
    pub fn ephemeral(trust_domain: &str) -> Result<Self, AuthorityError> {
        let ca = make_ca(trust_domain, new_key()?, OffsetDateTime::now_utc())?;
        Ok(Self::with(trust_domain, None, ca, Vec::new()))
    }

    fn with(trust_domain: &str, file: Option<PathBuf>, ca: Ca, retired: Vec<Retired>) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            file,
            current: RwLock::new(Arc::new(ca)),
            retired: RwLock::new(retired),
            operator: None,
            rng: SystemRandom::new(),
        }
    }

    /// Writes the CA and the retired ones, atomically, fsync'd.
    fn save(&self) -> Result<(), AuthorityError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let current = self.current.read().clone();
        let stored = Stored {
            key: STANDARD.encode(&current.key_der),
            cert: STANDARD.encode(&current.der),
            retired: self
                .retired
                .read()
                .iter()
                .map(|r| StoredRetired {
                    cert: STANDARD.encode(&r.der),
                    until: r.until.unix_timestamp(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&stored).unwrap_or_default();
        store::write_atomic(file, &bytes)?;
        Ok(())
    }

    /// Renews the CA certificate (same key, same subject) when it ends
    /// within [`RENEW_BEFORE`]: what the old one signed verifies against
    /// the new one.
    fn renew_if_due(&self, now: OffsetDateTime) -> Result<(), AuthorityError> {
        // The operator's CA is the operator's to renew.
        if self.operator.is_some() || self.current.read().not_after - now > RENEW_BEFORE {
            return Ok(());
        }
        {
            let mut current = self.current.write();
            if current.not_after - now > RENEW_BEFORE {
                return Ok(());
            }
            let key = KeyPair::try_from(current.key_der.as_slice())?;
            *current = Arc::new(make_ca(&self.trust_domain, key, now)?);
        }
        self.save()?;
        tracing::info!(trust_domain = %self.trust_domain, "X.509 CA certificate renewed (same key)");
        Ok(())
    }

    /// A new CA key and certificate; the old CA stays in the bundle for
    /// the longest SVID life. Returns the new certificate's SHA-256
    /// fingerprint (hex).
    pub fn rotate(&self) -> Result<String, AuthorityError> {
        if self.operator.is_some() {
            return Err(AuthorityError::OperatorOwned);
        }
        let now = OffsetDateTime::now_utc();
        let ca = make_ca(&self.trust_domain, new_key()?, now)?;
        let fingerprint = hex_sha256(&ca.der);
        {
            let mut current = self.current.write();
            let mut retired = self.retired.write();
            retired.retain(|r| r.until > now);
            retired.push(Retired {
                der: current.der.clone(),
                until: now + MAX_SVID_TTL + BACKDATE,
            });
            *current = Arc::new(ca);
        }
        self.save()?;
        Ok(fingerprint)
    }

    /// When the current CA certificate was made (Unix seconds).
    pub fn issued_at(&self) -> u64 {
        let not_before = self.current.read().not_before;
        u64::try_from((not_before + BACKDATE).unix_timestamp()).unwrap_or(0)
    }

    /// The current CA certificate (DER).
    pub fn ca_der(&self) -> Vec<u8> {
        self.current.read().der.clone()
    }

    /// Every CA certificate a pod should trust for this node, DER: the
    /// retired ones still in the bundle, then the current one.
    pub fn authorities(&self) -> Vec<Vec<u8>> {
        if let Some((_, bundle)) = &self.operator {
            return bundle.clone();
        }
        let now = OffsetDateTime::now_utc();
        let mut all: Vec<Vec<u8>> = self
            .retired
            .read()
            .iter()
            .filter(|r| r.until > now)
            .map(|r| r.der.clone())
            .collect();
        all.push(self.ca_der());
        all
    }

    /// The current CA's public key as an uncompressed P-256 point (what
    /// the tests compare the bundle's JWK with).
    #[cfg(test)]
    pub fn public_point(&self) -> Vec<u8> {
        KeyPair::try_from(self.current.read().key_der.as_slice())
            .map(|k| k.public_key_raw().to_vec())
            .unwrap_or_default()
    }

    /// An X509-SVID for `spiffe_id` and `public_key`, valid from a minute
    /// ago for `ttl` (at most [`MAX_SVID_TTL`], never past the CA's end):
    /// the certificate, DER.
    pub fn issue(
        &self,
        spiffe_id: &str,
        public_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<Vec<u8>, AuthorityError> {
        let now = OffsetDateTime::now_utc();
        self.renew_if_due(now)?;
        let ca = self.current.read().clone();
        // An SVID must live at least a few minutes (streams renew at half
        // life): an operator's CA about to end issues none.
        if ca.not_after - now < Duration::from_secs(300) {
            return Err(AuthorityError::Expiring(ca.not_after));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "rkt-mds");
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(self.serial());
        params.not_before = now - BACKDATE;
        params.not_after = (now + ttl.min(MAX_SVID_TTL)).min(ca.not_after);
        Ok(params.signed_by(public_key, &ca.issuer)?.der().to_vec())
    }

    /// 128 random bits, positive.
    fn serial(&self) -> SerialNumber {
        let mut bytes = [0u8; 16];
        // The system's random source does not fail on Linux; a zero serial
        // would still be a valid (if poor) one.
        let _ = self.rng.fill(&mut bytes);
        bytes[0] &= 0x7f;
        bytes[0] |= 0x01;
        SerialNumber::from_slice(&bytes)
    }
}

/// The certificates of a PEM file, DER, in order; at least one.
fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| e.to_string())?;
        if block.label == "CERTIFICATE" {
            block.parse_x509().map_err(|e| e.to_string())?;
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err("no PEM CERTIFICATE in it".into());
    }
    Ok(out)
}

fn new_key() -> Result<KeyPair, AuthorityError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

fn hex_sha256(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

fn make_ca(trust_domain: &str, key: KeyPair, now: OffsetDateTime) -> Result<Ca, AuthorityError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "rkt-mds");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("rkt-mds CA {trust_domain}"));
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_LIFETIME;
    let der = params.self_signed(&key)?.der().to_vec();
    let (not_before, not_after) = (params.not_before, params.not_after);
    let key_der = key.serialize_der();
    Ok(Ca {
        issuer: Issuer::new(params, key),
        key_der,
        der,
        not_before,
        not_after,
    })
}

/// A CA certificate's URI SAN, validity and public key (SPKI DER).
fn ca_facts(der: &[u8]) -> Result<(String, OffsetDateTime, OffsetDateTime, Vec<u8>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let uri = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
        })
        .ok_or("no URI SAN")?;
    let validity = cert.validity();
    Ok((
        uri,
        validity.not_before.to_datetime(),
        validity.not_after.to_datetime(),
        cert.public_key().raw.to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use x509_parser::{extensions::GeneralName, prelude::*};

    use super::*;

    #[test]
    fn an_svid_says_exactly_what_the_spec_says() {
        let ca = X509Authority::ephemeral("rkt.local").unwrap();
        let key = KeyPair::generate().unwrap();
        let id = "spiffe://rkt.local/rkt/node/n1/pod/de305d54-75b4-431b-adb2-eb6b9e546013";
        let der = ca.issue(id, &key, Duration::from_secs(3600)).unwrap();
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        let sans: Vec<_> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .clone();
        assert_eq!(sans, vec![GeneralName::URI(id)]);
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(life, 3600 + 60);
        assert_eq!(cert.raw_serial().len(), 16);
        // Signed by the CA.
        let ca_der = ca.ca_der();
        let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        let bc = ca_cert.basic_constraints().unwrap().unwrap().value;
        assert_eq!((bc.ca, bc.path_len_constraint), (true, Some(0)));
        // Never past a day.
        let der = ca.issue(id, &key, Duration::from_secs(7 * 86400)).unwrap();
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(life, 86400 + 60);
    }

    #[test]
    fn the_ca_is_kept_and_bound_to_its_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let first = X509Authority::load_or_create(dir.path(), "rkt.local").unwrap();
        let again = X509Authority::load_or_create(dir.path(), "rkt.local").unwrap();
        assert_eq!(first.ca_der(), again.ca_der());
        assert_eq!(first.public_point(), again.public_point());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let other = X509Authority::load_or_create(dir.path(), "example.org");
        assert!(
            matches!(other, Err(AuthorityError::OtherTrustDomain { .. })),
            "{:?}",
            other.err()
        );
        // A certificate that is not the key's (a crash between two files
        // could have made one): refused.
        let mut stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(FILE)).unwrap()).unwrap();
        let other = X509Authority::ephemeral("rkt.local").unwrap();
        stored["cert"] = STANDARD.encode(other.ca_der()).into();
        std::fs::write(dir.path().join(FILE), serde_json::to_vec(&stored).unwrap()).unwrap();
        let mixed = X509Authority::load_or_create(dir.path(), "rkt.local");
        assert!(
            matches!(mixed, Err(AuthorityError::Corrupt { .. })),
            "{:?}",
            mixed.err()
        );
    }

    #[test]
    fn a_renewed_ca_keeps_its_key_and_earlier_svids_verify() {
        let ca = X509Authority::ephemeral("rkt.local").unwrap();
        let key = KeyPair::generate().unwrap();
        let svid = ca
            .issue("spiffe://rkt.local/x", &key, Duration::from_secs(60))
            .unwrap();
        let before = ca.ca_der();
        ca.renew_if_due(OffsetDateTime::now_utc() + CA_LIFETIME - RENEW_BEFORE / 2)
            .unwrap();
        assert_ne!(ca.ca_der(), before);
        // The same key: only the new certificate is needed.
        assert_eq!(ca.authorities(), vec![ca.ca_der()]);
        let renewed_der = ca.ca_der();
        let (_, renewed) = parse_x509_certificate(&renewed_der).unwrap();
        let (_, cert) = parse_x509_certificate(&svid).unwrap();
        cert.verify_signature(Some(renewed.public_key())).unwrap();
        assert_eq!(cert.issuer(), renewed.subject());
    }

    #[test]
    fn a_rotated_ca_stays_in_the_bundle_and_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let ca = X509Authority::load_or_create(dir.path(), "rkt.local").unwrap();
        let old = ca.ca_der();
        let key = KeyPair::generate().unwrap();
        let before = ca
            .issue("spiffe://rkt.local/x", &key, Duration::from_secs(60))
            .unwrap();
        ca.rotate().unwrap();
        let new = ca.ca_der();
        assert_ne!(old, new);
        assert_eq!(ca.authorities(), vec![old.clone(), new.clone()]);
        let after = ca
            .issue("spiffe://rkt.local/x", &key, Duration::from_secs(60))
            .unwrap();
        let (_, after) = parse_x509_certificate(&after).unwrap();
        let (_, new_cert) = parse_x509_certificate(&new).unwrap();
        after.verify_signature(Some(new_cert.public_key())).unwrap();
        let (_, before) = parse_x509_certificate(&before).unwrap();
        assert!(before
            .verify_signature(Some(new_cert.public_key()))
            .is_err());
        drop(ca);
        let again = X509Authority::load_or_create(dir.path(), "rkt.local").unwrap();
        assert_eq!(again.authorities(), vec![old, new]);
    }
}
