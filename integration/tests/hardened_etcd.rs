//! The cluster directory on a hardened etcd (SPEC §10): TLS with client
//! certificates, authentication, and a role per node made by pasting
//! `rkt-mds cluster roles` into a shell. Certificates are made in the test;
//! set-up and independent checks use etcdctl as root. Also: a crash
//! restart takes its own name back at once, and a stranger that copies the
//! lease id does not. Needs root; runs in CI.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use integration::{
    agent::binary,
    etcd::{
        secure::{access_args, CertFiles, Pki, SecureEtcd},
        Etcd,
    },
    fixtures,
    http::Request,
    privilege::require_root,
    wait_for, Agent, AgentOptions,
};

fn uuid(node: u32, n: u32) -> String {
    format!("{n:08x}-5ec0-4694-aabf-{node:012x}")
}

fn token(node: u32, n: u32) -> String {
    format!("tok{node:02x}{n:027x}")
}

/// A hardened etcd with node users `nodes` (made from `cluster roles`) and
/// a reader; each user's password file and certificate in the returned
/// directory.
struct Cluster {
    etcd: SecureEtcd,
    files: tempfile::TempDir,
}

impl Cluster {
    fn new(nodes: &[&str]) -> Self {
        let etcd = SecureEtcd::start();
        let files = tempfile::tempdir().unwrap();
        for node in nodes {
            std::fs::write(
                files.path().join(format!("{node}.pw")),
                format!("pw-{node}\n"),
            )
            .unwrap();
            let out = cli(&[
                "cluster",
                "roles",
                "--node",
                node,
                "--password-file",
                &format!("{node}.pw"),
            ]);
            assert!(out.status.success(), "{}", stderr(&out));
            let pasted = etcd.run_as_root(&stdout(&out), files.path());
            // The readers' role exists after the first node's paste.
            assert!(
                pasted.status.success() || stderr(&pasted).contains("role name already exists"),
                "{}{}",
                stdout(&pasted),
                stderr(&pasted)
            );
        }
        std::fs::write(files.path().join("reader.pw"), "pw-reader\n").unwrap();
        etcd.ctl_ok(&["user", "add", "reader", "--new-user-password=pw-reader"]);
        etcd.ctl_ok(&["user", "grant-role", "reader", "rkt-mds-reader"]);
        Self { etcd, files }
    }

    /// The agent's client certificate (no common name).
    fn cert(&self, user: &str) -> CertFiles {
        self.etcd.pki.issue_client(user, false)
    }

    fn password_file(&self, name: &str) -> PathBuf {
        self.files.path().join(format!("{name}.pw"))
    }

    /// The flags of `user` (password file `pw`) with certificate `cert`.
    fn access(&self, user: &str, pw: &Path, cert: &CertFiles, ca: &Path) -> Vec<String> {
        let mut args = vec!["--etcd".into(), self.etcd.endpoint()];
        args.extend(access_args(ca, cert, user, pw));
        args
    }

    /// An agent publishing as `node` with `node`'s own user.
    fn agent(&self, node: &str, name_as: &str) -> Agent {
        let user = format!("rkt-mds-node-{node}");
        let access = self.access(
            &user,
            &self.password_file(node),
            &self.cert(&user),
            &self.etcd.pki.ca(),
        );
        agent_with(name_as, &access)
    }
}

fn agent_with(node: &str, access: &[String]) -> Agent {
    let mut options = AgentOptions::default()
        .arg("--node-name")
        .arg(node)
        .arg("--etcd-lease-ttl")
        .arg("3s");
    for a in access {
        options = options.arg(a.clone());
    }
    Agent::start(options)
}

