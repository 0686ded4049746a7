//! Identity documents (SPEC §7): audience-bound ES256 JWTs issued to pods
//! from inside their namespaces, verified here by an independent
//! implementation (Python's PyJWT with `cryptography`, Debian's
//! python3-jwt), never by the agent's own code. Needs root; runs in CI.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use integration::{
    agent::binary,
    fixtures,
    http::{self, Conn, Request, Response},
    privilege::require_root,
    wait_for, Agent, AgentOptions, PodNet,
};
use serde_json::Value;

const T_A: &str = "aaaa56789abcdef0123456789abcdef0";
const T_B: &str = "bbbb56789abcdef0123456789abcdef0";
const T_H: &str = "hhhh56789abcdef0123456789abcdef0";
const U_A: &str = "aaaaaaaa-a507-4694-aabf-edbe4fc5266f";
const U_B: &str = "bbbbbbbb-a507-4694-aabf-edbe4fc5266f";
const U_H: &str = "0000000b-a507-4694-aabf-edbe4fc5266f";

/// PyJWT verifies `token` for `audience` against the JWK Set in `jwks`
/// (a file): the claims, or PyJWT's complaint.
const PYJWT: &str = r#"
import json, sys, jwt
jwks, token, audience = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
kid = jwt.get_unverified_header(token)["kid"]
key = next(k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == kid)
claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=audience, leeway=0)
print(json.dumps(claims))
"#;

fn pyjwt(jwks: &[u8], token: &str, audience: &str) -> Result<Value, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks).unwrap();
    // Debian's interpreter: python3-jwt lives there.
    let out = Command::new("/usr/bin/python3")
        .args(["-c", PYJWT])
        .arg(&file)
        .arg(token)
        .arg(audience)
        .output()
        .expect("run /usr/bin/python3 (python3-jwt)");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("PyJWT's claims"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn jwks(agent: &Agent) -> Vec<u8> {
    let r = agent.unix(&Request::get("/.well-known/jwks.json"));
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type(), "application/json");
    r.body
}

fn doc_path(token: &str, app: Option<&str>, query: &str) -> String {
    let base = if token.is_empty() {
        "/acMetadata/v1".to_owned()
    } else {
        format!("/{token}/acMetadata/v1")
    };
    match app {
        Some(app) => format!("{base}/apps/{app}/identity/jwt{query}"),
        None => format!("{base}/pod/identity/jwt{query}"),
    }
}

fn from_pod(agent: &Agent, pod: &PodNet, path: &str) -> Response {
    let s = pod
        .connect(None, SocketAddr::new(IpAddr::V4(pod.host_v4()), agent.port))
        .expect("connect from pod");
    Conn::new(s)
        .send(&Request::new("GET", path, None, &[("Metadata", "true")]))
        .expect("request from pod")
}

/// An identity request from the host (its loopback), as clients make it
/// (SPEC §9: `Metadata: true`).
fn get_doc(agent: &Agent, path: &str) -> Response {
    http::tcp(
        agent.loopback(),
        &Request::new("GET", path, None, &[("Metadata", "true")]),
    )
    .expect("request over loopback")
}

fn setup(mode: &'static str, extra: &[&str]) -> (Agent, PodNet, PodNet) {
    let mut options = AgentOptions::identity(mode)
        .arg("--node-name")
        .arg("node-1")
        .arg("--trust-domain")
        .arg("example.org");
    for a in extra {
        options = options.arg(*a);
    }
    let agent = Agent::start(options);
    let (a, b) = (PodNet::new(), PodNet::new());
    agent.register_fixture(
        U_A,
        T_A,
        &fixtures::WEB,
        &format!("&netns={}", a.netns_path()),
    );
    agent.register_fixture(
        U_B,
        T_B,
        &fixtures::WEB,
        &format!("&netns={}", b.netns_path()),
    );
    let r = agent.register(U_H, T_H, &fixtures::read("pods/bare-pod.json"), "");
    assert_eq!(r.status, 200);
    (agent, a, b)
}

