//! Network-namespace-aware identity (SPEC §5, DESIGN "Identity model")
//! against real pods: namespaces joined to the host by veth pairs, requests
//! made from inside them. Needs root; runs in CI.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use integration::{
    fixtures,
    http::{self, Conn, Request, Response},
    pod::Addressing,
    privilege::require_root,
    wait_for, Agent, AgentOptions, PodNet,
};
use serde_json::Value;

const T_A: &str = "aaaa56789abcdef0123456789abcdef0";
const T_B: &str = "bbbb56789abcdef0123456789abcdef0";
const T_C: &str = "cccc56789abcdef0123456789abcdef0";
const U_A: &str = "aaaaaaaa-a507-4694-aabf-edbe4fc5266f";
const U_B: &str = "bbbbbbbb-a507-4694-aabf-edbe4fc5266f";
const U_C: &str = "cccccccc-a507-4694-aabf-edbe4fc5266f";

/// Registers `pod` (web fixture + its apps) bound to its namespace.
fn register(agent: &Agent, pod: &PodNet, uuid: &str, token: &str) {
    agent.register_fixture(
        uuid,
        token,
        &fixtures::WEB,
        &format!("&netns={}", pod.netns_path()),
    );
}

/// One request from inside `pod` to the agent's host-side address.
fn from_pod(agent: &Agent, pod: &PodNet, v6: bool, req: &Request) -> Response {
    let dst = if v6 {
        IpAddr::V6(pod.host_v6())
    } else {
        IpAddr::V4(pod.host_v4())
    };
    from_pod_src(agent, pod, None, dst, req)
}

fn from_pod_src(
    agent: &Agent,
    pod: &PodNet,
    src: Option<IpAddr>,
    dst: IpAddr,
    req: &Request,
) -> Response {
    let stream = pod
        .connect(src, SocketAddr::new(dst, agent.port))
        .expect("connect from pod");
    Conn::new(stream).send(req).expect("request from pod")
}

fn get(token: &str, endpoint: &str) -> Request {
    if token.is_empty() {
        Request::get(&format!("/acMetadata/v1/{endpoint}"))
    } else {
        Request::get(&format!("/{token}/acMetadata/v1/{endpoint}"))
    }
}

fn pod_state(agent: &Agent, uuid: &str) -> Value {
    agent
        .pod_entry(uuid)
        .unwrap_or_else(|| panic!("{uuid} not listed"))
}

#[test]
fn t1_own_token_from_own_namespace_is_served_over_ipv4_and_ipv6() {
    if !require_root("t1_own_token_from_own_namespace") {
        return;
    }
    let agent = Agent::start(AgentOptions::identity("token+netns"));
    let a = PodNet::new();
    register(&agent, &a, U_A, T_A);
    for v6 in [false, true] {
        for endpoint in [
            "pod/uuid",
            "pod/manifest",
            "pod/annotations",
            "pod/annotations/example.com/owner",
            "apps/web/annotations",
            "apps/web/annotations/example.com/tier",
            "apps/web/image/manifest",
            "apps/web/image/id",
            "apps/log-shipper/annotations",
        ] {
            let r = from_pod(&agent, &a, v6, &get(T_A, endpoint));
            assert_eq!(r.status, 200, "{endpoint} v6={v6}: {}", r.text());
        }
        assert_eq!(from_pod(&agent, &a, v6, &get(T_A, "pod/uuid")).text(), U_A);
        let sig = from_pod(
            &agent,
            &a,
            v6,
            &Request::form(
                &format!("/{T_A}/acMetadata/v1/pod/hmac/sign"),
                &[("content", "x")],
            ),
        );
        assert_eq!(sig.status, 200);
        let v = from_pod(
            &agent,
            &a,
            v6,
            &Request::form(
                &format!("/{T_A}/acMetadata/v1/pod/hmac/verify"),
                &[("content", "x"), ("uuid", U_A), ("signature", &sig.text())],
            ),
        );
        assert_eq!(v.status, 200);
    }
    let entry = pod_state(&agent, U_A);
    assert_eq!(entry["state"], "verified");
    let addrs = entry["addresses"].as_array().unwrap();
    assert!(
        addrs.contains(&Value::from(a.v4().to_string()))
            && addrs.contains(&Value::from(a.v6().to_string())),
        "{entry}"
    );
}