fn cli(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().expect("rkt-mds")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn register(agent: &Agent, node: u32, n: u32) {
    let manifest = fixtures::read("pods/bare-pod.json");
    let r = agent.register(&uuid(node, n), &token(node, n), &manifest, "");
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Waits for a line of the agent's log that holds every one of `needles`.
fn wait_line(agent: &Agent, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = agent.log();
        if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needles:?} within 15 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_nodes_publish_and_a_reader_audits_each_with_its_own_credentials() {
    if !require_root("two_nodes_publish_and_a_reader_audits_each_with_its_own_credentials") {
        return;
    }
    let c = Cluster::new(&["a", "b"]);
    let (a, b) = (c.agent("a", "a"), c.agent("b", "b"));
    register(&a, 1, 1);
    register(&b, 2, 1);
    register(&b, 2, 2);
    wait_for("both nodes' pods in etcd", Duration::from_secs(10), || {
        let keys = c.etcd.keys("/rkt-mds/pods/");
        (keys.len() == 3).then_some(())
    });
    let reader = c.access(
        "reader",
        &c.password_file("reader"),
        &c.cert("reader"),
        &c.etcd.pki.ca(),
    );
    let mut args = vec!["audit", "--json"];
    args.extend(reader.iter().map(String::as_str));
    let out = cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes: Vec<&str> = audit["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["a", "b"]);
    assert_eq!(audit["pods"].as_array().unwrap().len(), 3);
    // The other readers, with the same flags.
    let mut args = vec!["jwks"];
    args.extend(reader.iter().map(String::as_str));
    let out = cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    // The reader may only read.
    let put = c.etcd.etcdctl_as(
        &["put", "/rkt-mds/pods/a/x", "y"],
        Some("reader:pw-reader".into()),
        &c.etcd.pki.issue("reader", false),
    );
    assert!(!put.status.success());
    assert!(
        stderr(&put).contains("permission denied"),
        "{}",
        stderr(&put)
    );
}

#[test]
fn a_node_cannot_write_another_nodes_keys_and_lives_with_its_own_role() {
    if !require_root("a_node_cannot_write_another_nodes_keys_and_lives_with_its_own_role") {
        return;
    }
    let mut c = Cluster::new(&["a", "b"]);
    // etcdctl speaks gRPC: a certificate with a common name is fine there.
    let a_cert = c.etcd.pki.issue("rkt-mds-node-a", false);
    let as_a = |args: &[&str]| {
        c.etcd
            .etcdctl_as(args, Some("rkt-mds-node-a:pw-a".into()), &a_cert)
    };
    // etcdctl as A: B's keys are out of reach, A's are not.
    for key in [
        "/rkt-mds/pods/b/x",
        "/rkt-mds/nodes/b",
        "/rkt-mds/elsewhere",
    ] {
        let out = as_a(&["put", key, "forged"]);
        assert!(!out.status.success(), "{key}");
        assert!(
            stderr(&out).contains("permission denied"),
            "{key}: {}",
            stderr(&out)
        );
    }
    assert!(as_a(&["put", "/rkt-mds/pods/a/x", "y"]).status.success());
    assert!(as_a(&["del", "/rkt-mds/pods/a/x"]).status.success());
    // A's agent, named as B: etcd refuses its writes, one clear line.
    let impostor = c.agent("a", "b");
    let line = wait_line(
        &impostor,
        &["ERROR", "etcd refused this agent", "permission denied"],
    );
    assert!(line.contains("rkt-mds-node-a"), "{line}");
    assert!(c.etcd.keys("/rkt-mds/nodes/").is_empty());
    drop(impostor);

    // A's agent, its full life with only its own role.
    let mut a = c.agent("a", "a");
    register(&a, 1, 1);
    register(&a, 1, 2);
    let pods = |c: &Cluster| c.etcd.keys("/rkt-mds/pods/a/");
    wait_for("A's pods", Duration::from_secs(10), || {
        (pods(&c).len() == 2).then_some(())
    });
    // An outage, and a registration during it.
    c.etcd.kill();
    register(&a, 1, 3);
    c.etcd.start_again();
    wait_for("A's pods after the outage", Duration::from_secs(30), || {
        (pods(&c).len() == 3).then_some(())
    });
    // A hand-made delete is repaired.
    c.etcd
        .ctl_ok(&["del", &format!("/rkt-mds/pods/a/{}", uuid(1, 1))]);
    wait_for("the repair", Duration::from_secs(10), || {
        (pods(&c).len() == 3).then_some(())
    });
    // A stop revokes its lease: its keys go at once.
    assert!(a.stop().success());
    assert!(pods(&c).is_empty(), "{:?}", pods(&c));
    assert!(c.etcd.keys("/rkt-mds/nodes/a").is_empty());
    assert!(!a.log().contains("permission denied"), "{}", a.log());
}

#[test]
fn a_wrong_ca_password_or_expired_certificate_is_one_clear_line_and_service_goes_on() {
    if !require_root(
        "a_wrong_ca_password_or_expired_certificate_is_one_clear_line_and_service_goes_on",
    ) {
        return;
    }
    let c = Cluster::new(&["a"]);
    let user = "rkt-mds-node-a";
    let other = Pki::new(c.files.path(), "another-ca");
    let wrong_pw = c.files.path().join("wrong.pw");
    std::fs::write(&wrong_pw, "not-the-password\n").unwrap();
    let cases = [
        (
            c.access(user, &c.password_file("a"), &c.cert(user), &other.ca()),
            "not signed by a CA in --etcd-cacert",
        ),
        (
            c.access(user, &wrong_pw, &c.cert(user), &c.etcd.pki.ca()),
            "etcd refused user rkt-mds-node-a: wrong password",
        ),
        (
            c.access(
                user,
                &c.password_file("a"),
                &c.etcd.pki.issue_client(user, true),
                &c.etcd.pki.ca(),
            ),
            "refused our client certificate",
        ),
        (
            c.access(
                user,
                &c.password_file("a"),
                &c.etcd.pki.issue(user, false),
                &c.etcd.pki.ca(),
            ),
            "refuses a client certificate with a common name",
        ),
    ];
    for (access, says) in cases {
        let agent = agent_with("a", &access);
        let line = wait_line(&agent, &["ERROR", says]);
        assert!(line.contains("local service goes on"), "{line}");
        // Said once, not per retry (the publisher has retried).
        wait_for("a retry", Duration::from_secs(15), || {
            (agent.metric("rkt_mds_etcd_publish_errors_total") >= 2).then_some(())
        });
        assert_eq!(agent.log().matches(says).count(), 1, "{}", agent.log());
        register(&agent, 1, 1);
        assert_eq!(agent.unix(&Request::get("/health")).status, 200);
    }
    assert!(c.etcd.keys("/rkt-mds/").is_empty());
}

#[test]
fn a_crash_restart_takes_its_name_back_at_once_and_a_stranger_does_not() {
    if !require_root("a_crash_restart_takes_its_name_back_at_once_and_a_stranger_does_not") {
        return;
    }
    let etcd = Etcd::start();
    // A long lease: waiting for it to expire would take 30 s.
    let options = || {
        AgentOptions::default()
            .arg("--node-name")
            .arg("crashy")
            .arg("--etcd")
            .arg(etcd.endpoint())
            .arg("--etcd-lease-ttl")
            .arg("30s")
    };
    let mut agent = Agent::start(options());
    register(&agent, 7, 1);
    let first = wait_for("the first session", Duration::from_secs(10), || {
        let (_, lease) = etcd.node_record("crashy").ok()??;
        (etcd.pods_of("crashy").ok()?.len() == 1).then_some(lease)
    });
    agent.kill();
    let restarted = Instant::now();
    agent.restart();
    register(&agent, 7, 2);
    let second = wait_for("the restart's session", Duration::from_secs(10), || {
        let (_, lease) = etcd.node_record("crashy").ok()??;
        let pods = etcd.pods_of("crashy").ok()?;
        (lease != first && pods.len() == 2 && pods.values().all(|(_, l)| *l == lease))
            .then_some(lease)
    });
    eprintln!(
        "crash restart: the node's keys current again {:?} after the restart began",
        restarted.elapsed()
    );
    assert!(
        !etcd.lease_alive(first),
        "the crashed run's lease is revoked"
    );
    assert!(
        !agent
            .log()
            .contains("held in etcd under another live lease"),
        "{}",
        agent.log()
    );

    // A stranger with the lease id (readable by anyone) but not the secret.
    agent.kill();
    let stranger = Agent::start(options());
    std::fs::copy(
        agent.state_dir().join("etcd-lease.json"),
        stranger.state_dir().join("etcd-lease.json"),
    )
    .unwrap();
    let mut stranger = stranger;
    stranger.stop();
    stranger.restart();
    wait_line(
        &stranger,
        &["ERROR", "held in etcd under another live lease"],
    );
    let (_, lease) = etcd.node_record("crashy").unwrap().unwrap();
    assert_eq!(lease, second, "the stranger took the name");
}