#[test]
fn pods_get_documents_that_pyjwt_verifies() {
    if !require_root("pods_get_documents_that_pyjwt_verifies") {
        return;
    }
    for mode in ["token+netns", "netns"] {
        let (agent, a, b) = setup(mode, &[]);
        let keys = jwks(&agent);
        // The pod's own document, by token (and tokenless in netns mode).
        let tokens: &[&str] = if mode == "netns" { &[T_A, ""] } else { &[T_A] };
        for t in tokens {
            let r = from_pod(&agent, &a, &doc_path(t, None, "?audience=db.example.org"));
            assert_eq!(r.status, 200, "{mode}: {}", r.text());
            assert_eq!(r.content_type(), "application/jwt");
            assert!(!r.text().ends_with('\n'));
            let c = pyjwt(&keys, &r.text(), "db.example.org").expect("PyJWT verifies it");
            assert_eq!(c["iss"], "spiffe://example.org");
            assert_eq!(
                c["sub"],
                format!("spiffe://example.org/rkt/node/node-1/pod/{U_A}")
            );
            assert_eq!(c["aud"], serde_json::json!(["db.example.org"]));
            assert_eq!(c["rkt"]["identity"], "verified");
            assert_eq!(c["rkt"]["node"], "node-1");
            assert_eq!(
                c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
                300,
                "the default TTL is 5 min"
            );
            // Bound to its audience.
            let err = pyjwt(&keys, &r.text(), "other").unwrap_err();
            assert!(err.contains("InvalidAudience"), "{err}");
        }
        // An app's document.
        let r = from_pod(&agent, &a, &doc_path(T_A, Some("web"), "?audience=db"));
        assert_eq!(r.status, 200, "{}", r.text());
        let c = pyjwt(&keys, &r.text(), "db").unwrap();
        assert_eq!(
            c["sub"],
            format!("spiffe://example.org/rkt/node/node-1/pod/{U_A}/app/web")
        );
        assert_eq!(c["rkt"]["app"], "web");
        // Without `Metadata: true` (a forged request): 400.
        let forged = Conn::new(
            a.connect(None, SocketAddr::new(IpAddr::V4(a.host_v4()), agent.port))
                .unwrap(),
        )
        .send(&Request::get(&doc_path(T_A, None, "?audience=db")))
        .unwrap();
        assert_eq!(
            (forged.status, forged.text()),
            (400, "Metadata: true header is required".to_owned())
        );
        // The identity rules of every other endpoint.
        let stolen = from_pod(&agent, &b, &doc_path(T_A, None, "?audience=db"));
        assert_eq!(stolen.status, 403, "A's token from B");
        let r = from_pod(&agent, &a, &doc_path(T_A, Some("nope"), "?audience=db"));
        assert_eq!(r.status, 404);
        // A pod without a namespace: from the host only, and it says so.
        let r = get_doc(&agent, &doc_path(T_H, None, "?audience=db"));
        assert_eq!(r.status, 200, "{}", r.text());
        let c = pyjwt(&keys, &r.text(), "db").unwrap();
        assert_eq!(c["rkt"]["identity"], "host-network");
        let r = from_pod(&agent, &a, &doc_path(T_H, None, "?audience=db"));
        assert_eq!(r.status, 403);
        // Bad audiences.
        for q in [
            "",
            "?audience=",
            "?other=x",
            "?audience=a%0Ab",
            &format!("?audience={}", "a".repeat(257)),
            "?audience=db&audience=other",
        ] {
            let r = from_pod(&agent, &a, &doc_path(T_A, None, q));
            assert_eq!(r.status, 400, "{q}: {}", r.text());
        }
        let r = from_pod(
            &agent,
            &a,
            &doc_path(T_A, None, &format!("?audience={}", "a".repeat(256))),
        );
        assert_eq!(r.status, 200);
        // No document or key in the log.
        let log = agent.wait_log("the access lines", |l| l.contains("identity/jwt"));
        assert!(!log.contains("eyJ"), "a JWT reached the log");
    }
}

