//! X.509-SVIDs (SPEC §9): pods send CSRs made by OpenSSL from inside their
//! namespaces and get SVIDs that OpenSSL verifies against the SPIFFE
//! bundle and uses for a real mutual-TLS handshake between two pods; the
//! refusals; the SSRF defences. Needs root; runs in CI.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use integration::{
    fixtures,
    http::{Conn, Request, Response},
    openssl::{self, csr, ok, P256},
    pod::ip,
    privilege::require_root,
    Agent, AgentOptions, Bridge, PodNet,
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
    let (path, n) = openssl::bundle_file(&bundle, dir, "bundle.pem");
    assert!(n > 0, "no X.509 authority in {bundle}");
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
        &openssl::run(
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
            &openssl::run(
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
        let pub_of = |args: &[&str]| ok(&openssl::run(None, args), "openssl pkey");
        assert_eq!(
            pub_of(&["x509", "-noout", "-pubkey", "-in", cert.to_str().unwrap()]),
            pub_of(&["pkey", "-pubout", "-in", key.to_str().unwrap()]),
            "{name}"
        );
    }
    let text = ok(
        &openssl::run(
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
            "RSA over 4096 bits",
            post_csr(
                &agent,
                &a,
                &x509_path(T_A, None),
                &csr(&a, dir.path(), "rsa4160", &["-newkey", "rsa:4160"]),
                METADATA,
            ),
            400,
            "4096",
        ),
        (
            "RSA with exponent 3",
            post_csr(
                &agent,
                &a,
                &x509_path(T_A, None),
                &csr(
                    &a,
                    dir.path(),
                    "rsa-e3",
                    &["-newkey", "rsa:2048", "-pkeyopt", "rsa_keygen_pubexp:3"],
                ),
                METADATA,
            ),
            400,
            "65537",
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
    let (cert_a, key_a) = openssl::pod_svid(&a, to, T_A, dir.path(), "a");
    let (cert_b, key_b) = openssl::pod_svid(&b, to, T_B, dir.path(), "b");
    let port = 18443 + (std::process::id() % 1000) as u16;
    openssl::assert_mutual_tls(
        openssl::Tls {
            pod: &a,
            cert: &cert_a,
            key: &key_a,
            ca: &bundle,
        },
        openssl::Tls {
            pod: &b,
            cert: &cert_b,
            key: &key_b,
            ca: &bundle,
        },
        port,
    );
}

/// A network namespace of the test's own, deleted on drop (its veth ends
/// with it).
struct Namespace(String);

impl Namespace {
    fn new(tag: &str) -> Self {
        let name = format!("{tag}{}", std::process::id());
        ip(&["netns", "add", &name]);
        Self(name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// SPEC §9's hop limit: a client two hops away, behind a router namespace,
/// cannot complete a handshake with the agent (its SYN-ACK leaves with TTL
/// 1 and dies at the router), while the router itself, on the host's link,
/// is served. With `--response-hop-limit 64` the same client connects:
/// the topology routes, and the limit is what stops it.
#[test]
fn a_client_behind_a_router_cannot_hold_a_conversation() {
    if !require_root("a_client_behind_a_router_cannot_hold_a_conversation") {
        return;
    }
    let router = PodNet::new();
    let far = Namespace::new("hop");
    let (inside, outside) = (PodNet::new_addressing_v4(), PodNet::new_addressing_v4());
    let (r_if, p_if) = (format!("rp{}", std::process::id()), "pr0".to_owned());
    ip(&[
        "-n",
        &router.name,
        "link",
        "add",
        &r_if,
        "type",
        "veth",
        "peer",
        "name",
        &p_if,
        "netns",
        &far.0,
    ]);
    ip(&[
        "-n",
        &router.name,
        "addr",
        "add",
        &format!("{inside}/32"),
        "dev",
        &r_if,
    ]);
    ip(&["-n", &router.name, "link", "set", &r_if, "up"]);
    ip(&[
        "-n",
        &router.name,
        "route",
        "add",
        &format!("{outside}/32"),
        "dev",
        &r_if,
    ]);
    let forward = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &router.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])
        .status()
        .unwrap();
    assert!(forward.success());
    ip(&["-n", &far.0, "link", "set", "lo", "up"]);
    ip(&[
        "-n",
        &far.0,
        "addr",
        "add",
        &format!("{outside}/32"),
        "dev",
        &p_if,
    ]);
    ip(&["-n", &far.0, "link", "set", &p_if, "up"]);
    ip(&[
        "-n",
        &far.0,
        "route",
        "add",
        &format!("{inside}/32"),
        "dev",
        &p_if,
    ]);
    ip(&[
        "-n",
        &far.0,
        "route",
        "add",
        "default",
        "via",
        &inside.to_string(),
        "dev",
        &p_if,
        "onlink",
    ]);
    // The host reaches the far client through the router (gone with the
    // router's veth).
    ip(&[
        "route",
        "add",
        &format!("{outside}/32"),
        "via",
        &router.v4().to_string(),
        "dev",
        &router.host_if,
    ]);
    let far_file =
        netns::NetnsFile::open(format!("/run/netns/{}", far.0)).expect("the far namespace");
    for (hops, far_connects) in [(None, false), (Some("64"), true)] {
        let mut options = AgentOptions::identity("token+netns");
        if let Some(h) = hops {
            options = options.arg("--response-hop-limit").arg(h);
        }
        let agent = Agent::start(options);
        let to = SocketAddr::new(IpAddr::V4(router.host_v4()), agent.port);
        // The router is on the host's link: served at any limit.
        let r = Conn::new(router.connect(None, to).expect("the router connects"))
            .send(&Request::get("/.well-known/jwks.json"))
            .unwrap();
        assert_eq!(r.status, 200);
        let connected = netns::run_in(&far_file, move || {
            std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(2)).is_ok()
        })
        .unwrap();
        assert_eq!(
            connected,
            far_connects,
            "a client two hops away with --response-hop-limit {}",
            hops.unwrap_or("1 (default)")
        );
    }
}

/// The operator's intermediate (`--x509-ca-cert/-key`, `--x509-bundle`),
/// made by OpenSSL under an OpenSSL root: SVIDs come with the
/// intermediate, verify against the root alone, and the bundle is the
/// root; the agent does not rotate the operator's CA.
#[test]
fn an_operators_intermediate_signs_the_svids() {
    if !require_root("an_operators_intermediate_signs_the_svids") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let ext = dir.path().join("ext.cnf");
    std::fs::write(
        &ext,
        format!(
            "[ca]\nbasicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectAltName=URI:spiffe://{TD}\n"
        ),
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut root = vec!["req", "-x509", "-subj", "/O=operator/CN=root", "-days", "2"];
    root.extend_from_slice(&ec);
    let (root_key, root_pem) = (d("root.key"), d("root.pem"));
    root.extend_from_slice(&["-keyout", &root_key, "-out", &root_pem]);
    ok(&openssl::run(None, &root), "the root");
    let mut csr = vec!["req", "-new", "-subj", "/O=operator/CN=intermediate"];
    csr.extend_from_slice(&ec);
    let (int_key, int_csr, int_pem) = (d("int.key"), d("int.csr"), d("int.pem"));
    csr.extend_from_slice(&["-keyout", &int_key, "-out", &int_csr]);
    ok(&openssl::run(None, &csr), "the intermediate's request");
    let ext_path = ext.to_str().unwrap();
    ok(
        &openssl::run(
            None,
            &[
                "x509",
                "-req",
                "-in",
                &int_csr,
                "-CA",
                &root_pem,
                "-CAkey",
                &root_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext_path,
                "-extensions",
                "ca",
                "-out",
                &int_pem,
            ],
        ),
        "the intermediate",
    );
    let agent = Agent::start(
        AgentOptions::identity("token+netns")
            .arg("--node-name")
            .arg("node-1")
            .arg("--trust-domain")
            .arg(TD)
            .arg("--x509-ca-cert")
            .arg(&int_pem)
            .arg("--x509-ca-key")
            .arg(&int_key)
            .arg("--x509-bundle")
            .arg(&root_pem),
    );
    let pod = PodNet::new();
    agent.register_in(U_A, T_A, &fixtures::read(fixtures::WEB.manifest), &pod);
    let body = csr_of(&pod, dir.path());
    let r = post_csr(&agent, &pod, &x509_path(T_A, None), &body, METADATA);
    assert_eq!(r.status, 200, "{}", r.text());
    let served = r.text();
    assert_eq!(
        served.matches("BEGIN CERTIFICATE").count(),
        2,
        "the SVID and the intermediate"
    );
    let chain = dir.path().join("chain.pem");
    std::fs::write(&chain, &served).unwrap();
    let verified = ok(
        &openssl::run(
            None,
            &[
                "verify",
                "-CAfile",
                &root_pem,
                "-untrusted",
                chain.to_str().unwrap(),
                chain.to_str().unwrap(),
            ],
        ),
        "openssl verify against the root alone",
    );
    assert!(verified.contains(": OK"), "{verified}");
    // The bundle is the operator's root.
    let bundle = agent
        .unix(&Request::get("/.well-known/spiffe-bundle"))
        .json();
    let (bundle_file, n) = openssl::bundle_file(&bundle, dir.path(), "bundle.pem");
    assert_eq!(n, 1);
    let unwrapped = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .split_whitespace()
            .collect::<String>()
    };
    assert_eq!(unwrapped(&bundle_file), unwrapped(Path::new(&root_pem)));
    let r = agent.unix(&Request::new("POST", "/keys/rotate?kind=x509", None, &[]));
    assert_eq!(r.status, 500);
    assert!(r.text().contains("operator"), "{}", r.text());
}

fn csr_of(pod: &PodNet, dir: &Path) -> Vec<u8> {
    csr(pod, dir, "svid", P256)
}
