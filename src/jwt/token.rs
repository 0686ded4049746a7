//! Identity documents: JWS compact ES256 tokens (RFC 7515/7519) with the
//! claims SPEC §7 names, following SPIFFE JWT-SVID rules; and their
//! verification, as any relying party (and `rkt-mds verify-token`) does.

use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ring::{
    rand::SecureRandom,
    signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED},
};
use serde_json::{json, Value};

use super::{
    jwk::JwkSet,
    signing_keys::{JwtKeyring, MAX_TTL},
};
use crate::appc::PodUuid;

/// Longest accepted `audience`.
pub const MAX_AUDIENCE: usize = 256;

/// Clock skew allowed on `exp` and `nbf` when verifying.
pub const LEEWAY_SECS: u64 = 60;

/// What documents say of who issued them, for whom, and for how long.
#[derive(Clone, Debug)]
pub struct DocConfig {
    pub trust_domain: String,
    pub node: String,
    pub issuer: String,
    pub ttl: Duration,
}

/// An issuer relying parties can use: an `https://` URL with a host and no
/// query, fragment, user info or white space, or `spiffe://TRUST_DOMAIN`.
fn is_issuer(issuer: &str) -> bool {
    if let Some(rest) = issuer.strip_prefix("https://") {
        let host = rest.split('/').next().unwrap_or("");
        let host_name =
            host.rsplit_once(':').map_or(
                host,
                |(h, port)| {
                    if port.parse::<u16>().is_ok() {
                        h
                    } else {
                        host
                    }
                },
            );
        return !host_name.is_empty()
            && !host.contains('@')
            && !issuer.contains(['?', '#'])
            && !issuer.chars().any(|c| c.is_whitespace() || c.is_control());
    }
    issuer
        .strip_prefix("spiffe://")
        .is_some_and(is_trust_domain)
}

impl DocConfig {
    /// Checks the pieces: a SPIFFE trust domain, a node name usable as a
    /// SPIFFE path segment, a TTL of at most an hour. The issuer defaults
    /// to `spiffe://TRUST_DOMAIN`.
    pub fn new(
        trust_domain: &str,
        node: &str,
        issuer: Option<&str>,
        ttl: Duration,
    ) -> Result<Self, String> {
        if !is_trust_domain(trust_domain) {
            return Err(format!(
                "--trust-domain {trust_domain:?}: a SPIFFE trust domain is lower-case letters, digits, '.', '-' and '_'"
            ));
        }
        if !is_segment(node) {
            return Err(format!(
                "--node-name {node:?}: must be letters, digits, '.', '-' or '_' (it is a SPIFFE path segment)"
            ));
        }
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(format!(
                "--jwt-ttl {}: must be more than 0 and at most 1h",
                crate::cli::format_duration(ttl)
            ));
        }
        let issuer = issuer.map_or_else(|| format!("spiffe://{trust_domain}"), str::to_owned);
        if !is_issuer(&issuer) {
            return Err(format!(
                "--jwt-issuer {issuer:?}: an https:// URL (https://host[:port][/path], no query or fragment; for OIDC discovery) or a spiffe:// trust domain"
            ));
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            node: node.to_owned(),
            issuer,
            ttl,
        })
    }

    /// `spiffe://TD/rkt/node/NODE/pod/UUID[/app/APP]`.
    pub fn subject(&self, pod: &PodUuid, app: Option<&str>) -> String {
        let mut sub = format!(
            "spiffe://{}/rkt/node/{}/pod/{pod}",
            self.trust_domain, self.node
        );
        if let Some(app) = app {
            sub += "/app/";
            sub += app;
        }
        sub
    }
}

/// How the requester's identity was established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assurance {
    /// The request came from the pod's own namespace instance.
    Verified,
    /// The pod has no namespace: the request came from the host.
    HostNetwork,
}

impl Assurance {
    fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::HostNetwork => "host-network",
        }
    }
}

/// Why an audience is refused (400).
pub fn check_audience(audience: Option<&str>) -> Result<&str, &'static str> {
    match audience {
        None => Err("audience is missing"),
        Some("") => Err("audience is empty"),
        Some(a) if a.len() > MAX_AUDIENCE => Err("audience is longer than 256 bytes"),
        Some(a) if a.chars().any(char::is_control) => Err("audience contains control characters"),
        Some(a) => Ok(a),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("no signing key")]
    NoKey,
    #[error("the random number generator or the signer failed")]
    Crypto,
}

