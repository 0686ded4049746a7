//! X.509-SVIDs (SPEC §9): pods send CSRs made by OpenSSL from inside their
//! namespaces and get SVIDs that OpenSSL verifies against the SPIFFE
//! bundle and uses for a real mutual-TLS handshake between two pods; the
//! refusals; the SSRF defences. Needs root; runs in CI.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine};
use integration::{
    fixtures,
    http::{Conn, Request, Response},
    privilege::require_root,
    wait_for, Agent, AgentOptions, Bridge, PodNet,
};
use serde_json::Value;

const T_A: &str = "aaaa56789abcdef0123456789abcdef0";
const T_B: &str = "bbbb56789abcdef0123456789abcdef0";
const U_A: &str = "aaaaaaaa-a507-4694-aabf-edbe4fc5266f";
const U_B: &str = "bbbbbbbb-a507-4694-aabf-edbe4fc5266f";
const TD: &str = "example.org";

fn spiffe_id(uuid: &str, app: Option<&str>) -> String {
    let pod = format!("spiffe://{TD}/rkt/node/node-1/pod/{uuid}");
    match app {
        Some(app) => format!("{pod}/app/{app}"),
        None => pod,
    }
}

fn x509_path(token: &str, app: Option<&str>) -> String {
    match app {
        Some(app) => format!("/{token}/acMetadata/v1/apps/{app}/identity/x509"),
        None => format!("/{token}/acMetadata/v1/pod/identity/x509"),
    }
}

fn openssl(pod: Option<&PodNet>, args: &[&str]) -> Output {
    let mut cmd = match pod {
        Some(p) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &p.name, "openssl"]);
            c
        }
        None => Command::new("openssl"),
    };
    cmd.args(args).output().expect("run openssl")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key and a CSR for it, made by OpenSSL inside `pod` (`key_args`: how
/// to make the key); returns the CSR's PEM.
fn csr(pod: &PodNet, dir: &Path, name: &str, key_args: &[&str]) -> Vec<u8> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut args = vec!["req", "-new", "-nodes", "-subj", "/CN=ignored"];
    args.extend_from_slice(key_args);
    let (key, csr_path) = (key.to_str().unwrap(), csr.to_str().unwrap());
    args.extend_from_slice(&["-keyout", key, "-out", csr_path]);
    ok(&openssl(Some(pod), &args), "openssl req");
    std::fs::read(&csr).unwrap()
}

const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

