//! A pod's certificate signing request (PKCS#10, PEM): parsed and its
//! signature checked by x509-parser; only its public key is used (the
//! agent decides everything else an SVID says).

use rcgen::SubjectPublicKeyInfo;
use x509_parser::{
    certification_request::X509CertificationRequest, oid_registry, pem::parse_x509_pem,
    prelude::FromDer, public_key::PublicKey,
};

/// The largest CSR body accepted (SPEC §9: 413 beyond).
pub const MAX_CSR: usize = 16 * 1024;

/// Why a CSR is refused (each a 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("the body is not a PEM CERTIFICATE REQUEST")]
    NotPem,
    #[error("the CSR is not a valid PKCS#10 request")]
    Malformed,
    #[error("the CSR's signature does not verify")]
    Signature,
    #[error("unsupported key: {0} (P-256, P-384, Ed25519 or RSA of 2048 to 4096 bits with exponent 65537)")]
    Key(&'static str),
}

/// The public key a CSR asks to be certified, once its signature proves
/// that the requester holds the private key.
pub fn public_key(body: &[u8]) -> Result<SubjectPublicKeyInfo, CsrError> {
    let (rest, pem) = parse_x509_pem(body).map_err(|_| CsrError::NotPem)?;
    if !matches!(
        pem.label.as_str(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
    ) || !rest.iter().all(u8::is_ascii_whitespace)
    {
        return Err(CsrError::NotPem);
    }
    let (trailing, csr) =
        X509CertificationRequest::from_der(&pem.contents).map_err(|_| CsrError::Malformed)?;
    if !trailing.is_empty() {
        return Err(CsrError::Malformed);
    }
    // The key first: ring verifies no signature of a key it deems too
    // short, and "too short" is the answer that helps.
    let spki = &csr.certification_request_info.subject_pki;
    check_key(spki)?;
    csr.verify_signature().map_err(|_| CsrError::Signature)?;
    SubjectPublicKeyInfo::from_der(spki.raw).map_err(|_| CsrError::Key("not one rcgen encodes"))
}

fn check_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), CsrError> {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == oid_registry::OID_SIG_ED25519 {
        return Ok(());
    }
    match spki.parsed().map_err(|_| CsrError::Malformed)? {
        // Bounded both ways: a longer modulus or a larger exponent only
        // makes each signature check cost more (an 8192-bit key with a
        // 33-bit exponent takes 1.2 ms).
        PublicKey::RSA(rsa) if rsa.key_size() < 2048 => {
            Err(CsrError::Key("RSA shorter than 2048 bits"))
        }
        PublicKey::RSA(rsa) if rsa.key_size() > 4096 => {
            Err(CsrError::Key("RSA longer than 4096 bits"))
        }
        PublicKey::RSA(rsa) if rsa.try_exponent().ok() != Some(65537) => {
            Err(CsrError::Key("an RSA exponent other than 65537"))
        }
        PublicKey::RSA(_) => Ok(()),
        PublicKey::EC(_) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(c)
                    if c == oid_registry::OID_EC_P256 || c == oid_registry::OID_NIST_EC_P384 =>
                {
                    Ok(())
                }
                _ => Err(CsrError::Key("an elliptic curve other than P-256 or P-384")),
            }
        }
        _ => Err(CsrError::Key("not RSA, EC or Ed25519")),
    }
}

#[cfg(test)]
mod tests {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use rcgen::{CertificateParams, KeyPair, PublicKeyData};

    use super::*;

    fn pem_of(label: &str, der: &[u8]) -> String {
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            STANDARD.encode(der)
        )
    }

    fn csr_of(key: &KeyPair) -> String {
        CertificateParams::new(vec!["ignored.example".to_owned()])
            .unwrap()
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn the_key_of_a_signed_request_is_taken() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = KeyPair::generate_for(alg).unwrap();
            let spki = public_key(csr_of(&key).as_bytes()).unwrap();
            assert_eq!(spki.der_bytes(), key.der_bytes(), "{alg:?}");
        }
    }

    #[test]
    fn a_request_whose_signature_fails_is_refused() {
        let key = KeyPair::generate().unwrap();
        let pem = csr_of(&key);
        let (_, parsed) = parse_x509_pem(pem.as_bytes()).unwrap();
        let mut der = parsed.contents.clone();
        // The last byte is the signature's.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let bad = pem_of("CERTIFICATE REQUEST", &der);
        assert_eq!(public_key(bad.as_bytes()).unwrap_err(), CsrError::Signature);
    }

    #[test]
    fn not_a_request_is_refused() {
        assert_eq!(public_key(b"hello").unwrap_err(), CsrError::NotPem);
        let cert = pem_of("CERTIFICATE", &[0x30, 0x00]);
        assert_eq!(public_key(cert.as_bytes()).unwrap_err(), CsrError::NotPem);
        let junk = pem_of("CERTIFICATE REQUEST", &[0x30, 0x03, 1, 2, 3]);
        assert_eq!(
            public_key(junk.as_bytes()).unwrap_err(),
            CsrError::Malformed
        );
        let key = KeyPair::generate().unwrap();
        let two = format!("{}{}", csr_of(&key), csr_of(&key));
        assert_eq!(public_key(two.as_bytes()).unwrap_err(), CsrError::NotPem);
    }
}
