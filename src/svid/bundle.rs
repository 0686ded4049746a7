//! The SPIFFE bundle of a trust domain (SPIFFE Trust Domain and Bundle,
//! §4): a JWK Set whose X.509 authorities are `x5c` keys with `use:
//! "x509-svid"` and whose JWT keys have `use: "jwt-svid"`, with
//! `spiffe_sequence` and `spiffe_refresh_hint`.

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine,
};
use serde_json::{json, Value};
use x509_parser::{prelude::parse_x509_certificate, public_key::PublicKey};

use crate::jwt::JwkSet;

/// How often a holder of the bundle should fetch it again, in seconds.
pub const REFRESH_HINT: u64 = 300;

/// The JWK of an X.509 authority (a CA certificate, DER): its public key
/// (EC P-256 or P-384, or RSA: an operator's root may be either) and the
/// certificate. `None` for a certificate that is none of these (logged by
/// the caller).
pub fn x509_jwk(der: &[u8]) -> Option<Value> {
    let (_, cert) = parse_x509_certificate(der).ok()?;
    let x5c = [STANDARD.encode(der)];
    match cert.public_key().parsed().ok()? {
        PublicKey::EC(point) => {
            let point = point.data();
            let (crv, n) = match point.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                _ => return None,
            };
            (point[0] == 0x04).then(|| {
                json!({
                    "use": "x509-svid",
                    "kty": "EC",
                    "crv": crv,
                    "x": URL_SAFE_NO_PAD.encode(&point[1..=n]),
                    "y": URL_SAFE_NO_PAD.encode(&point[1 + n..]),
                    "x5c": x5c,
                })
            })
        }
        PublicKey::RSA(rsa) => {
            let trim = |b: &[u8]| {
                let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                URL_SAFE_NO_PAD.encode(&b[start..])
            };
            Some(json!({
                "use": "x509-svid",
                "kty": "RSA",
                "n": trim(rsa.modulus),
                "e": trim(rsa.exponent),
                "x5c": x5c,
            }))
        }
        _ => None,
    }
}

/// The bundle of X.509 `authorities` (DER) and JWT keys `jwt`;
/// `sequence` grows whenever either changes.
pub fn spiffe_bundle(authorities: &[Vec<u8>], jwt: &JwkSet, sequence: u64) -> Value {
    let mut keys: Vec<Value> = Vec::new();
    for a in authorities {
        match x509_jwk(a) {
            Some(k) => keys.push(k),
            None => tracing::warn!(
                "an X.509 authority whose key is not EC P-256, P-384 or RSA is left out of the SPIFFE bundle"
            ),
        }
    }
    keys.extend(jwt.keys.iter().map(|k| {
        json!({
            "use": "jwt-svid",
            "kty": k.kty,
            "crv": k.crv,
            "x": k.x,
            "y": k.y,
            "kid": k.kid,
        })
    }));
    json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": REFRESH_HINT,
    })
}

/// The X.509 authorities of a bundle (DER), as the Workload API hands them
/// out: certificates one after another.
pub fn concatenated(authorities: &[Vec<u8>]) -> Vec<u8> {
    authorities.concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{jwt::JwtKeyring, svid::X509Authority};

    #[test]
    fn a_bundle_has_both_kinds_of_keys() {
        let ca = X509Authority::ephemeral("rkt.local").unwrap();
        let jwt = JwtKeyring::ephemeral().unwrap().jwk_set(crate::jwt::now());
        let b = spiffe_bundle(&ca.authorities(), &jwt, 7);
        let keys = b["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["use"], "x509-svid");
        let x5c = STANDARD
            .decode(keys[0]["x5c"][0].as_str().unwrap())
            .unwrap();
        assert_eq!(x5c, ca.ca_der());
        let point = ca.public_point();
        assert_eq!(
            keys[0]["x"].as_str().unwrap(),
            URL_SAFE_NO_PAD.encode(&point[1..33])
        );
        assert_eq!(keys[1]["use"], "jwt-svid");
        assert_eq!(keys[1]["kid"], jwt.keys[0].kid.as_str());
        assert_eq!(
            (
                b["spiffe_sequence"].as_u64(),
                b["spiffe_refresh_hint"].as_u64()
            ),
            (Some(7), Some(REFRESH_HINT))
        );
        assert!(x509_jwk(b"not a certificate").is_none());
    }

    #[test]
    fn an_operators_p384_root_is_a_p384_key() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let jwk = x509_jwk(&der).unwrap();
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str()),
            (Some("EC"), Some("P-384"))
        );
        let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        assert_eq!(x, key.public_key_raw()[1..49]);
    }
}