fn post_csr(
    agent: &Agent,
    pod: &PodNet,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Response {
    let s = pod
        .connect(None, SocketAddr::new(IpAddr::V4(pod.host_v4()), agent.port))
        .expect("connect from pod");
    let mut all = vec![("Content-Type", "application/pkcs10")];
    all.extend_from_slice(headers);
    Conn::new(s)
        .send(&Request::new("POST", path, Some(body), &all))
        .expect("request from pod")
}

const METADATA: &[(&str, &str)] = &[("Metadata", "true")];

/// The bundle's X.509 authorities as a PEM file for OpenSSL.
fn bundle_pem(agent: &Agent, dir: &Path) -> std::path::PathBuf {
    let r = agent.unix(&Request::get("/.well-known/spiffe-bundle"));
    assert_eq!(r.status, 200);
    let bundle: Value = serde_json::from_slice(&r.body).expect("bundle JSON");
    assert!(bundle["spiffe_sequence"].as_u64().is_some_and(|s| s > 0));
    assert!(bundle["spiffe_refresh_hint"].as_u64().is_some());
    let keys = bundle["keys"].as_array().expect("keys");
    assert!(keys
        .iter()
        .any(|k| k["use"] == "jwt-svid" && k["kid"].is_string()));
    let mut pem = String::new();
    for k in keys.iter().filter(|k| k["use"] == "x509-svid") {
        let der = STANDARD.decode(k["x5c"][0].as_str().unwrap()).unwrap();
        pem += &format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(der)
        );
    }
    assert!(!pem.is_empty(), "no X.509 authority in {bundle}");
    let path = dir.join("bundle.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

fn setup(mode: &'static str, pods: (PodNet, PodNet)) -> (Agent, PodNet, PodNet) {
    let agent = Agent::start(
        AgentOptions::identity(mode)
            .arg("--node-name")
            .arg("node-1")
            .arg("--trust-domain")
            .arg(TD),
    );
    let (a, b) = pods;
    let manifest = fixtures::read(fixtures::WEB.manifest);
    agent.register_in(U_A, T_A, &manifest, &a);
    agent.register_in(U_B, T_B, &manifest, &b);
    (agent, a, b)
}

/// The SVID's URI SANs, as OpenSSL prints them.
fn uri_sans(cert: &Path) -> Vec<String> {
    let text = ok(
        &openssl(
            None,
            &[
                "x509",
                "-noout",
                "-ext",
                "subjectAltName",
                "-in",
                cert.to_str().unwrap(),
            ],
        ),
        "openssl x509",
    );
    text.split([',', '\n'])
        .filter_map(|p| p.trim().strip_prefix("URI:").map(str::to_owned))
        .collect()
}

#[test]
fn pods_get_svids_that_openssl_verifies() {
    if !require_root("pods_get_svids_that_openssl_verifies") {
        return;
    }
    let (agent, a, _b) = setup("token+netns", (PodNet::new(), PodNet::new()));
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle_pem(&agent, dir.path());
    let cases: [(&str, &[&str], Option<&str>); 4] = [
        ("p256", P256, None),
        (
            "p384",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            None,
        ),
        ("ed25519", &["-newkey", "ed25519"], Some("web")),
        ("rsa", &["-newkey", "rsa:2048"], Some("log-shipper")),
    ];
    for (name, key_args, app) in cases {
        let body = csr(&a, dir.path(), name, key_args);
        let r = post_csr(&agent, &a, &x509_path(T_A, app), &body, METADATA);
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.content_type(), "application/pem-certificate-chain");
        let cert = dir.path().join(format!("{name}.pem"));
        std::fs::write(&cert, &r.body).unwrap();
        let verified = ok(
            &openssl(
                None,
                &[
                    "verify",
                    "-CAfile",
                    bundle.to_str().unwrap(),
                    "-purpose",
                    "sslclient",
                    cert.to_str().unwrap(),
                ],
            ),
            "openssl verify",
        );
        assert!(verified.contains(": OK"), "{verified}");
        assert_eq!(uri_sans(&cert), vec![spiffe_id(U_A, app)], "{name}");
        // The certificate is for the CSR's key.
        let key = dir.path().join(format!("{name}.key"));
        let pub_of = |args: &[&str]| ok(&openssl(None, args), "openssl pkey");
        assert_eq!(
            pub_of(&["x509", "-noout", "-pubkey", "-in", cert.to_str().unwrap()]),
            pub_of(&["pkey", "-pubout", "-in", key.to_str().unwrap()]),
            "{name}"
        );
    }
    let text = ok(
        &openssl(
            None,
            &[
                "x509",
                "-noout",
                "-text",
                "-in",
                dir.path().join("p256.pem").to_str().unwrap(),
            ],
        ),
        "openssl x509 -text",
    );
    for want in [
        "CA:FALSE",
        "Digital Signature",
        "TLS Web Server Authentication",
        "TLS Web Client Authentication",
    ] {
        assert!(text.contains(want), "{want} missing in {text}");
    }
}

#[test]
fn svid_refusals() {
    if !require_root("svid_refusals") {
        return;
    }
    let (agent, a, b) = setup("token+netns", (PodNet::new(), PodNet::new()));
    let dir = tempfile::tempdir().unwrap();
    let good = csr(&a, dir.path(), "a", P256);
    let cases: Vec<(&str, Response, u16, &str)> = vec![
        (
            "no Metadata: true",
            post_csr(&agent, &a, &x509_path(T_A, None), &good, &[]),
            400,
            "Metadata: true",
        ),
        (
            "through a proxy",
            post_csr(
                &agent,
                &a,
                &x509_path(T_A, None),
                &good,
                &[("Metadata", "true"), ("X-Forwarded-For", "198.18.0.99")],
            ),
            403,
            "proxy",
        ),
        (
            "A's token from B",
            post_csr(&agent, &b, &x509_path(T_A, None), &good, METADATA),
            403,
            "",
        ),
        (
            "an app the pod does not have",
            post_csr(&agent, &a, &x509_path(T_A, Some("nope")), &good, METADATA),
            404,
            "app not found",
        ),
        (
            "not a CSR",
            post_csr(&agent, &a, &x509_path(T_A, None), b"hello", METADATA),
            400,
            "CERTIFICATE REQUEST",
        ),
        (
            "RSA 1024",
            post_csr(
                &agent,
                &a,
                &x509_path(T_A, None),
                &csr(&a, dir.path(), "rsa1024", &["-newkey", "rsa:1024"]),
                METADATA,
            ),
            400,
            "2048",
        ),
        (
            "over 16 KiB",
            post_csr(
                &agent,
                &a,
                &x509_path(T_A, None),
                &vec![b'a'; 17 * 1024],
                METADATA,
            ),
            413,
            "",
        ),
        (
            "a GET",
            {
                let s = a
                    .connect(None, SocketAddr::new(IpAddr::V4(a.host_v4()), agent.port))
                    .unwrap();
                Conn::new(s)
                    .send(&Request::new("GET", &x509_path(T_A, None), None, METADATA))
                    .unwrap()
            },
            405,
            "",
        ),
    ];
    for (what, r, status, says) in cases {
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert!(r.text().contains(says), "{what}: {}", r.text());
    }
    // A forwarded request is refused wherever it goes.
    let s = a
        .connect(None, SocketAddr::new(IpAddr::V4(a.host_v4()), agent.port))
        .unwrap();
    let r = Conn::new(s)
        .send(&Request::new(
            "GET",
            &format!("/{T_A}/acMetadata/v1/pod/uuid"),
            None,
            &[("Forwarded", "for=198.18.0.99")],
        ))
        .unwrap();
    assert_eq!(
        (r.status, r.text()),
        (403, "request came through a proxy".to_owned())
    );
    // rkt's token mode proves nothing about the caller: no SVIDs.
    drop(agent);
    let (agent, a, _b) = setup("token", (a, b));
    let r = post_csr(&agent, &a, &x509_path(T_A, None), &good, METADATA);
    assert_eq!(r.status, 403, "{}", r.text());
}

/// Two bridged pods, each with its SVID, hold a mutual-TLS conversation:
/// `openssl s_server -Verify` in one, `s_client` in the other, both
/// trusting only the bundle.
#[test]
fn two_pods_talk_mutual_tls_with_their_svids() {
    if !require_root("two_pods_talk_mutual_tls_with_their_svids") {
        return;
    }
    let bridge = Bridge::new();
    let pods = (PodNet::on_bridge(&bridge), PodNet::on_bridge(&bridge));
    bridge.enforce(&pods.0);
    bridge.enforce(&pods.1);
    let (agent, a, b) = setup("token+netns", pods);
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle_pem(&agent, dir.path());
    let to = SocketAddr::new(IpAddr::V4(bridge.v4()), agent.port);
    let svid = |pod: &PodNet, token: &str, name: &str| {
        let body = csr(pod, dir.path(), name, P256);
        let s = pod.connect(None, to).expect("connect over the bridge");
        let r = Conn::new(s)
            .send(&Request::new(
                "POST",
                &x509_path(token, None),
                Some(&body),
                METADATA,
            ))
            .unwrap();
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let cert = dir.path().join(format!("{name}.pem"));
        std::fs::write(&cert, &r.body).unwrap();
        (cert, dir.path().join(format!("{name}.key")))
    };
    let (cert_a, key_a) = svid(&a, T_A, "a");
    let (cert_b, key_b) = svid(&b, T_B, "b");
    let port = 18443 + (std::process::id() % 1000) as u16;
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &a.name, "openssl", "s_server", "-quiet", "-naccept", "1",
        ])
        .args(["-accept", &format!("{}:{port}", a.v4())])
        .arg("-cert")
        .arg(&cert_a)
        .arg("-key")
        .arg(&key_a)
        .arg("-CAfile")
        .arg(&bundle)
        .args(["-Verify", "1", "-verify_return_error"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_server");
    let client = wait_for("the mutual-TLS handshake", Duration::from_secs(10), || {
        let out = Command::new("ip")
            .args(["netns", "exec", &b.name, "openssl", "s_client", "-brief"])
            .args(["-connect", &format!("{}:{port}", a.v4())])
            .arg("-cert")
            .arg(&cert_b)
            .arg("-key")
            .arg(&key_b)
            .arg("-CAfile")
            .arg(&bundle)
            .args(["-verify_return_error", "-verify", "1"])
            .stdin(Stdio::null())
            .output()
            .expect("openssl s_client");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        // Until the server listens, the connection is refused: try again.
        (!text.contains("Connection refused")).then_some((out.status, text))
    });
    let _ = server.kill();
    let served = server.wait_with_output().expect("s_server's output");
    let server_text = String::from_utf8_lossy(&served.stderr).into_owned();
    assert!(
        client.0.success(),
        "s_client: {}\ns_server: {server_text}",
        client.1
    );
    assert!(client.1.contains("Verification: OK"), "{}", client.1);
    // The server saw B's SVID.
    assert!(
        !server_text.contains("verify error"),
        "s_server refused the client: {server_text}"
    );
}
