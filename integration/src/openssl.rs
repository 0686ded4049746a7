//! OpenSSL, the independent X.509 implementation the tests check SVIDs
//! with: keys and CSRs made inside pods, `verify`, and mutual-TLS
//! handshakes between pods (`s_server`/`s_client`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine};

use crate::{
    http::{Conn, Request},
    wait_for, PodNet,
};

/// Key options for a P-256 key.
pub const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// `openssl ARGS`, inside `pod`'s namespace if given.
pub fn run(pod: Option<&PodNet>, args: &[&str]) -> Output {
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

/// Its standard output, after asserting success.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key (`dir/NAME.key`) and a CSR for it, made inside `pod`; the CSR's
/// PEM.
pub fn csr(pod: &PodNet, dir: &Path, name: &str, key_args: &[&str]) -> Vec<u8> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut args = vec!["req", "-new", "-nodes", "-subj", "/CN=ignored"];
    args.extend_from_slice(key_args);
    let (key, csr_path) = (key.to_str().unwrap(), csr.to_str().unwrap());
    args.extend_from_slice(&["-keyout", key, "-out", csr_path]);
    ok(&run(Some(pod), &args), "openssl req");
    std::fs::read(&csr).unwrap()
}

/// One PEM certificate block.
pub fn pem_certificate(der: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        STANDARD.encode(der)
    )
}

/// The X.509 authorities of a SPIFFE bundle (JSON), written as a PEM file
/// `dir/NAME`; how many there are.
pub fn bundle_file(bundle: &serde_json::Value, dir: &Path, name: &str) -> (PathBuf, usize) {
    let ders: Vec<Vec<u8>> = bundle["keys"]
        .as_array()
        .expect("a bundle's keys")
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .map(|k| STANDARD.decode(k["x5c"][0].as_str().unwrap()).unwrap())
        .collect();
    let path = dir.join(name);
    std::fs::write(
        &path,
        ders.iter().map(|d| pem_certificate(d)).collect::<String>(),
    )
    .unwrap();
    (path, ders.len())
}

/// A mutual-TLS handshake: `openssl s_server -Verify` in `server` (its
/// SVID `server_cert`/`server_key`, trusting `server_ca`) and `s_client`
/// in `client`; the client's `-brief` report and the server's errors.
#[derive(Clone, Copy)]
pub struct Tls<'a> {
    pub pod: &'a PodNet,
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ca: &'a Path,
}

pub fn mutual_tls(server: Tls<'_>, client: Tls<'_>, port: u16) -> (bool, String, String) {
    let at = format!("{}:{port}", server.pod.v4());
    let mut s = Command::new("ip")
        .args([
            "netns",
            "exec",
            &server.pod.name,
            "openssl",
            "s_server",
            "-quiet",
            "-naccept",
            "1",
        ])
        .args(["-accept", &at])
        .arg("-cert")
        .arg(server.cert)
        .arg("-key")
        .arg(server.key)
        .arg("-CAfile")
        .arg(server.ca)
        .args(["-Verify", "1", "-verify_return_error"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_server");
    let (status, report) = wait_for("the mutual-TLS handshake", Duration::from_secs(10), || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &client.pod.name,
                "openssl",
                "s_client",
                "-brief",
            ])
            .args(["-connect", &at])
            .arg("-cert")
            .arg(client.cert)
            .arg("-key")
            .arg(client.key)
            .arg("-CAfile")
            .arg(client.ca)
            .args(["-verify_return_error", "-verify", "1"])
            .stdin(Stdio::null())
            .output()
            .expect("openssl s_client");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        // Until the server listens, the connection is refused: again.
        (!text.contains("Connection refused")).then_some((out.status.success(), text))
    });
    let _ = s.kill();
    let served = s.wait_with_output().expect("s_server's output");
    (
        status,
        report,
        String::from_utf8_lossy(&served.stderr).into_owned(),
    )
}

/// An X509-SVID for `pod` from the agent at `to`: a P-256 key made inside
/// the pod, its CSR posted with `token` (and `Metadata: true`); the SVID's
/// and the key's files, `dir/NAME.pem` and `dir/NAME.key`.
pub fn pod_svid(
    pod: &PodNet,
    to: std::net::SocketAddr,
    token: &str,
    dir: &Path,
    name: &str,
) -> (PathBuf, PathBuf) {
    let body = csr(pod, dir, name, P256);
    let r = Conn::new(pod.connect(None, to).expect("connect to the agent"))
        .send(&Request::new(
            "POST",
            &format!("/{token}/acMetadata/v1/pod/identity/x509"),
            Some(&body),
            &[("Metadata", "true")],
        ))
        .expect("the SVID request");
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    let cert = dir.join(format!("{name}.pem"));
    std::fs::write(&cert, &r.body).unwrap();
    (cert, dir.join(format!("{name}.key")))
}

/// [`mutual_tls`], asserting that both sides verified the other.
pub fn assert_mutual_tls(server: Tls<'_>, client: Tls<'_>, port: u16) {
    let (ok, client, server) = mutual_tls(server, client, port);
    assert!(ok, "s_client: {client}\ns_server: {server}");
    assert!(client.contains("Verification: OK"), "{client}");
    assert!(
        !server.contains("verify error"),
        "s_server refused the client: {server}"
    );
}
