//! Attribution from the host's side (SPEC §5 "Host-side attribution"): a
//! pod controls the addresses inside its own namespace, never the host's
//! route, veth, neighbour entry or FDB port that lead to it. Takeovers by a
//! registered pod, by an unregistered namespace and of a host address, in
//! each identity mode that checks. Needs root; runs in CI.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use integration::{
    fixtures,
    http::{self, Conn, Request, Response},
    privilege::require_root,
    wait_for, Agent, AgentOptions, PodNet,
};
use serde_json::Value;

const T_V: &str = "vvvv56789abcdef0123456789abcdef0";
const T_H: &str = "hhhh56789abcdef0123456789abcdef0";
const T_N: &str = "nnnn56789abcdef0123456789abcdef0";
const U_V: &str = "0000000a-a507-4694-aabf-edbe4fc5266f";
const U_H: &str = "0000000b-a507-4694-aabf-edbe4fc5266f";
const U_N: &str = "0000000c-a507-4694-aabf-edbe4fc5266f";

fn get(token: &str, endpoint: &str) -> Request {
    if token.is_empty() {
        Request::get(&format!("/acMetadata/v1/{endpoint}"))
    } else {
        Request::get(&format!("/{token}/acMetadata/v1/{endpoint}"))
    }
}

/// One request from inside `pod` (from `src`, if given) to `dst`.
fn from(
    agent: &Agent,
    pod: &PodNet,
    src: Option<IpAddr>,
    dst: IpAddr,
    req: &Request,
) -> Option<Response> {
    let stream = pod.connect(src, SocketAddr::new(dst, agent.port)).ok()?;
    Conn::new(stream).send(req).ok()
}

fn from_pod(agent: &Agent, pod: &PodNet, req: &Request) -> Response {
    from(agent, pod, None, IpAddr::V4(pod.host_v4()), req).expect("request from pod")
}

fn entry(agent: &Agent, uuid: &str) -> Value {
    agent.pod_entry(uuid).unwrap_or(Value::Null)
}

fn register(agent: &Agent, pod: &PodNet, uuid: &str, token: &str) {
    agent.register_in(uuid, token, &fixtures::read(fixtures::WEB.manifest), pod);
}

/// A namespace nobody registered takes a registered pod's token and
/// address: in a routed topology the host sends the replies for that
/// address to the rightful pod, so the stranger never completes a
/// connection from it, and its own address is not the pod's.
#[test]
fn an_unregistered_namespace_gains_nothing_from_a_stolen_token_and_address() {
    if !require_root("an_unregistered_namespace_gains_nothing") {
        return;
    }
    for mode in ["token+netns", "netns"] {
        let agent = Agent::start(AgentOptions::identity(mode));
        let v = PodNet::new();
        let stranger = PodNet::new();
        register(&agent, &v, U_V, T_V);
        let r = from_pod(&agent, &stranger, &get(T_V, "pod/uuid"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (403, "source address is not in the pod's network namespace"),
            "{mode}"
        );
        if mode == "netns" {
            let r = from_pod(&agent, &stranger, &get("", "pod/uuid"));
            assert_eq!(r.status, 403, "{mode}: {}", r.text());
        }
        // The takeover: V's address on the stranger's eth0, used as source.
        stranger.exec(&["addr", "add", &format!("{}/32", v.v4()), "dev", "eth0"]);
        // One attempt per mode (each waits for a connect that never
        // completes): V's token, or none where that identifies.
        let token = if mode == "netns" { "" } else { T_V };
        {
            let got = from(
                &agent,
                &stranger,
                Some(IpAddr::V4(v.v4())),
                IpAddr::V4(stranger.host_v4()),
                &get(token, "pod/uuid"),
            );
            assert!(
                got.as_ref().is_none_or(|r| r.status != 200),
                "{mode}: the stranger was served as V: {:?}",
                got.map(|r| r.text())
            );
        }
        // V is untouched.
        let r = from_pod(&agent, &v, &get(T_V, "pod/uuid"));
        assert_eq!((r.status, r.text()), (200, U_V.to_owned()), "{mode}");
        assert_eq!(entry(&agent, U_V)["state"], "verified");
    }
}

/// A pod that puts a host address on its own eth0 changes nothing for
/// host-network tokens (the host's own view decides) and is listed as a
/// conflict.
#[test]
fn a_pod_claiming_a_host_address_changes_nothing() {
    if !require_root("a_pod_claiming_a_host_address_changes_nothing") {
        return;
    }
    for mode in ["token+netns", "netns"] {
        let agent = Agent::start(AgentOptions::identity(mode));
        let v = PodNet::new();
        let h = PodNet::new();
        register(&agent, &v, U_V, T_V);
        register(&agent, &h, U_H, T_H);
        let r = agent.register(U_N, T_N, &fixtures::read("pods/bare-pod.json"), "");
        assert_eq!(r.status, 200, "{}", r.text());
        // H claims V's host-side address (a host address).
        let host_addr = v.host_v4();
        h.exec(&["addr", "add", &format!("{host_addr}/32"), "dev", "eth0"]);
        wait_for("H's conflict", Duration::from_secs(5), || {
            (entry(&agent, U_H)["state"] == "conflict").then_some(())
        });
        assert_eq!(
            entry(&agent, U_H)["conflicts"],
            serde_json::json!([host_addr.to_string()])
        );
        // The host-network token, from that host address and loopback.
        for dst in [IpAddr::V4(host_addr), IpAddr::from([127, 0, 0, 1])] {
            let r = http::tcp(SocketAddr::new(dst, agent.port), &get(T_N, "pod/uuid")).unwrap();
            assert_eq!((r.status, r.text()), (200, U_N.to_owned()), "{mode} {dst}");
        }
        // V and H themselves are unaffected.
        assert_eq!(from_pod(&agent, &v, &get(T_V, "pod/uuid")).status, 200);
        assert_eq!(from_pod(&agent, &h, &get(T_H, "pod/uuid")).status, 200);
        // The host-network token from H is still refused.
        let r = from_pod(&agent, &h, &get(T_N, "pod/uuid"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (403, "source address is not on this host")
        );
    }
}

/// Two watchers of one namespace instance (it was named by two paths: a
/// `netns=` file and a process's `/proc/PID/ns/net`): the host's id for
/// the instance belongs to both, and letting one go must not take the
/// instance's attribution from the other.
#[test]
fn a_second_watcher_of_an_instance_leaving_keeps_its_attribution() {
    if !require_root("a_second_watcher_of_an_instance_leaving_keeps_its_attribution") {
        return;
    }
    let agent = Agent::start(AgentOptions::identity("token+netns"));
    let v = PodNet::new();
    let process = v.spawn_process();
    register(&agent, &v, U_V, T_V);
    let r = agent.register(
        U_N,
        T_N,
        &fixtures::read(fixtures::WEB.manifest),
        &format!("&pid={}", process.pid()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        agent.pods()["watch"]["watched"],
        3,
        "two paths, two watchers"
    );
    for token in [T_V, T_N] {
        let r = from_pod(&agent, &v, &get(token, "pod/uuid"));
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // The pid-named watcher goes; the netns-named one stays.
    assert_eq!(agent.unregister(U_N).status, 200);
    wait_for(
        "the second watcher to stop",
        Duration::from_secs(10),
        || (agent.pods()["watch"]["watched"] == 2).then_some(()),
    );
    let r = from_pod(&agent, &v, &get(T_V, "pod/uuid"));
    assert_eq!((r.status, r.text().as_str()), (200, U_V));
    assert_eq!(entry(&agent, U_V)["attribution"]["path"], "routed");
}