#[test]
fn t2_a_stolen_token_is_refused_from_another_pod() {
    if !require_root("t2_a_stolen_token_is_refused") {
        return;
    }
    for (mode, expected) in [("token+netns", 403), ("netns", 403), ("token", 200)] {
        let agent = Agent::start(AgentOptions::identity(mode));
        let (a, b) = (PodNet::new(), PodNet::new());
        register(&agent, &a, U_A, T_A);
        register(&agent, &b, U_B, T_B);
        for v6 in [false, true] {
            let r = from_pod(&agent, &b, v6, &get(T_A, "pod/uuid"));
            assert_eq!(r.status, expected, "{mode} v6={v6}: {}", r.text());
            if expected == 403 {
                assert_eq!(
                    r.text(),
                    "source address is not in the pod's network namespace"
                );
            } else {
                assert_eq!(r.text(), U_A, "token mode is rkt's behaviour");
            }
            assert_eq!(from_pod(&agent, &b, v6, &get(T_B, "pod/uuid")).status, 200);
        }
        if expected == 403 {
            let line = agent.log_line("the refusal event", |l| l.contains("identity refused"));
            let log = agent.log();
            assert!(
                line.contains("WARN") && line.contains(U_A) && line.contains(&b.v4().to_string()),
                "{line}"
            );
            assert!(!log.contains(T_A), "token in the log");
        }
    }
}

#[test]
fn t3_tokenless_requests_resolve_by_namespace_in_netns_mode_only() {
    if !require_root("t3_tokenless_requests") {
        return;
    }
    for (mode, expected) in [("netns", 200), ("token+netns", 401), ("token", 401)] {
        let agent = Agent::start(AgentOptions::identity(mode));
        let (a, b) = (PodNet::new(), PodNet::new());
        register(&agent, &a, U_A, T_A);
        register(&agent, &b, U_B, T_B);
        for v6 in [false, true] {
            let r = from_pod(&agent, &a, v6, &get("", "pod/uuid"));
            assert_eq!(r.status, expected, "{mode}: {}", r.text());
            if expected == 200 {
                assert_eq!(r.text(), U_A);
                assert_eq!(from_pod(&agent, &b, v6, &get("", "pod/uuid")).text(), U_B);
                let names = from_pod(&agent, &a, v6, &get("", "apps/web/annotations"));
                assert_eq!(names.status, 200);
            }
        }
        if mode == "netns" {
            // From the host (no pod holds 127.0.0.1 for us): nobody.
            let r = agent.get("/acMetadata/v1/pod/uuid");
            assert_eq!(
                (r.status, r.text().as_str()),
                (403, "source address belongs to no registered pod")
            );
        }
    }
}

