//! Public keys as JWKs (RFC 7517) and their RFC 7638 thumbprints.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde::{Deserialize, Serialize};

/// The uncompressed P-256 point ring hands out: `0x04 ‖ X ‖ Y`.
const POINT_LEN: usize = 65;

/// One public key of the set: an ECDSA P-256 key for ES256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
    pub kid: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
}

/// A JWK Set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

impl Jwk {
    /// The JWK of an uncompressed P-256 public key; `None` if `point` is
    /// not one.
    pub fn p256(point: &[u8]) -> Option<Self> {
        if point.len() != POINT_LEN || point[0] != 0x04 {
            return None;
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        let kid = thumbprint(&[("crv", "P-256"), ("kty", "EC"), ("x", &x), ("y", &y)]);
        Some(Self {
            kty: "EC".into(),
            crv: "P-256".into(),
            x,
            y,
            kid,
            use_: "sig".into(),
            alg: "ES256".into(),
        })
    }

    /// The uncompressed point back, for verification; `None` when the
    /// JWK is not an ES256 P-256 key.
    pub fn point(&self) -> Option<Vec<u8>> {
        if self.kty != "EC" || self.crv != "P-256" || self.alg != "ES256" {
            return None;
        }
        let x = URL_SAFE_NO_PAD.decode(&self.x).ok()?;
        let y = URL_SAFE_NO_PAD.decode(&self.y).ok()?;
        if x.len() != 32 || y.len() != 32 {
            return None;
        }
        let mut point = Vec::with_capacity(POINT_LEN);
        point.push(0x04);
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        Some(point)
    }
}

/// RFC 7638: base64url(SHA-256) of the JSON object of the key's required
/// members, in lexicographic order of their names, with no whitespace.
/// `members` must be sorted and hold only characters JSON needs no escape
/// for (key parameters are base64url and short names).
pub fn thumbprint(members: &[(&str, &str)]) -> String {
    let mut json = String::from("{");
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!("\"{name}\":\"{value}\""));
    }
    json.push('}');
    let digest = ring::digest::digest(&ring::digest::SHA256, json.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7638_example_thumbprint() {
        // RFC 7638 §3.1: the RSA key of the example, its required members.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let members = [("e", "AQAB"), ("kty", "RSA"), ("n", n)];
        assert_eq!(
            thumbprint(&members),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn a_p256_point_round_trips_and_others_are_refused() {
        let mut point = vec![0x04];
        point.extend((0..64).map(|i| i as u8));
        let jwk = Jwk::p256(&point).unwrap();
        assert_eq!(jwk.point().unwrap(), point);
        assert!(!jwk.x.contains('=') && !jwk.x.contains('+') && !jwk.x.contains('/'));
        assert_eq!(jwk.kid.len(), 43, "base64url of 32 bytes, no padding");
        assert!(Jwk::p256(&point[1..]).is_none());
        let mut wrong_curve = jwk.clone();
        wrong_curve.crv = "P-384".into();
        assert!(wrong_curve.point().is_none());
    }
}
