//! The agent as a daemon operators run: it fails early and clearly (exit 2
//! for a configuration error, 1 for what may pass, nothing left behind),
//! survives SIGHUP, refuses a second agent on its state directory, serves
//! metrics that Prometheus can parse, and describes itself (version, man
//! pages, completions).

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use integration::{
    agent::{binary, free_port},
    fixtures,
    http::{self, Request},
    privilege::require_root,
    wait_for, Agent, AgentOptions,
};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

fn cli(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rkt-mds")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `serve` in a fresh directory with `extra` flags, run to its end.
fn serve_once(dir: &std::path::Path, extra: &[&str]) -> Output {
    let socket = dir.join("mds.sock");
    let port = free_port().to_string();
    let mut args = vec![
        "serve",
        "--workload-api-port",
        "0",
        "--workload-api-socket",
        "off",
        "--socket",
        socket.to_str().unwrap(),
        "--listen-port",
        &port,
        "--state-dir",
        dir.join("state").to_str().unwrap(),
        "--runtime-dir",
        dir.join("run").to_str().unwrap(),
        "--dir",
        dir.join("rkt").to_str().unwrap(),
        "--metrics-address",
        "off",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cli(&args)
}

#[test]
fn a_configuration_error_exits_2_before_binding_anything() {
    if !require_root("a_configuration_error_exits_2_before_binding_anything") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (flags, says) in [
        (
            &["--jwt-ttl", "2h"][..],
            "--jwt-ttl 2h: must be more than 0 and at most 1h",
        ),
        (&["--jwt-ttl", "0s"][..], "--jwt-ttl 0s:"),
        (&["--node-name", "a/b"][..], "--node-name \"a/b\""),
        (
            &["--jwt-issuer", "http://issuer.example.org"][..],
            "--jwt-issuer \"http://issuer.example.org\": an https:// URL",
        ),
        (
            &["--jwt-issuer", "https://issuer.example.org/?x=1"][..],
            "--jwt-issuer",
        ),
        (
            &["--jwks-file", "/nonexistent-dir/jwks.json"][..],
            "the directory /nonexistent-dir does not exist",
        ),
    ] {
        let out = serve_once(dir.path(), flags);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{flags:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("rkt-mds serving"),
            "{}",
            stderr(&out)
        );
        assert!(
            !dir.path().join("mds.sock").exists(),
            "{flags:?} left its socket"
        );
    }
    // A usage error is clap's: 2 as well.
    let out = serve_once(dir.path(), &["--registration-group", "no-such-group-xyz"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no group named"), "{}", stderr(&out));
}

#[test]
fn a_port_in_use_exits_1_with_its_cause_said_once() {
    if !require_root("a_port_in_use_exits_1_with_its_cause_said_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let socket = dir.path().join("mds.sock");
    let out = cli(&[
        "serve",
        "--workload-api-port",
        "0",
        "--workload-api-socket",
        "off",
        "--socket",
        socket.to_str().unwrap(),
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
        "--runtime-dir",
        dir.path().join("run").to_str().unwrap(),
        "--metrics-address",
        &addr,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot bind --metrics-address {addr}")),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert!(!socket.exists());
}

#[test]
fn a_second_agent_on_one_state_dir_is_refused_with_the_first_ones_pid() {
    if !require_root("a_second_agent_on_one_state_dir_is_refused_with_the_first_ones_pid") {
        return;
    }
    let agent = Agent::start(AgentOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("mds.sock");
    let out = cli(&[
        "serve",
        "--workload-api-port",
        "0",
        "--workload-api-socket",
        "off",
        "--socket",
        socket.to_str().unwrap(),
        "--listen-port",
        &free_port().to_string(),
        "--state-dir",
        agent.state_dir().to_str().unwrap(),
        "--runtime-dir",
        dir.path().join("run").to_str().unwrap(),
        "--metrics-address",
        "off",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let pid = agent.pid().unwrap();
    assert!(
        stderr(&out).contains(&format!("another rkt-mds (PID {pid}) uses --state-dir")),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        http::unix(&agent.socket, &Request::get("/health"))
            .unwrap()
            .status,
        200
    );
}

#[test]
fn sighup_rescans_and_the_agent_goes_on() {
    if !require_root("sighup_rescans_and_the_agent_goes_on") {
        return;
    }
    let agent = Agent::start(AgentOptions::default());
    let manifest = fixtures::read("pods/bare-pod.json");
    let uuid = "5161a9de-a507-4694-aabf-edbe4fc5266f";
    assert_eq!(
        agent
            .register(uuid, "tok00000000000000000000000000001", &manifest, "")
            .status,
        200
    );
    kill(Pid::from_raw(agent.pid().unwrap() as i32), Signal::SIGHUP).unwrap();
    let line = wait_for("the SIGHUP line", Duration::from_secs(10), || {
        agent
            .log()
            .lines()
            .find(|l| l.contains("SIGHUP: applied"))
            .map(str::to_owned)
    });
    assert!(line.contains("pods=1"), "{line}");
    assert!(line.contains("removed=0"), "{line}");
    assert_eq!(
        http::unix(&agent.socket, &Request::get("/health"))
            .unwrap()
            .status,
        200
    );
    assert!(agent.pod_entry(uuid).is_some());
}

#[test]
fn metrics_over_http_parse_with_prometheus_own_parser() {
    if !require_root("metrics_over_http_parse_with_prometheus_own_parser") {
        return;
    }
    let agent = Agent::start(AgentOptions::default());
    let addr = wait_for("the metrics address", Duration::from_secs(5), || {
        agent.metrics_address()
    });
    let r = http::tcp(addr, &Request::get("/metrics")).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.content_type().starts_with("text/plain; version=0.0.4"),
        "{}",
        r.content_type()
    );
    let text = r.text();
    // The same text on the registration socket.
    let socket = http::unix(&agent.socket, &Request::get("/metrics")).unwrap();
    assert_eq!(socket.status, 200);
    assert_eq!(
        http::tcp(addr, &Request::get("/other")).unwrap().status,
        404
    );
    // prometheus_client's own parser (Debian's python3-prometheus-client).
    let parsed = integration::prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for (family, kind) in [
        ("rkt_mds_requests", "counter"),
        ("rkt_mds_request_duration_seconds", "histogram"),
        ("rkt_mds_pods", "gauge"),
        ("rkt_mds_identity_refusals", "counter"),
        ("rkt_mds_rate_limited", "counter"),
        ("rkt_mds_connections_refused", "counter"),
    ] {
        assert_eq!(
            parsed.families.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    // Without --etcd, no directory families.
    assert!(parsed
        .families
        .keys()
        .all(|f| !f.starts_with("rkt_mds_etcd")));
}

#[test]
fn the_binary_describes_itself() {
    let version = cli(&["version"]);
    assert!(version.status.success());
    let dashed = cli(&["--version"]);
    assert_eq!(stdout(&version), stdout(&dashed));
    let text = stdout(&version);
    for line in [
        "rkt-mds Version: ",
        "Git Commit: ",
        "Target: ",
        "Features: ",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    assert!(
        text.contains("+ETCD_DIRECTORY") && text.contains("+SYN_FILTER"),
        "{text}"
    );

    let man = cli(&["man"]);
    assert!(man.status.success());
    assert!(stdout(&man).contains(".TH rkt-mds 1"), "{}", stdout(&man));
    let serve = cli(&["man", "serve"]);
    assert!(stdout(&serve).contains(".TH rkt-mds-serve 1"));
    assert!(
        stdout(&serve).contains("metrics\\-address"),
        "{}",
        stdout(&serve)
    );
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for page in [
        "rkt-mds.1",
        "rkt-mds-serve.1",
        "rkt-mds-audit.1",
        "rkt-mds-man.1",
    ] {
        assert!(dir.path().join(page).exists(), "{page}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = cli(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        assert!(stdout(&out).contains("registration-group"), "{shell}");
    }
    // A reader that goes away is no error worth a word.
    let mut child = Command::new(binary())
        .args(["man", "serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn json_logs_are_one_object_per_line() {
    if !require_root("json_logs_are_one_object_per_line") {
        return;
    }
    let agent = Agent::start(AgentOptions::default().arg("--log-format").arg("json"));
    // Lines arrive in 20 ms batches.
    let serving = wait_for("the start-up line", Duration::from_secs(5), || {
        agent
            .log()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect(l))
            .find(|v| v["message"] == "rkt-mds serving")
    });
    for line in agent.log().lines().filter(|l| l.contains("INFO")) {
        serde_json::from_str::<serde_json::Value>(line).expect(line);
    }
    assert_eq!(serving["level"], "INFO");
    assert!(serving["port"].is_u64(), "{serving}");
}

#[test]
fn access_lines_of_one_connection_come_out_in_order() {
    if !require_root("access_lines_of_one_connection_come_out_in_order") {
        return;
    }
    let agent = Agent::start(AgentOptions::identity("token"));
    let manifest = fixtures::read("pods/bare-pod.json");
    let token = "tok0000000000000000000000000000ac";
    let uuid = "ac0e55ed-a507-4694-aabf-edbe4fc5266f";
    assert_eq!(agent.register(uuid, token, &manifest, "").status, 200);
    let stream = std::net::TcpStream::connect(agent.loopback()).unwrap();
    let mut conn = http::Conn::new(stream);
    let paths = ["pod/uuid", "pod/annotations", "pod/manifest"];
    for i in 0..300 {
        let path = format!("/{token}/acMetadata/v1/{}", paths[i % 3]);
        assert_eq!(conn.send(&Request::get(&path)).unwrap().status, 200);
    }
    let logged = wait_for("the 300 access lines", Duration::from_secs(10), || {
        let lines: Vec<String> = agent
            .log()
            .lines()
            .filter(|l| l.contains("access:") && l.contains("acMetadata"))
            .map(str::to_owned)
            .collect();
        (lines.len() >= 300).then_some(lines)
    });
    for (i, line) in logged.iter().enumerate() {
        let want = format!("/acMetadata/v1/{} ", paths[i % 3]);
        assert!(line.contains(&want), "line {i} is not {want}: {line}");
    }
}
