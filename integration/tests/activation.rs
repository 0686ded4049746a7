//! systemd socket activation (SPEC §1) with the real
//! `systemd-socket-activate`: the registration socket and a public TCP
//! port passed as file descriptors.

use std::path::Path;

use integration::{
    agent::free_port,
    fixtures,
    http::{self, Request},
    Agent, AgentOptions,
};

const ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

fn have_tool() -> bool {
    if Path::new(ACTIVATE).exists() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{ACTIVATE} is missing (package systemd): CI must have it"
    );
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED (needs {ACTIVATE})\n").as_bytes(),
    );
    false
}

const U: &str = "6733c088-a507-4694-aabf-edbe4fc5266f";
const T: &str = "0123456789abcdef0123456789abcdef";

/// An agent started by `systemd-socket-activate` listening on a socket in
/// `root` (and on `tcp`, if given), with one pod registered through it.
/// The agent's own `--socket` names the same path: it must take the passed
/// descriptor rather than bind (binding would find the path in use).
fn activated(root: &Path, tcp: Option<String>) -> Agent {
    let socket = root.join("activated.sock");
    let mut options = AgentOptions::identity("token");
    options.launcher = vec![ACTIVATE.into(), "-l".into(), socket.display().to_string()];
    match tcp {
        Some(addr) => {
            options
                .launcher
                .extend(["-l".into(), addr, "--fdname=registration:public".into()])
        }
        None => options.launcher.push("--fdname=registration".into()),
    }
    options.socket = Some(socket);
    let agent = Agent::start(options);
    let r = agent.register(U, T, &fixtures::read("pods/bare-pod.json"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    agent
}

#[test]
fn registration_socket_passed_by_systemd() {
    if !have_tool() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut agent = activated(root.path(), None);
    assert_eq!(agent.get(&format!("/{T}/acMetadata/v1/pod/uuid")).text(), U);
    agent.log_line("the activation log line", |l| {
        l.contains("registration socket from systemd")
    });
    assert_eq!(agent.stop().code(), Some(0));
    assert!(
        agent.socket.exists(),
        "under activation the socket file is systemd's to remove"
    );
}

#[test]
fn public_port_passed_by_systemd() {
    if !have_tool() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let agent = activated(root.path(), Some(format!("127.0.0.1:{port}")));
    let activated = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let r = http::tcp(
        activated,
        &Request::get(&format!("/{T}/acMetadata/v1/pod/uuid")),
    )
    .unwrap();
    assert_eq!((r.status, r.text()), (200, U.to_owned()));
    // The agent did not bind its own --listen-port.
    assert!(http::tcp(agent.loopback(), &Request::get("/")).is_err());
    let info = agent.unix(&Request::get("/info")).json();
    assert_eq!(
        info["public_port"], port,
        "clients are told the activated port"
    );
    agent.log_line("the activation log line", |l| {
        l.contains("public listener from systemd")
    });
}