#[test]
fn a_pod_whose_namespace_is_gone_gets_no_document_and_token_mode_none() {
    if !require_root("a_pod_whose_namespace_is_gone_gets_no_document") {
        return;
    }
    let (agent, a, _b) = setup("token+netns", &[]);
    let mut a = a;
    a.delete_netns_only();
    wait_for("A's namespace to be gone", Duration::from_secs(5), || {
        (agent.pod_entry(U_A).unwrap()["state"] == "netns-gone").then_some(())
    });
    let r = get_doc(&agent, &doc_path(T_A, None, "?audience=db"));
    assert_eq!(r.status, 403);
    // rkt's token mode checks nothing but the token: no documents.
    let agent = Agent::start(AgentOptions::identity("token"));
    let r = agent.register(U_H, T_H, &fixtures::read("pods/bare-pod.json"), "");
    assert_eq!(r.status, 200);
    assert_eq!(
        get_doc(&agent, &doc_path(T_H, None, "?audience=db")).status,
        403
    );
}

#[test]
fn documents_expire_and_survive_rotations_and_restarts() {
    if !require_root("documents_expire_and_survive_rotations_and_restarts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    let (mut agent, a, _b) = setup(
        "token+netns",
        &["--jwt-ttl", "1s", "--jwks-file", file.to_str().unwrap()],
    );
    // The JWK Set, the same on the socket, the public port and the file.
    let on_socket: Value = serde_json::from_slice(&jwks(&agent)).unwrap();
    let public = agent.get("/.well-known/jwks.json");
    assert_eq!(public.status, 200);
    assert_eq!(public.json(), on_socket);
    let from_file: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(from_file, on_socket);
    let jwk = &on_socket["keys"][0];
    assert_eq!(
        (
            jwk["kty"].as_str(),
            jwk["crv"].as_str(),
            jwk["alg"].as_str(),
            jwk["use"].as_str()
        ),
        (Some("EC"), Some("P-256"), Some("ES256"), Some("sig"))
    );
    // A spiffe:// issuer has no OpenID discovery: no client could fetch
    // its jwks_uri.
    let oidc = agent.get("/.well-known/openid-configuration");
    assert_eq!(oidc.status, 404, "{}", oidc.text());
    assert!(oidc.text().contains("--jwt-issuer is not an https:// URL"));
    // An https:// issuer has, with a jwks_uri under it.
    let https = Agent::start(
        AgentOptions::identity("token")
            .arg("--jwt-issuer")
            .arg("https://issuer.example.org/rkt"),
    );
    let oidc = https.get("/.well-known/openid-configuration").json();
    assert_eq!(oidc["issuer"], "https://issuer.example.org/rkt");
    assert_eq!(
        oidc["jwks_uri"],
        "https://issuer.example.org/rkt/.well-known/jwks.json"
    );
    assert_eq!(
        oidc["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    drop(https);

    // A 1 s document: valid now, expired a moment later. Its times are
    // whole seconds, so it lives until the end of the second after the one
    // it was issued in: ask at the start of a second, so that PyJWT (a
    // Python start-up) checks it well within its life.
    wait_for("the start of a second", Duration::from_secs(2), || {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        (now.subsec_millis() < 100).then_some(())
    });
    let short = from_pod(&agent, &a, &doc_path(T_A, None, "?audience=db")).text();
    let keys = jwks(&agent);
    let verified = pyjwt(&keys, &short, "db");
    assert!(verified.is_ok(), "{verified:?}");
    wait_for("the document to expire", Duration::from_secs(10), || {
        pyjwt(&keys, &short, "db")
            .err()
            .filter(|e| e.contains("ExpiredSignature"))
    });

    // Rotation: a new key signs, the old one stays published.
    agent.stop();
    let mut options = agent.options.clone();
    options.args.retain(|a| a != "1s");
    let pos = options.args.iter().position(|a| a == "--jwt-ttl").unwrap();
    options.args.insert(pos + 1, "5m".into());
    agent.options = options;
    agent.restart();
    let before = from_pod(&agent, &a, &doc_path(T_A, None, "?audience=db")).text();
    let out = Command::new(binary())
        .args([
            "keys",
            "rotate",
            "--kind",
            "jwt",
            "--socket",
            agent.socket.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = from_pod(&agent, &a, &doc_path(T_A, None, "?audience=db")).text();
    let kid = |t: &str| -> String {
        let h = t.split('.').next().unwrap();
        let h = base64url(h);
        serde_json::from_slice::<Value>(&h).unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_ne!(kid(&before), kid(&after));
    let keys = jwks(&agent);
    assert!(
        pyjwt(&keys, &before, "db").is_ok(),
        "the retired key still verifies"
    );
    assert!(pyjwt(&keys, &after, "db").is_ok());
    assert_eq!(
        std::fs::read(&file).unwrap(),
        keys,
        "--jwks-file follows rotations"
    );
    // And after a restart, both still verify with the published set.
    agent.stop();
    agent.restart();
    let keys = jwks(&agent);
    assert!(pyjwt(&keys, &before, "db").is_ok());
    assert!(pyjwt(&keys, &after, "db").is_ok());
    let list = Command::new(binary())
        .args([
            "keys",
            "list",
            "--json",
            "--socket",
            agent.socket.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list["jwt"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list["hmac"].as_array().unwrap().len(), 1, "{list}");
    // Without --json, a table with human times: one signing key a kind.
    let table = Command::new(binary())
        .args(["keys", "list", "--socket", agent.socket.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("KIND") && lines[0].contains("CREATED"),
        "{table}"
    );
    assert_eq!(lines.len(), 4, "{table}");
    assert_eq!(table.matches(" signs").count(), 2, "{table}");
    assert!(
        lines[1].contains("-") && lines[1].contains('Z'),
        "an RFC 3339 time: {table}"
    );
    // The private keys are PKCS#8 files only root can read.
    let pk8: Vec<_> = std::fs::read_dir(agent.state_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("jwt-") && name.ends_with(".pk8")
        })
        .collect();
    assert_eq!(pk8.len(), 2);
    for e in pk8 {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(e.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }
}

fn base64url(s: &str) -> Vec<u8> {
    // The header is small: a table-free decoder keeps the test independent.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = alphabet.iter().position(|a| *a == c).unwrap() as u32;
        bits = bits << 6 | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

#[test]
fn the_cli_round_trip_inside_a_pod() {
    if !require_root("the_cli_round_trip_inside_a_pod") {
        return;
    }
    let (agent, a, _b) = setup("token+netns", &[]);
    let url = format!("http://{}:{}/{T_A}", a.host_v4(), agent.port);
    let out = Command::new("ip")
        .args(["netns", "exec", &a.name])
        .arg(binary())
        .args(["token", "--audience", "db", "--app", "web"])
        .env("AC_METADATA_URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let verify = |audience: &str, extra: &[&str]| {
        Command::new(binary())
            .args(["verify-token", "--audience", audience])
            .args(extra)
            .arg(&token)
            .output()
            .unwrap()
    };
    let sock = agent.socket.to_str().unwrap().to_owned();
    let ok = verify("db", &["--socket", &sock]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let claims: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(claims["rkt"]["pod"], U_A);
    assert_eq!(claims["rkt"]["app"], "web");
    let bad = verify("other", &["--socket", &sock]);
    assert_eq!(bad.status.code(), Some(1));
    let why = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(why.lines().count(), 1, "{why}");
    assert!(why.contains("audience"), "{why}");
    // The same with a JWK Set file, and an error when there is none.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&agent)).unwrap();
    assert_eq!(
        verify("db", &["--jwks", file.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    let missing = dir.path().join("missing.json");
    assert_eq!(
        verify("db", &["--jwks", missing.to_str().unwrap()])
            .status
            .code(),
        Some(2)
    );
    // A document from another agent's keys is not valid here.
    let other = Agent::start(AgentOptions::identity("token+netns"));
    let osock = other.socket.to_str().unwrap().to_owned();
    assert_eq!(verify("db", &["--socket", &osock]).status.code(), Some(1));
    let _ = http::tcp(agent.loopback(), &Request::get("/.well-known/jwks.json"));
}
