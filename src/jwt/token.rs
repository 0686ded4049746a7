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
    let mut signature: [u8; 64] = signature
        .as_ref()
        .try_into()
        .map_err(|_| IssueError::Crypto)?;
    // One encoding per token: S and n - S both verify, so S is lowered.
    low_s(&mut signature);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(token)
}

/// P-256's group order n, big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// Whether the S half of a fixed-width ES256 signature is above n / 2.
fn is_high_s(signature: &[u8; 64]) -> bool {
    // S > n/2  <=>  2S > n (n is odd).
    let s = &signature[32..];
    let mut doubled = [0u8; 33];
    let mut carry = 0u16;
    for i in (0..32).rev() {
        let v = u16::from(s[i]) * 2 + carry;
        doubled[i + 1] = v as u8;
        carry = v >> 8;
    }
    doubled[0] = carry as u8;
    let mut n = [0u8; 33];
    n[1..].copy_from_slice(&P256_N);
    doubled > n
}

/// Replaces a high S by n - S (the other valid signature of the same R).
fn low_s(signature: &mut [u8; 64]) {
    if !is_high_s(signature) {
        return;
    }
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let v = i16::from(P256_N[i]) - i16::from(signature[32 + i]) - borrow;
        signature[32 + i] = v.rem_euclid(256) as u8;
        borrow = i16::from(v < 0);
    }
}

/// What a verifier holds a document to beyond its signature and times.
#[derive(Clone, Debug, Default)]
pub struct Expect<'a> {
    /// The audience it must be for.
    pub audience: &'a str,
    /// Issuers accepted (`iss`); empty: any.
    pub issuers: &'a [String],
    /// The trust domain its `sub` must be in; `None`: any.
    pub trust_domain: Option<&'a str>,
}

/// Verifies `token` against `keys` for `audience` at `now`: ES256 only,
/// a known `kid`, a good signature, the audience, `exp`/`nbf` within the
/// leeway, a SPIFFE `sub`. Returns the claims, or the one-line reason.
pub fn verify(token: &str, keys: &JwkSet, audience: &str, now: u64) -> Result<Value, String> {
    verify_with(
        token,
        keys,
        &Expect {
            audience,
            ..Expect::default()
        },
        now,
    )
}

/// [`verify`], also holding `iss` and the `sub`'s trust domain to
/// `expect`, refusing what RFC 7515 says to refuse (`crit` naming
/// extensions we do not know: any), a high-S signature (a second encoding
/// of the same token), and a life (`exp - iat`) longer than an hour.
pub fn verify_with(
    token: &str,
    keys: &JwkSet,
    expect: &Expect<'_>,
    now: u64,
) -> Result<Value, String> {
    let audience = expect.audience;
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
    if header.get("crit").is_some() {
        return Err(
            "the header has crit: extensions this verifier does not know (RFC 7515 4.1.11)".into(),
        );
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
    let fixed: [u8; 64] = signature
        .as_slice()
        .try_into()
        .map_err(|_| "the signature is not 64 bytes (ES256, R and S)".to_string())?;
    if is_high_s(&fixed) {
        return Err("the signature's S is high: not the one encoding of this token".into());
    }
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
    let life = time("exp")?.saturating_sub(time("iat")?);
    if life > MAX_TTL.as_secs() {
        return Err(format!(
            "the token lives {life} s (exp - iat): more than {} s",
            MAX_TTL.as_secs()
        ));
    }
    let iss = claims["iss"].as_str().ok_or("iss is missing")?;
    if !expect.issuers.is_empty() && !expect.issuers.iter().any(|i| i == iss) {
        return Err(format!("iss {iss:?} is not an accepted issuer"));
    }
    let sub = match claims["sub"].as_str() {
        Some(sub) if is_spiffe_id(sub) => sub,
        Some(sub) => return Err(format!("sub {sub:?} is not a SPIFFE ID")),
        None => return Err("sub is missing".into()),
    };
    if let Some(td) = expect.trust_domain {
        let domain = sub
            .strip_prefix("spiffe://")
            .and_then(|r| r.split('/').next())
            .unwrap_or("");
        if domain != td {
            return Err(format!("sub {sub:?} is not in trust domain {td:?}"));
        }
    }
    Ok(claims)
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

    /// A token with `header` and `claims`, signed by `keys` (low S).
    fn signed(keys: &JwtKeyring, header: Value, claims: Value) -> String {
        let (_, pair) = keys.signer().unwrap();
        let mut t = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = pair.sign(keys.rng(), t.as_bytes()).unwrap();
        let mut sig: [u8; 64] = sig.as_ref().try_into().unwrap();
        low_s(&mut sig);
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(sig));
        t
    }

    #[test]
    fn held_to_the_letter_crit_high_s_life_issuer_and_trust_domain() {
        let (keys, cfg, pod) = setup();
        let set = keys.jwk_set(1000);
        let kid = set.keys[0].kid.clone();
        let t = issue(&keys, &cfg, &pod, None, Assurance::Verified, "db", 1000).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let claims = b64json(parts[1]);
        // Issued tokens are low-S, and the high-S twin is refused.
        for _ in 0..32 {
            let t = issue(&keys, &cfg, &pod, None, Assurance::Verified, "db", 1000).unwrap();
            let sig = URL_SAFE_NO_PAD
                .decode(t.rsplit('.').next().unwrap())
                .unwrap();
            assert!(!is_high_s(&sig.try_into().unwrap()));
        }
        let mut sig: [u8; 64] = URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap()
            .try_into()
            .unwrap();
        let mut n_minus_s = [0u8; 64];
        n_minus_s[..32].copy_from_slice(&sig[..32]);
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let v = i16::from(P256_N[i]) - i16::from(sig[32 + i]) - borrow;
            n_minus_s[32 + i] = v.rem_euclid(256) as u8;
            borrow = i16::from(v < 0);
        }
        sig = n_minus_s;
        let twin = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
        assert!(verify(&twin, &set, "db", 1000)
            .unwrap_err()
            .contains("high"));
        // crit: refused.
        let crit = signed(
            &keys,
            json!({"alg": "ES256", "kid": kid, "typ": "JWT", "crit": ["b64"], "b64": false}),
            claims.clone(),
        );
        assert!(verify(&crit, &set, "db", 1000)
            .unwrap_err()
            .contains("crit"));
        // A life over an hour, or no iat: refused.
        let mut long = claims.clone();
        long["exp"] = json!(1000 + 3601);
        let long = signed(&keys, json!({"alg": "ES256", "kid": kid}), long);
        assert!(verify(&long, &set, "db", 1000)
            .unwrap_err()
            .contains("more than 3600"));
        let mut no_iat = claims.clone();
        no_iat.as_object_mut().unwrap().remove("iat");
        let no_iat = signed(&keys, json!({"alg": "ES256", "kid": kid}), no_iat);
        assert!(verify(&no_iat, &set, "db", 1000)
            .unwrap_err()
            .contains("iat"));
        // The issuer and the trust domain, when the verifier names them.
        let issuers = ["spiffe://rkt.local".to_owned()];
        let strict = |issuers: &[String], td: Option<&str>| {
            verify_with(
                &t,
                &set,
                &Expect {
                    audience: "db",
                    issuers,
                    trust_domain: td,
                },
                1000,
            )
        };
        assert!(strict(&issuers, Some("rkt.local")).is_ok());
        assert!(strict(&["https://other.example.org".to_owned()], None)
            .unwrap_err()
            .contains("not an accepted issuer"));
        assert!(strict(&[], Some("example.org"))
            .unwrap_err()
            .contains("not in trust domain"));
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