#[test]
fn t4_addresses_added_and_removed_at_run_time_are_followed() {
    if !require_root("t4_addresses_added_and_removed") {
        return;
    }
    let agent = Agent::start(AgentOptions::identity("token+netns"));
    let (a, b) = (PodNet::new(), PodNet::new());
    register(&agent, &a, U_A, T_A);
    register(&agent, &b, U_B, T_B);
    // An extra address from another /30 of the test range, routed back to
    // the pod by a host route on its veth.
    let extra = PodNet::new_addressing_v4();
    a.exec(&["addr", "add", &format!("{extra}/32"), "dev", "eth0"]);
    let route = integration::pod::HostRoute::add(&format!("{extra}/32"), &a.host_if);

    // The very first request from it is accepted: no restart, no polling.
    let r = from_pod_src(
        &agent,
        &a,
        Some(IpAddr::V4(extra)),
        IpAddr::V4(a.host_v4()),
        &get(T_A, "pod/uuid"),
    );
    assert_eq!((r.status, r.text()), (200, U_A.to_owned()));
    assert!(pod_state(&agent, U_A)["addresses"]
        .as_array()
        .unwrap()
        .contains(&Value::from(extra.to_string())));

    // Removed: it leaves A's inventory...
    a.exec(&["addr", "del", &format!("{extra}/32"), "dev", "eth0"]);
    wait_for(
        "the removed address to leave A's inventory",
        Duration::from_secs(5),
        || {
            (!pod_state(&agent, U_A)["addresses"]
                .as_array()
                .unwrap()
                .contains(&Value::from(extra.to_string())))
            .then_some(())
        },
    );
    // ...and A's token is no longer accepted from it, now in B's hands.
    drop(route);
    b.exec(&["addr", "add", &format!("{extra}/32"), "dev", "eth0"]);
    let _route_b = integration::pod::HostRoute::add(&format!("{extra}/32"), &b.host_if);
    let r = from_pod_src(
        &agent,
        &b,
        Some(IpAddr::V4(extra)),
        IpAddr::V4(b.host_v4()),
        &get(T_A, "pod/uuid"),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = from_pod_src(
        &agent,
        &b,
        Some(IpAddr::V4(extra)),
        IpAddr::V4(b.host_v4()),
        &get(T_B, "pod/uuid"),
    );
    assert_eq!((r.status, r.text()), (200, U_B.to_owned()));
}

#[test]
fn t5_a_reused_address_belongs_to_the_new_pod_at_once() {
    if !require_root("t5_a_reused_address") {
        return;
    }
    let agent = Agent::start(AgentOptions::identity("netns"));
    let addressing = Addressing::fresh();
    let a = PodNet::with_addressing(addressing);
    register(&agent, &a, U_A, T_A);
    assert_eq!(
        from_pod(&agent, &a, false, &get("", "pod/uuid")).text(),
        U_A
    );
    // A dies without being unregistered (a crashed runtime).
    a.teardown();
    let c = PodNet::with_addressing(addressing);
    register(&agent, &c, U_C, T_C);
    for v6 in [false, true] {
        let r = from_pod(&agent, &c, v6, &get("", "pod/uuid"));
        assert_eq!(
            (r.status, r.text()),
            (200, U_C.to_owned()),
            "tokenless, v6={v6}"
        );
        let r = from_pod(&agent, &c, v6, &get(T_C, "pod/uuid"));
        assert_eq!(
            (r.status, r.text()),
            (200, U_C.to_owned()),
            "own token, v6={v6}"
        );
        let r = from_pod(&agent, &c, v6, &get(T_A, "pod/uuid"));
        assert_eq!(r.status, 403, "A's token from C, v6={v6}: {}", r.text());
    }
}

#[test]
fn t6_a_pod_claiming_anothers_address_is_a_conflict_and_denies_nothing() {
    if !require_root("t6_a_pod_claiming_anothers_address") {
        return;
    }
    for mode in ["netns", "token+netns"] {
        let agent = Agent::start(AgentOptions::identity(mode));
        let (a, b) = (PodNet::new(), PodNet::new());
        register(&agent, &a, U_A, T_A);
        register(&agent, &b, U_B, T_B);
        // B also claims A's address on its own eth0 (a spoofing tenant);
        // the host still routes it to A's veth.
        b.exec(&["addr", "add", &format!("{}/32", a.v4()), "dev", "eth0"]);
        wait_for("the conflict to be listed", Duration::from_secs(5), || {
            (pod_state(&agent, U_B)["state"] == "conflict").then_some(())
        });
        let e = pod_state(&agent, U_B);
        assert_eq!(
            e["conflicts"],
            serde_json::json!([a.v4().to_string()]),
            "{e}"
        );
        // The rightful pod keeps its identity, by address and by token.
        let e = pod_state(&agent, U_A);
        assert_eq!(e["state"], "verified", "{e}");
        assert_eq!(e["conflicts"], serde_json::json!([]), "{e}");
        assert_eq!(e["attribution"]["path"], "routed", "{e}");
        if mode == "netns" {
            let r = from_pod(&agent, &a, false, &get("", "pod/uuid"));
            assert_eq!((r.status, r.text()), (200, U_A.to_owned()), "{mode}");
            let r = from_pod(&agent, &b, false, &get("", "pod/uuid"));
            assert_eq!((r.status, r.text()), (200, U_B.to_owned()), "{mode}");
        }
        assert_eq!(
            from_pod(&agent, &a, false, &get(T_A, "pod/uuid")).text(),
            U_A
        );
        assert_eq!(
            from_pod(&agent, &b, false, &get(T_B, "pod/uuid")).text(),
            U_B
        );
        // B cannot use its claim: a connection from A's address out of B's
        // namespace never completes (the host answers A), so the closest B
        // gets is its own token from its own address, refused for A's.
        assert_eq!(
            from_pod(&agent, &b, false, &get(T_A, "pod/uuid")).status,
            403
        );
        let check = agent.unix(&Request::get("/pods"));
        assert_eq!(check.status, 200);
    }
}

#[test]
fn t7_a_host_network_pod_is_served_on_the_host_only() {
    if !require_root("t7_a_host_network_pod") {
        return;
    }
    for mode in ["token+netns", "netns", "token"] {
        let agent = Agent::start(AgentOptions::identity(mode));
        let a = PodNet::new();
        let stranger = PodNet::new(); // an unregistered namespace
        register(&agent, &a, U_A, T_A);
        let r = agent.register(U_B, T_B, &fixtures::read("pods/bare-pod.json"), "");
        assert_eq!(r.status, 200);
        assert_eq!(pod_state(&agent, U_B)["state"], "host-network");
        // From the host: loopback, and the host's own address on a veth.
        let r = agent.get(&format!("/{T_B}/acMetadata/v1/pod/uuid"));
        assert_eq!((r.status, r.text()), (200, U_B.to_owned()), "{mode}");
        let host = http::tcp(agent.public(IpAddr::V4(a.host_v4())), &get(T_B, "pod/uuid")).unwrap();
        assert_eq!((host.status, host.text()), (200, U_B.to_owned()), "{mode}");
        // Its token used from inside a registered pod, or from a namespace
        // nobody registered, is refused (rkt's token mode excepted).
        for (who, pod) in [("registered pod", &a), ("stranger", &stranger)] {
            for v6 in [false, true] {
                let r = from_pod(&agent, pod, v6, &get(T_B, "pod/uuid"));
                if mode == "token" {
                    assert_eq!(r.status, 200, "{mode} {who}");
                } else {
                    assert_eq!(
                        (r.status, r.text().as_str()),
                        (403, "source address is not on this host"),
                        "{mode} {who} v6={v6}"
                    );
                }
            }
        }
    }
}

#[test]
fn t8_rkt_style_lazy_discovery_and_the_uuid_cross_check() {
    if !require_root("t8_rkt_style_lazy_discovery") {
        return;
    }
    let agent = Agent::start(AgentOptions::identity("token+netns"));
    let (a, b) = (PodNet::new(), PodNet::new());
    let pod_dir = agent.rkt_dir().join("pods/run").join(U_A);
    std::fs::create_dir_all(&pod_dir).unwrap();
    // rkt registers first...
    let r = agent.register(U_A, T_A, &fixtures::read("pods/web-pod.json"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(pod_state(&agent, U_A)["state"], "netns-unknown");
    // ...then writes the netns file.
    std::fs::write(pod_dir.join("netns"), a.netns_path()).unwrap();
    let r = from_pod(&agent, &a, false, &get(T_A, "pod/uuid"));
    assert_eq!((r.status, r.text()), (200, U_A.to_owned()));
    let e = pod_state(&agent, U_A);
    assert_eq!(e["state"], "verified", "{e}");
    assert_eq!(e["netns"]["path"], a.netns_path());
    // Now bound: the token from B is refused.
    assert_eq!(
        from_pod(&agent, &b, false, &get(T_A, "pod/uuid")).status,
        403
    );

    // Cross-check: the registration names B while rkt's file names A.
    let dir_c = agent.rkt_dir().join("pods/run").join(U_C);
    std::fs::create_dir_all(&dir_c).unwrap();
    std::fs::write(dir_c.join("netns"), a.netns_path()).unwrap();
    let r = agent.register(
        U_C,
        T_C,
        &fixtures::read("pods/bare-pod.json"),
        &format!("&netns={}", b.netns_path()),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(agent.pod_entry(U_C).is_none());
}

#[test]
fn t9_the_agent_never_keeps_a_deleted_namespace_alive() {
    if !require_root("t9_the_agent_never_keeps_a_deleted_namespace_alive") {
        return;
    }
    let agent = Agent::start(AgentOptions::identity("token+netns"));
    // Unregistered, then deleted.
    let mut a = PodNet::new();
    register(&agent, &a, U_A, T_A);
    assert_eq!(
        from_pod(&agent, &a, false, &get(T_A, "pod/uuid")).status,
        200
    );
    assert_eq!(agent.unregister(U_A).status, 200);
    a.delete_netns_only();
    wait_for(
        "the kernel to free A's namespace (its veth vanishes)",
        Duration::from_secs(10),
        || (!a.host_link_exists()).then_some(()),
    );

    // Deleted while still registered: the agent notices and lets go.
    let mut b = PodNet::new();
    register(&agent, &b, U_B, T_B);
    assert_eq!(
        from_pod(&agent, &b, false, &get(T_B, "pod/uuid")).status,
        200
    );
    b.delete_netns_only();
    wait_for(
        "the kernel to free B's namespace (its veth vanishes)",
        Duration::from_secs(10),
        || (!b.host_link_exists()).then_some(()),
    );
    assert_eq!(pod_state(&agent, U_B)["state"], "netns-gone");
    assert_eq!(
        agent.get(&format!("/{T_B}/acMetadata/v1/pod/uuid")).status,
        403
    );
}

#[test]
fn t10_hits_do_no_netlink_round_trip() {
    if !require_root("t10_hits_do_no_netlink_round_trip") {
        return;
    }
    // 10,000 requests at full speed: beyond the default rate limit.
    let agent = Agent::start(
        AgentOptions::identity("token+netns")
            .arg("--rate-limit")
            .arg("0"),
    );
    let a = PodNet::new();
    register(&agent, &a, U_A, T_A);
    let before = agent.pods()["watch"].clone();
    let stream = a
        .connect(None, SocketAddr::new(IpAddr::V4(a.host_v4()), agent.port))
        .unwrap();
    let mut conn = Conn::new(stream);
    let req = get(T_A, "pod/uuid");
    for i in 0..10_000 {
        let r = conn.send(&req).unwrap();
        assert_eq!(r.status, 200, "request {i}");
    }
    let after = agent.pods()["watch"].clone();
    assert_eq!(after["redumps"], before["redumps"], "{before} -> {after}");
    assert_eq!(after["dumps"], before["dumps"]);
    let metrics = agent.unix(&Request::get("/metrics")).text();
    assert!(
        metrics.contains(&format!(
            "rkt_mds_netlink_redumps_total {}",
            before["redumps"]
        )),
        "{metrics}"
    );
}