/// A signed document for `pod` (and `app`) addressed to `audience`,
/// valid from `now` for the configured TTL.
pub fn issue(
    keys: &JwtKeyring,
    config: &DocConfig,
    pod: &PodUuid,
    app: Option<&str>,
    assurance: Assurance,
    audience: &str,
    now: u64,
) -> Result<String, IssueError> {
    let (kid, pair) = keys.signer().ok_or(IssueError::NoKey)?;
    let mut jti = [0u8; 16];
    keys.rng().fill(&mut jti).map_err(|_| IssueError::Crypto)?;
    let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
    let mut rkt = json!({"pod": pod.to_string()});
    if let Some(app) = app {
        rkt["app"] = json!(app);
    }
    rkt["node"] = json!(config.node);
    rkt["identity"] = json!(assurance.as_str());
    let claims = json!({
        "iss": config.issuer,
        "sub": config.subject(pod, app),
        "aud": [audience],
        "iat": now,
        "nbf": now,
        "exp": now + config.ttl.as_secs(),
        "jti": hex::encode(jti),
        "rkt": rkt,
    });
    let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = pair
        .sign(keys.rng(), token.as_bytes())
        .map_err(|_| IssueError::Crypto)?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
    Ok(token)
}

/// Verifies `token` against `keys` for `audience` at `now`: ES256 only,
/// a known `kid`, a good signature, the audience, `exp`/`nbf` within the
/// leeway, a SPIFFE `sub`. Returns the claims, or the one-line reason.
pub fn verify(token: &str, keys: &JwkSet, audience: &str, now: u64) -> Result<Value, String> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWS compact token (three base64url parts)".into());
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| format!("the {what} is not base64url"))
    };
    let header: Value = serde_json::from_slice(&decode(h, "header")?)
        .map_err(|_| "the header is not JSON".to_string())?;
    match header["alg"].as_str() {
        Some("ES256") => {}
        Some(alg) => return Err(format!("algorithm {alg:?} is refused: only ES256")),
        None => return Err("the header names no algorithm".into()),
    }
    let kid = header["kid"]
        .as_str()
        .ok_or("the header names no key (kid)")?;
    let jwk = keys
        .keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| format!("key {kid:?} is not in the key set"))?;
    let point = jwk
        .point()
        .ok_or_else(|| format!("key {kid:?} is not an ES256 P-256 key"))?;
    let signature = decode(s, "signature")?;
    let signed = &token.trim()[..h.len() + 1 + c.len()];
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| "the signature does not verify".to_string())?;
    let claims: Value = serde_json::from_slice(&decode(c, "claims")?)
        .map_err(|_| "the claims are not JSON".to_string())?;
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&audience) {
        return Err(format!("the audience is {audiences:?}, not {audience:?}"));
    }
    let time = |name: &str| {
        claims[name]
            .as_u64()
            .ok_or_else(|| format!("{name} is missing or not a time"))
    };
    if now >= time("exp")?.saturating_add(LEEWAY_SECS) {
        return Err("the token has expired".into());
    }
    if now.saturating_add(LEEWAY_SECS) < time("nbf")? {
        return Err("the token is not valid yet".into());
    }
    match claims["sub"].as_str() {
        Some(sub) if is_spiffe_id(sub) => Ok(claims),
        Some(sub) => Err(format!("sub {sub:?} is not a SPIFFE ID")),
        None => Err("sub is missing".into()),
    }
}

