//! The node's X.509 CA (SPEC §9): an ECDSA P-256 key (PKCS#8, 0600) and a
//! self-signed CA certificate for `spiffe://TRUST_DOMAIN` in the state
//! directory, and the X509-SVIDs it signs.
//!
//! The CA certificate is valid for a year. Within a month of its end it is
//! renewed with the same key and subject, so every SVID it signed still
//! verifies against the new certificate (and the old one, while it lasts).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use parking_lot::RwLock;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use crate::store;

const KEY_FILE: &str = "x509-ca.pk8";
const CERT_FILE: &str = "x509-ca.der";

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
    #[error("the X.509 CA in {dir} is for {found}, not {wanted}: move {key} and {cert} away to make a new one")]
    OtherTrustDomain {
        dir: PathBuf,
        found: String,
        wanted: String,
        key: &'static str,
        cert: &'static str,
    },
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// One CA certificate, and what signing under it needs.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// The node's X.509 CA. Certificates it made this run, oldest first, are
/// all in the bundle: they share one key and subject.
pub struct X509Authority {
    trust_domain: String,
    dir: Option<PathBuf>,
    key_der: Vec<u8>,
    current: RwLock<Arc<Ca>>,
    /// Earlier certificates of the same key, still valid (for the bundle).
    earlier: RwLock<Vec<Vec<u8>>>,
    rng: SystemRandom,
}

impl X509Authority {
    /// Loads the CA from `state_dir`, or makes one (a new key and a
    /// self-signed certificate) when there is none.
    pub fn load_or_create(state_dir: &Path, trust_domain: &str) -> Result<Self, AuthorityError> {
        store::ensure_private_dir(state_dir)?;
        let (key_path, cert_path) = (state_dir.join(KEY_FILE), state_dir.join(CERT_FILE));
        let read = |path: &Path| match store::read_regular_file(path, 64 * 1024) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(store::StoreError {
                path: path.to_path_buf(),
                source,
            }),
        };
        let now = OffsetDateTime::now_utc();
        match (read(&key_path)?, read(&cert_path)?) {
            (Some(key_der), Some(cert_der)) => {
                let corrupt = |path: &Path, reason: String| AuthorityError::Corrupt {
                    path: path.to_path_buf(),
                    reason,
                };
                let key = KeyPair::try_from(key_der.as_slice())
                    .map_err(|e| corrupt(&key_path, e.to_string()))?;
                let (found, not_before, not_after) =
                    ca_facts(&cert_der).map_err(|reason| corrupt(&cert_path, reason))?;
                let wanted = format!("spiffe://{trust_domain}");
                if found != wanted {
                    return Err(AuthorityError::OtherTrustDomain {
                        dir: state_dir.to_path_buf(),
                        found,
                        wanted,
                        key: KEY_FILE,
                        cert: CERT_FILE,
                    });
                }
                let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
                    .map_err(|e| corrupt(&cert_path, e.to_string()))?;
                let authority = Self::with(
                    trust_domain,
                    Some(state_dir),
                    key_der,
                    Ca {
                        issuer,
                        der: cert_der,
                        not_before,
                        not_after,
                    },
                );
                authority.renew_if_due(now)?;
                Ok(authority)
            }
            (None, None) => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                let key_der = key.serialize_der();
                let ca = make_ca(trust_domain, key, now)?;
                store::write_atomic(&key_path, &key_der)?;
                store::write_atomic(&cert_path, &ca.der)?;
                Ok(Self::with(trust_domain, Some(state_dir), key_der, ca))
            }
            (Some(_), None) => Err(AuthorityError::Corrupt {
                path: cert_path,
                reason: format!("missing while {KEY_FILE} is there"),
            }),
            (None, Some(_)) => Err(AuthorityError::Corrupt {
                path: key_path,
                reason: format!("missing while {CERT_FILE} is there"),
            }),
        }
    }

    /// A CA with no files (tests, benchmarks).
    pub fn ephemeral(trust_domain: &str) -> Result<Self, AuthorityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let key_der = key.serialize_der();
        let ca = make_ca(trust_domain, key, OffsetDateTime::now_utc())?;
        Ok(Self::with(trust_domain, None, key_der, ca))
    }

    fn with(trust_domain: &str, dir: Option<&Path>, key_der: Vec<u8>, ca: Ca) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            dir: dir.map(Path::to_path_buf),
            key_der,
            current: RwLock::new(Arc::new(ca)),
            earlier: RwLock::default(),
            rng: SystemRandom::new(),
        }
    }

    /// Renews the CA certificate (same key, same subject) when it ends
    /// within [`RENEW_BEFORE`].
    fn renew_if_due(&self, now: OffsetDateTime) -> Result<(), AuthorityError> {
        if self.current.read().not_after - now > RENEW_BEFORE {
            return Ok(());
        }
        let mut current = self.current.write();
        if current.not_after - now > RENEW_BEFORE {
            return Ok(());
        }
        let key = KeyPair::try_from(self.key_der.as_slice())?;
        let renewed = make_ca(&self.trust_domain, key, now)?;
        if let Some(dir) = &self.dir {
            store::write_atomic(&dir.join(CERT_FILE), &renewed.der)?;
        }
        tracing::info!(trust_domain = %self.trust_domain, "X.509 CA certificate renewed (same key)");
        let old = std::mem::replace(&mut *current, Arc::new(renewed));
        if old.not_after > now {
            self.earlier.write().push(old.der.clone());
        }
        Ok(())
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

    /// Every CA certificate a pod should trust for this node, DER.
    pub fn authorities(&self) -> Vec<Vec<u8>> {
        let mut all = self.earlier.read().clone();
        all.push(self.ca_der());
        all
    }

    /// The CA's public key as an uncompressed P-256 point.
    pub fn public_point(&self) -> Vec<u8> {
        KeyPair::try_from(self.key_der.as_slice())
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
    Ok(Ca {
        issuer: Issuer::new(params, key),
        der,
        not_before,
        not_after,
    })
}

/// A CA certificate's URI SAN and validity.
fn ca_facts(der: &[u8]) -> Result<(String, OffsetDateTime, OffsetDateTime), String> {
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
            &std::fs::metadata(dir.path().join(KEY_FILE))
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
        std::fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        let half = X509Authority::load_or_create(dir.path(), "rkt.local");
        assert!(matches!(half, Err(AuthorityError::Corrupt { .. })));
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
        assert_eq!(ca.authorities(), vec![before, ca.ca_der()]);
        let renewed_der = ca.ca_der();
        let (_, renewed) = parse_x509_certificate(&renewed_der).unwrap();
        let (_, cert) = parse_x509_certificate(&svid).unwrap();
        cert.verify_signature(Some(renewed.public_key())).unwrap();
        assert_eq!(cert.issuer(), renewed.subject());
    }
}
