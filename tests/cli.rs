//! The binary's command line: help texts and fatal-error exit codes.
//! (Also makes `cargo test --workspace` build the binary that the
//! integration tests run.)

use std::process::Command;

fn rkt_mds(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rkt-mds"))
        .args(args)
        .env_remove("LISTEN_PID")
        .output()
        .expect("run rkt-mds")
}

#[test]
fn serve_help_explains_every_option() {
    let out = rkt_mds(&["serve", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--listen-port",
        "--listen-address",
        "--socket",
        "--dir",
        "--state-dir",
        "--runtime-dir",
        "--identity",
        "--require-metadata-flavor",
        "--debug",
        "18112",
        "token+netns",
    ] {
        assert!(help.contains(opt), "serve --help lacks {opt}:\n{help}");
    }
}

#[test]
fn a_configuration_error_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    // The socket path exists and is not a socket: refuse to replace it.
    let not_socket = dir.path().join("file");
    std::fs::write(&not_socket, b"precious").unwrap();
    let out = rkt_mds(&[
        "serve",
        "--socket",
        not_socket.to_str().unwrap(),
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
        "--runtime-dir",
        dir.path().join("run").to_str().unwrap(),
        "--listen-port",
        "0",
        "--metrics-address",
        "off",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("cannot listen: ") && errors[0].contains("not a socket"),
        "{err}"
    );
    assert!(!err.contains("rkt-mds serving"), "{err}");
    assert_eq!(std::fs::read(&not_socket).unwrap(), b"precious");
}

#[test]
fn client_commands_say_how_to_start_the_agent() {
    let out = rkt_mds(&["audit", "--socket", "/nonexistent/mds.sock"]);
    assert_eq!(out.status.code(), Some(254));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rkt-mds serve"), "{err}");
}

#[test]
fn verify_outside_a_pod_is_an_error_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_rkt-mds"))
        .args([
            "verify",
            "--file",
            "/etc/hostname",
            "--uuid",
            "x",
            "--signature",
            "y",
        ])
        .env_remove("AC_METADATA_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn etcd_access_flags_without_etcd_are_refused() {
    // Silently ignored, a --etcd-cacert or --etcd-user would leave an
    // operator believing a hardened setup is in use when none is.
    for args in [
        &["serve", "--etcd-cacert", "/ca.pem"][..],
        &["serve", "--etcd-user", "u", "--etcd-password-file", "/p"][..],
        &["audit", "--etcd-cert", "/c.pem", "--etcd-key", "/k.pem"][..],
    ] {
        let out = rkt_mds(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--etcd <ENDPOINTS>"), "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, br#"{"keys":[]}"#).unwrap();
    let out = rkt_mds(&[
        "verify-token",
        "--audience",
        "a",
        "--jwks",
        jwks.to_str().unwrap(),
        "--etcd-cacert",
        "/ca.pem",
        "t",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--etcd-cacert goes with --etcd"), "{err}");
}
