//! Operators' tools: `audit` over every identity state, the registration
//! client and the in-pod `sign`/`verify`, metrics, and peer-credential
//! access control on the registration socket.

use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use integration::{
    agent::binary, fixtures, http::Request, privilege::require_root, wait_for, Agent, AgentOptions,
    PodNet,
};
use serde_json::Value;

fn uuid(n: u32) -> String {
    format!("0ddba11a-a507-4694-aabf-{n:012x}")
}

fn token(n: u32) -> String {
    format!("op{n:030x}")
}

fn cli(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run rkt-mds")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn register_in(agent: &Agent, n: u32, pod: Option<&PodNet>) {
    let manifest = fixtures::read("pods/bare-pod.json");
    match pod {
        Some(p) => agent.register_in(&uuid(n), &token(n), &manifest, p),
        None => assert_eq!(
            agent.register(&uuid(n), &token(n), &manifest, "").status,
            200
        ),
    }
}

#[test]
fn audit_reports_every_identity_state() {
    if !require_root("audit_reports_every_identity_state") {
        return;
    }
    let agent = Agent::start(
        AgentOptions::identity("token+netns")
            .arg("--gc-grace")
            .arg("1h"),
    );
    let sock = agent.socket.display().to_string();
    let (verified, c1, c2, mut gone) = (PodNet::new(), PodNet::new(), PodNet::new(), PodNet::new());
    register_in(&agent, 1, Some(&verified));
    register_in(&agent, 2, None); // host network
    register_in(&agent, 3, Some(&c1));
    register_in(&agent, 4, Some(&c2));
    register_in(&agent, 5, Some(&gone));
    c2.exec(&["addr", "add", &format!("{}/32", c1.v4()), "dev", "eth0"]);
    gone.delete_netns_only();

    let states = || -> HashMap<String, String> {
        let out = cli(&["audit", "--json", "--socket", &sock]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        v["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["uuid"].as_str().unwrap().to_owned(),
                    p["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let s = wait_for(
        "the conflict and the gone namespace to show",
        Duration::from_secs(10),
        || {
            let s = states();
            (s.get(&uuid(4)).map(String::as_str) == Some("conflict")
                && s.get(&uuid(5)).map(String::as_str) == Some("netns-gone"))
            .then_some(s)
        },
    );
    assert_eq!(s[&uuid(1)], "verified");
    assert_eq!(s[&uuid(2)], "host-network");
    // c2 claims c1's address: the host routes it to c1, so only the
    // claimant is in conflict.
    assert_eq!(s[&uuid(3)], "verified");
    let json: Value =
        serde_json::from_str(&stdout(&cli(&["audit", "--json", "--socket", &sock]))).unwrap();
    let entry = json["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["uuid"] == uuid(1))
        .unwrap()
        .clone();
    assert_eq!(entry["netns"]["path"], verified.netns_path());
    assert!(entry["netns"]["inode"].as_u64().unwrap() > 0);
    assert!(entry["addresses"]
        .as_array()
        .unwrap()
        .contains(&Value::from(verified.v4().to_string())));
    assert_eq!(entry["registrant"]["uid"], 0);
    assert!(entry["registered_at"].as_u64().unwrap() > 0);
    assert!(!json.to_string().contains(&token(1)), "never the token");

    // The table: one row per pod and address, conflicts marked.
    let table = stdout(&cli(&["audit", "--socket", &sock]));
    let row = table
        .lines()
        .find(|l| l.contains(&uuid(1)) && l.contains(&verified.v4().to_string()))
        .expect("a row");
    assert!(
        row.contains("verified") && row.contains(&verified.netns_path()),
        "{row}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains(&uuid(4)) && l.contains(&format!("{} (CONFLICT)", c1.v4()))),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains(&uuid(5)) && l.contains("netns-gone")),
        "{table}"
    );

    // --check: 1 while anything is in doubt, 0 once it is resolved.
    assert_eq!(
        cli(&["audit", "--check", "--socket", &sock]).status.code(),
        Some(1)
    );
    for n in [3, 4, 5] {
        assert_eq!(agent.unregister(&uuid(n)).status, 200);
    }
    assert_eq!(
        cli(&["audit", "--check", "--socket", &sock]).status.code(),
        Some(0)
    );
    // A netns-unknown pod counts only once older than the grace.
    std::fs::create_dir_all(agent.rkt_dir().join("pods/run").join(uuid(6))).unwrap();
    register_in(&agent, 6, None);
    assert_eq!(agent.pod_entry(&uuid(6)).unwrap()["state"], "netns-unknown");
    assert_eq!(
        cli(&["audit", "--check", "--socket", &sock]).status.code(),
        Some(0),
        "agent grace 1h"
    );
    assert_eq!(
        cli(&["audit", "--check", "--grace", "0s", "--socket", &sock])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn register_sign_verify_unregister_with_the_cli() {
    if !require_root("register_sign_verify_unregister_with_the_cli") {
        return;
    }
    let agent = Agent::start(AgentOptions::identity("token+netns"));
    let sock = agent.socket.display().to_string();
    let (p1, p2) = (PodNet::new(), PodNet::new());
    let f = |rel: &str| fixtures::dir().join(rel).display().to_string();
    let register = |n: u32, pod: &PodNet| -> String {
        let host = pod.host_v4().to_string();
        let mut args = vec![
            "register".to_owned(),
            "--socket".into(),
            sock.clone(),
            "--uuid".into(),
            uuid(n),
            "--manifest".into(),
            f("pods/web-pod.json"),
            "--app".into(),
            format!("web={}", f("pods/web-image.json")),
            "--netns".into(),
            pod.netns_path(),
        ];
        // Pod 1 without --host: the client finds the host's address on
        // its route to the pod, as a runtime would.
        if n != 1 {
            args.extend(["--host".to_owned(), host]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let printed = stdout(&out);
        let url = printed
            .lines()
            .find_map(|l| l.strip_prefix("AC_METADATA_URL="))
            .expect("prints AC_METADATA_URL")
            .to_owned();
        // And where the pod's SPIFFE clients find the Workload API.
        assert!(
            printed.lines().any(|l| l
                == format!(
                    "SPIFFE_ENDPOINT_SOCKET=tcp://{}:{}",
                    pod.host_v4(),
                    agent.workload_port
                )),
            "{printed}"
        );
        // The agent's real port (a random one here), a 128-bit hex token.
        let prefix = format!("http://{}:{}/", pod.host_v4(), agent.port);
        let token = url
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{url} does not start with {prefix}"));
        assert!(
            token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
            "{token}"
        );
        url
    };
    let url1 = register(1, &p1);
    let url2 = register(2, &p2);
    assert_eq!(
        agent.pod_entry(&uuid(1)).unwrap()["registered_apps"],
        serde_json::json!(["web"])
    );

    let in_pod = |pod: &PodNet, url: &str, args: &[&str]| -> Output {
        Command::new("ip")
            .args(["netns", "exec", &pod.name])
            .arg(binary())
            .args(args)
            .env("AC_METADATA_URL", url)
            .output()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("msg");
    std::fs::write(&msg, "transfer 42\n").unwrap();
    let sig_file = dir.path().join("sig");
    // Pod 1 signs `msg` into `sig_file`.
    let sign = || {
        let (file, output) = (msg.to_str().unwrap(), sig_file.to_str().unwrap());
        let out = in_pod(&p1, &url1, &["sign", "--file", file, "--output", output]);
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::read_to_string(&sig_file).unwrap()
    };
    let sig = sign();
    assert_eq!(sig.len(), 88);
    let verify = |pod: &PodNet, url: &str, signature: &str| {
        in_pod(
            pod,
            url,
            &[
                "verify",
                "--file",
                msg.to_str().unwrap(),
                "--uuid",
                &uuid(1),
                "--signature",
                signature,
            ],
        )
        .status
        .code()
    };
    assert_eq!(
        verify(&p2, &url2, &format!("@{}", sig_file.display())),
        Some(0),
        "valid"
    );
    // What verify prints: `valid`, or `invalid: REASON`.
    let said = |signature: &str| {
        let out = in_pod(
            &p2,
            &url2,
            &[
                "verify",
                "--file",
                msg.to_str().unwrap(),
                "--uuid",
                &uuid(1),
                "--signature",
                signature,
            ],
        );
        stdout(&out).trim().to_owned()
    };
    assert_eq!(said(&sig), "valid");
    let tampered = format!("{}A=", &sig[..sig.len() - 2]);
    assert!(
        said(&tampered).starts_with("invalid: "),
        "{}",
        said(&tampered)
    );
    // Registering pod 1 again without its token: the client says how.
    let again = cli(&[
        "register",
        "--socket",
        &sock,
        "--uuid",
        &uuid(1),
        "--manifest",
        &f("pods/web-pod.json"),
        "--netns",
        &p1.netns_path(),
    ]);
    assert!(!again.status.success());
    let err = stderr(&again);
    assert!(
        err.contains("--token") && err.contains("rkt-mds unregister"),
        "{err}"
    );
    assert_eq!(verify(&p2, &url2, &sig), Some(0));
    std::fs::write(&msg, "transfer 4200\n").unwrap();
    assert_eq!(verify(&p2, &url2, &sig), Some(1), "invalid");
    assert_eq!(verify(&p2, &url2, "%%%"), Some(2), "an error");
    // Content need not be text: every byte value signs and verifies.
    std::fs::write(&msg, (0..=255u8).collect::<Vec<u8>>()).unwrap();
    let binary_sig = sign();
    assert_eq!(
        verify(&p2, &url2, &binary_sig),
        Some(0),
        "binary content verifies"
    );
    // Signing with another pod's URL from this pod is refused.
    let out = in_pod(
        &p2,
        &url1.replace(&p1.host_v4().to_string(), &p2.host_v4().to_string()),
        &["sign", "--file", msg.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(254));
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));

    let out = cli(&["unregister", &uuid(1), "--socket", &sock]);
    assert!(out.status.success(), "{}", stderr(&out));
    // It says what it removed.
    let line = stdout(&out);
    assert!(
        line.starts_with(&format!(
            "unregistered pod {}: state verified, netns {}",
            uuid(1),
            p1.netns_path()
        )) && line.contains("apps web"),
        "{line}"
    );
    assert!(agent.pod_entry(&uuid(1)).is_none());
    let out = cli(&["unregister", &uuid(1), "--socket", &sock]);
    assert_eq!(out.status.code(), Some(254));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
}

#[test]
fn client_errors_are_clear() {
    let agent = Agent::start(AgentOptions::identity("token"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"acKind":"ImageManifest","acVersion":"0.8.11","apps":[]}"#,
    )
    .unwrap();
    let bare = fixtures::dir()
        .join("pods/bare-pod.json")
        .display()
        .to_string();
    let worker = format!(
        "nope={}",
        fixtures::dir().join("pods/worker-image.json").display()
    );
    let u = uuid(1);
    let register = |socket: &Path, manifest: &str, extra: &[&str]| {
        let socket = socket.display().to_string();
        let mut args = vec![
            "register",
            "--socket",
            &socket,
            "--uuid",
            &u,
            "--manifest",
            manifest,
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };

    let out = register(&agent.socket, bad.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(254));
    assert!(
        stderr(&out).contains("acKind"),
        "names the field: {}",
        stderr(&out)
    );
    let out = register(&agent.socket, "/nonexistent.json", &[]);
    assert!(
        stderr(&out).contains("/nonexistent.json"),
        "{}",
        stderr(&out)
    );
    let out = register(&agent.socket, &bare, &["--app", "worker"]);
    assert!(
        stderr(&out).contains("NAME=IMAGE_MANIFEST"),
        "{}",
        stderr(&out)
    );
    // A failed app registration leaves nothing half-registered.
    let out = register(&agent.socket, &bare, &["--app", &worker]);
    assert_eq!(out.status.code(), Some(254));
    assert!(agent.pod_entry(&u).is_none());

    // Agent down: say how to start it.
    let down = dir.path().join("down.sock");
    let d = down.to_str().unwrap();
    for out in [
        cli(&["audit", "--socket", d]),
        cli(&["unregister", &u, "--socket", d]),
        cli(&["keys", "rotate", "--socket", d]),
        register(&down, bad.to_str().unwrap(), &[]),
    ] {
        assert_eq!(out.status.code(), Some(254));
        let err = stderr(&out);
        assert!(
            err.contains("no agent answers") && err.contains("rkt-mds serve"),
            "{err}"
        );
    }
}

/// A minimal Prometheus text-format parser: every sample line is
/// `name{labels} value`, every sample's family has a TYPE.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut types = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| types.contains_key(*f))
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE for {name}");
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[test]
fn metrics_parse_and_move_with_traffic() {
    let agent = Agent::start(AgentOptions::identity("token"));
    register_in(&agent, 1, None);
    let metrics = || parse_prometheus(&agent.unix(&Request::get("/metrics")).text());
    let ok = r#"rkt_mds_requests_total{api="public",endpoint="pod/uuid",status="200"}"#;
    let refused = r#"rkt_mds_identity_refusals_total{reason="unknown-token"}"#;
    let before = metrics();
    for _ in 0..7 {
        assert_eq!(
            agent
                .get(&format!("/{}/acMetadata/v1/pod/uuid", token(1)))
                .status,
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            agent
                .get(&format!("/{}/acMetadata/v1/pod/uuid", token(2)))
                .status,
            401
        );
    }
    let after = metrics();
    assert_eq!(after[ok] - before.get(ok).copied().unwrap_or(0.0), 7.0);
    assert_eq!(
        after[refused] - before.get(refused).copied().unwrap_or(0.0),
        3.0
    );
    assert_eq!(after["rkt_mds_registrations"], 1.0);
    assert_eq!(after[r#"rkt_mds_pods{state="host-network"}"#], 1.0);
    assert_eq!(after[r#"rkt_mds_pods{state="verified"}"#], 0.0);
    let count = r#"rkt_mds_request_duration_seconds_count{group="metadata"}"#;
    assert!(after[count] >= 10.0);
    assert_eq!(
        after[r#"rkt_mds_request_duration_seconds_bucket{group="metadata",le="+Inf"}"#],
        after[count]
    );
    // Families with nothing counted yet are there, at 0.
    assert_eq!(after[r#"rkt_mds_rate_limited_total{reason="pod"}"#], 0.0);
    assert_eq!(
        after[r#"rkt_mds_request_duration_seconds_count{group="identity"}"#],
        0.0
    );
}

#[test]
fn registration_socket_refuses_unprivileged_peers() {
    if !require_root("registration_socket_refuses_unprivileged_peers") {
        return;
    }
    let agent = Agent::start(
        AgentOptions::identity("token")
            .arg("--registration-group")
            .arg("4242"),
    );
    // Let an unprivileged process reach the socket at all (as a too-wide
    // socket mode or a group member would): peer credentials must stop it.
    for dir in [agent.root.path(), agent.socket.parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let body = fixtures::dir().join("pods/bare-pod.json");
    let as_user = |gid: &str, args: &[&str]| -> String {
        let out = Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                gid,
                "--clear-groups",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(&agent.socket)
            .args(args)
            .output()
            .unwrap();
        stdout(&out)
    };
    let put = [
        "-X",
        "PUT",
        "--data-binary",
        &format!("@{}", body.display()),
        &format!("http://unixsock/pods/{}?token={}", uuid(1), token(1)),
    ];
    assert_eq!(as_user("65534", &put), "403");
    assert_eq!(as_user("65534", &["http://unixsock/pods"]), "403");
    assert_eq!(
        as_user(
            "65534",
            &["-X", "DELETE", &format!("http://unixsock/pods/{}", uuid(1))]
        ),
        "403"
    );
    assert_eq!(as_user("65534", &["http://unixsock/health"]), "200");
    assert!(agent.pod_entry(&uuid(1)).is_none());
    // The registration group may.
    assert_eq!(as_user("4242", &put), "200");
    assert_eq!(as_user("4242", &["http://unixsock/pods"]), "200");
}