fn is_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// `spiffe://TRUST_DOMAIN/SEGMENT...` (SPIFFE ID rules).
pub fn is_spiffe_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
    is_trust_domain(td) && (path.is_empty() || path.split('/').all(is_segment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_https_urls_or_spiffe_trust_domains() {
        for good in [
            "https://issuer.example.org",
            "https://issuer.example.org:8443/rkt",
            "spiffe://example.org",
        ] {
            assert!(is_issuer(good), "{good}");
        }
        for bad in [
            "",
            "http://issuer.example.org",
            "https://",
            "https://:443/x",
            "https://a@issuer.example.org",
            "https://issuer.example.org/?q=1",
            "https://issuer.example.org/#f",
            "https://issuer.example.org/a b",
            "spiffe://Example.org",
            "issuer",
        ] {
            assert!(!is_issuer(bad), "{bad}");
        }
    }

    fn setup() -> (JwtKeyring, DocConfig, PodUuid) {
        (
            JwtKeyring::ephemeral().unwrap(),
            DocConfig::new("rkt.local", "node-1", None, Duration::from_secs(300)).unwrap(),
            PodUuid::parse("de305d54-75b4-431b-adb2-eb6b9e546013").unwrap(),
        )
    }

    fn b64json(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn header_and_claims_are_exactly_the_specs() {
        let (keys, cfg, pod) = setup();
        let t = issue(
            &keys,
            &cfg,
            &pod,
            Some("web"),
            Assurance::Verified,
            "db",
            1000,
        )
        .unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "no padding"
        );
        let kid = keys.list()[0].kid.clone();
        assert_eq!(
            b64json(parts[0]),
            json!({"alg": "ES256", "kid": kid, "typ": "JWT"})
        );
        let c = b64json(parts[1]);
        assert_eq!(c["iss"], "spiffe://rkt.local");
        assert_eq!(
            c["sub"],
            "spiffe://rkt.local/rkt/node/node-1/pod/de305d54-75b4-431b-adb2-eb6b9e546013/app/web"
        );
        assert_eq!(c["aud"], json!(["db"]));
        assert_eq!(
            (c["iat"].as_u64(), c["nbf"].as_u64(), c["exp"].as_u64()),
            (Some(1000), Some(1000), Some(1300))
        );
        assert_eq!(c["jti"].as_str().unwrap().len(), 32);
        assert_eq!(
            c["rkt"],
            json!({"pod": pod.to_string(), "app": "web", "node": "node-1", "identity": "verified"})
        );
        let keys_of = keys.jwk_set(1000);
        assert!(verify(&t, &keys_of, "db", 1000).is_ok());
        // The pod's own document has no app.
        let t = issue(&keys, &cfg, &pod, None, Assurance::HostNetwork, "db", 1000).unwrap();
        let c = verify(&t, &keys_of, "db", 1000).unwrap();
        assert!(c["rkt"].get("app").is_none());
        assert_eq!(c["rkt"]["identity"], "host-network");
        assert_eq!(
            c["sub"],
            format!("spiffe://rkt.local/rkt/node/node-1/pod/{pod}")
        );
    }

    #[test]
    fn verification_refuses_what_it_must() {
        let (keys, cfg, pod) = setup();
        let set = keys.jwk_set(1000);
        let t = issue(&keys, &cfg, &pod, None, Assurance::Verified, "db", 1000).unwrap();
        assert!(verify(&t, &set, "other", 1000)
            .unwrap_err()
            .contains("audience"));
        // exp 1300: fine within the leeway, refused after.
        assert!(verify(&t, &set, "db", 1359).is_ok());
        assert!(verify(&t, &set, "db", 1360)
            .unwrap_err()
            .contains("expired"));
        assert!(verify(&t, &set, "db", 939)
            .unwrap_err()
            .contains("not valid yet"));
        // Another key set.
        let other = JwtKeyring::ephemeral().unwrap().jwk_set(1000);
        assert!(verify(&t, &other, "db", 1000)
            .unwrap_err()
            .contains("not in the key set"));
        // A tampered claim.
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = b64json(parts[1]);
        c["sub"] = json!("spiffe://rkt.local/rkt/node/node-1/pod/other");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(c.to_string()),
            parts[2]
        );
        assert!(verify(&forged, &set, "db", 1000)
            .unwrap_err()
            .contains("signature"));
        // alg none, HS256, RS256: refused whatever the rest.
        for alg in ["none", "HS256", "RS256", "ES384"] {
            let h = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": set.keys[0].kid}).to_string());
            let t = format!("{h}.{}.{}", parts[1], parts[2]);
            let err = verify(&t, &set, "db", 1000).unwrap_err();
            assert!(err.contains("only ES256"), "{alg}: {err}");
        }
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert!(verify(&unsigned, &set, "db", 1000).is_err());
        // A key of the wrong curve under the right kid.
        let mut bent = set.clone();
        bent.keys[0].crv = "P-384".into();
        assert!(verify(&t, &bent, "db", 1000).is_err());
        assert!(verify("a.b", &set, "db", 1000).is_err());
    }

    #[test]
    fn audiences_and_ttls_and_names_are_checked() {
        assert!(check_audience(None).is_err());
        assert!(check_audience(Some("")).is_err());
        assert!(check_audience(Some(&"a".repeat(257))).is_err());
        assert!(check_audience(Some("a\nb")).is_err());
        assert_eq!(
            check_audience(Some(&"a".repeat(256))).map(str::len),
            Ok(256)
        );
        assert!(DocConfig::new("rkt.local", "n", None, Duration::from_secs(3601)).is_err());
        assert!(DocConfig::new("rkt.local", "n", None, Duration::ZERO).is_err());
        assert!(DocConfig::new("Rkt.Local", "n", None, Duration::from_secs(60)).is_err());
        assert!(DocConfig::new("rkt.local", "a/b", None, Duration::from_secs(60)).is_err());
        assert!(DocConfig::new("rkt.local", "..", None, Duration::from_secs(60)).is_err());
        let c = DocConfig::new(
            "rkt.local",
            "n",
            Some("https://issuer"),
            Duration::from_secs(60),
        );
        assert_eq!(c.unwrap().issuer, "https://issuer");
        assert!(is_spiffe_id("spiffe://td/a/b"));
        assert!(!is_spiffe_id("spiffe://td/a//b"));
        assert!(!is_spiffe_id("https://td/a"));
        assert!(!is_spiffe_id("spiffe://TD/a"));
    }
}
