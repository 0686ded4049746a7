//! One trust domain over two nodes (SPEC §9 with §8): two agents publish
//! their X.509 authorities to a real etcd, each hands its pods the whole
//! trust domain's bundle, and a pod on one node holds a mutual-TLS
//! conversation with a pod on the other, each trusting only what its own
//! agent gave it. `rkt-mds bundle --etcd` lists both nodes. Needs root and
//! etcd; runs in CI.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use integration::{
    agent::binary, etcd::Etcd, fixtures, http::Request, openssl, privilege::require_root, wait_for,
    Agent, AgentOptions, Bridge, PodNet,
};
use serde_json::Value;

const T_A: &str = "aaaa56789abcdef0123456789abcdef0";
const T_B: &str = "bbbb56789abcdef0123456789abcdef0";
const U_A: &str = "aaaaaaaa-a507-4694-aabf-edbe4fc5266f";
const U_B: &str = "bbbbbbbb-a507-4694-aabf-edbe4fc5266f";

fn agent(node: &str, etcd: &Etcd) -> Agent {
    Agent::start(
        AgentOptions::identity("token+netns")
            .arg("--node-name")
            .arg(node)
            .arg("--etcd")
            .arg(etcd.endpoint())
            .arg("--etcd-lease-ttl")
            .arg("5s"),
    )
}

fn x509_count(bundle: &Value) -> usize {
    bundle["keys"]
        .as_array()
        .map_or(0, |k| k.iter().filter(|k| k["use"] == "x509-svid").count())
}

#[test]
fn pods_on_two_nodes_trust_each_other() {
    if !require_root("pods_on_two_nodes_trust_each_other") {
        return;
    }
    let etcd = Etcd::start();
    let (one, two) = (agent("node-one", &etcd), agent("node-two", &etcd));
    let bridge = Bridge::new();
    let (a, b) = (PodNet::on_bridge(&bridge), PodNet::on_bridge(&bridge));
    bridge.enforce(&a);
    bridge.enforce(&b);
    let manifest = fixtures::read(fixtures::WEB.manifest);
    one.register_in(U_A, T_A, &manifest, &a);
    two.register_in(U_B, T_B, &manifest, &b);
    // Each agent's bundle grows to both nodes' authorities (the other
    // node's read from etcd, every 10 s).
    let bundles: Vec<Value> = [&one, &two]
        .iter()
        .map(|agent| {
            wait_for(
                "the other node's authority in the bundle",
                Duration::from_secs(30),
                || {
                    let b = agent
                        .unix(&Request::get("/.well-known/spiffe-bundle"))
                        .json();
                    (x509_count(&b) == 2).then_some(b)
                },
            )
        })
        .collect();
    let out = Command::new(binary())
        .args(["bundle", "--etcd", &etcd.endpoint()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cluster: Value = serde_json::from_slice(&out.stdout).expect("bundle JSON");
    assert_eq!(x509_count(&cluster), 2, "{cluster}");
    assert!(
        cluster["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["use"] == "jwt-svid")
            .count()
            >= 2,
        "{cluster}"
    );
    // An SVID for each pod from its own node.
    let dir = tempfile::tempdir().unwrap();
    let to = |agent: &Agent| SocketAddr::new(IpAddr::V4(bridge.v4()), agent.port);
    let (cert_a, key_a) = openssl::pod_svid(&a, to(&one), T_A, dir.path(), "a");
    let (cert_b, key_b) = openssl::pod_svid(&b, to(&two), T_B, dir.path(), "b");
    let (ca_a, _) = openssl::bundle_file(&bundles[0], dir.path(), "one.pem");
    let (ca_b, _) = openssl::bundle_file(&bundles[1], dir.path(), "two.pem");
    let port = 19443 + (std::process::id() % 1000) as u16;
    let tls_a = openssl::Tls {
        pod: &a,
        cert: &cert_a,
        key: &key_a,
        ca: &ca_a,
    };
    let tls_b = openssl::Tls {
        pod: &b,
        cert: &cert_b,
        key: &key_b,
        ca: &ca_b,
    };
    openssl::assert_mutual_tls(tls_a, tls_b, port);
    // Without the other node's authority, the same handshake fails: the
    // test above proves the bundle, not a lenient verifier.
    let (own_only, n) = openssl::bundle_file(
        &serde_json::json!({"keys": [{"use": "x509-svid", "x5c": local_x5c(&two)}]}),
        dir.path(),
        "two-only.pem",
    );
    assert_eq!(n, 1);
    let (ok, client, _) = openssl::mutual_tls(
        tls_a,
        openssl::Tls {
            ca: &own_only,
            ..tls_b
        },
        port + 1,
    );
    assert!(
        !ok,
        "B trusted A with only its own node's authority: {client}"
    );
}

/// The `x5c` of `agent`'s own authority (its CA file in the state dir).
fn local_x5c(agent: &Agent) -> Value {
    let stored: Value = serde_json::from_slice(
        &std::fs::read(agent.state_dir().join("x509-ca.json")).expect("the CA file"),
    )
    .expect("the CA file's JSON");
    serde_json::json!([stored["cert"]])
}
