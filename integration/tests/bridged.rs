//! Bridged pods (SPEC §5 "Host-side attribution", issue 11): pods whose
//! veths are ports of a Linux bridge, attributed by the host's neighbour
//! entry → FDB port → veth → namespace. Real namespaces, IPv4 and IPv6.
//! Needs root; runs in CI.
//!
//! Each scenario gets its own bridge and pods, and finishes well within 15
//! seconds of plumbing them: see
//! `a_bridged_pod_stays_attributed_after_its_port_settles` for what the
//! bridge tells the host then.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use integration::{
    bridge::format_mac,
    fixtures,
    http::{Conn, Request},
    privilege::require_root,
    Agent, AgentOptions, Bridge, PodNet,
};

const T_V: &str = "vvvv56789abcdef0123456789abcdef0";
const U_V: &str = "0000000a-a507-4694-aabf-edbe4fc5266f";

fn get(token: &str, endpoint: &str) -> Request {
    if token.is_empty() {
        Request::get(&format!("/acMetadata/v1/{endpoint}"))
    } else {
        Request::get(&format!("/{token}/acMetadata/v1/{endpoint}"))
    }
}

fn register(agent: &Agent, pod: &PodNet, uuid: &str, token: &str) {
    agent.register_in(uuid, token, &fixtures::read(fixtures::WEB.manifest), pod);
}

/// The pod's address and the bridge's (its gateway) in one family.
fn addresses(pod: &PodNet, v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (IpAddr::V6(pod.v6()), IpAddr::V6(pod.host_v6()))
    } else {
        (IpAddr::V4(pod.v4()), IpAddr::V4(pod.host_v4()))
    }
}

/// The kernel's forward-delay timer (15 s by default, STP or not) fires
/// once after a port joins a bridge, and the bridge then announces the
/// port with an `RTM_NEWLINK` of family `AF_BRIDGE`: name, master, MTU,
/// operstate, MAC and `IFLA_PROTINFO`, but no `IFLA_LINKINFO` and no
/// `IFLA_LINK_NETNSID`. Such a message describes the port, not the link;
/// a bridged pod must stay attributed to its namespace across it (and
/// across any other port notification: an operator's `bridge link set`,
/// a carrier change).
#[test]
fn a_bridged_pod_stays_attributed_after_its_port_settles() {
    if !require_root("a_bridged_pod_stays_attributed_after_its_port_settles") {
        return;
    }
    let agent = Agent::start(AgentOptions::identity("token+netns"));
    let bridge = Bridge::new();
    let v = PodNet::on_bridge(&bridge);
    let joined = Instant::now();
    // Enforced: an unenforced bridge proves nothing, whatever its ports say.
    bridge.enforce(&v);
    register(&agent, &v, U_V, T_V);
    // Past the default forward delay, with a margin; one request from
    // each family every 500 ms.
    let mut round = 0;
    while joined.elapsed() < Duration::from_secs(20) {
        round += 1;
        assert!(round <= 60, "more rounds than 20 s allow");
        for v6 in [false, true] {
            let (_, gateway) = addresses(&v, v6);
            let stream = v
                .connect(None, SocketAddr::new(gateway, agent.port))
                .expect("connect from the pod");
            let r = Conn::new(stream)
                .send(&get(T_V, "pod/uuid"))
                .expect("request from the pod");
            let entry = agent.pod_entry(U_V).expect("V listed");
            assert_eq!(
                (r.status, r.text(), &entry["attribution"]["path"]),
                (200, U_V.to_owned(), &serde_json::json!("bridged")),
                "{:?} after V joined the bridge (v6={v6}): {entry}",
                joined.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// An unregistered namespace on the same (unenforced) bridge takes the
/// victim's MAC and address and presents the victim's stolen token (or
/// none, where that identifies), while the victim goes on talking. The
/// bridge's FDB entry for the shared MAC then flips to whichever port sent
/// last, at every frame; the agent must never answer the stranger as the
/// victim, however the flips fall between its look-up and its reply.
///
/// Each run lasts 8 s. The agent refuses every bridged attribution that is
/// not enforced: the stranger never gets the victim's UUID (and neither,
/// by address, does the victim, until the bridge enforces or the operator
/// opts in).
#[test]
fn a_stranger_with_the_victim_s_mac_address_and_token_is_never_served_as_the_victim() {
    if !require_root("a_stranger_with_the_victim_s_mac_address_and_token") {
        return;
    }
    let mut served = Vec::new();
    for (mode, token, v6) in [
        ("token+netns", T_V, false),
        ("token+netns", T_V, true),
        ("netns", T_V, false),
        ("netns", "", false),
    ] {
        // No rate limit: the victim alone asks thousands of times a second.
        let agent = Agent::start(AgentOptions::identity(mode).arg("--rate-limit").arg("0"));
        let bridge = Bridge::new();
        let v = PodNet::on_bridge(&bridge);
        let stranger = PodNet::on_bridge(&bridge);
        register(&agent, &v, U_V, T_V);
        let (victim_addr, gateway) = addresses(&v, v6);
        let dst = SocketAddr::new(gateway, agent.port);
        let victim_mac = v.mac();
        stranger.set_mac(victim_mac);
        stranger.add_address(victim_addr, if v6 { 128 } else { 32 });
        assert_eq!(stranger.mac(), victim_mac);

        let stop = AtomicBool::new(false);
        let (outcomes, victim) = std::thread::scope(|scope| {
            // The victim, busy as pods are: its frames move the FDB entry
            // back to its port.
            let busy = scope.spawn(|| {
                let mut outcomes = BTreeMap::<String, u32>::new();
                let deadline = Instant::now() + Duration::from_secs(12);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok(stream) = v.connect_within(None, dst, Duration::from_millis(500)) else {
                        *outcomes.entry("no connection".into()).or_default() += 1;
                        continue;
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                    let mut conn = Conn::new(stream);
                    for _ in 0..50 {
                        match conn.send(&get(T_V, "pod/uuid")) {
                            Ok(r) => {
                                *outcomes
                                    .entry(format!("{} {}", r.status, r.text()))
                                    .or_default() += 1
                            }
                            Err(_) => break,
                        }
                    }
                }
                outcomes
            });
            let mut outcomes = BTreeMap::<String, u32>::new();
            let deadline = Instant::now() + Duration::from_secs(8);
            let mut connections = 0;
            while Instant::now() < deadline {
                connections += 1;
                assert!(connections < 100_000, "more connections than 8 s allow");
                let stream = match stranger.connect_within(
                    Some(victim_addr),
                    dst,
                    Duration::from_millis(300),
                ) {
                    Ok(s) => s,
                    Err(e) => {
                        *outcomes
                            .entry(format!("connect: {}", e.kind()))
                            .or_default() += 1;
                        continue;
                    }
                };
                // A reply sent to the victim's port never comes: move on.
                let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                let mut conn = Conn::new(stream);
                for _ in 0..200 {
                    match conn.send(&get(token, "pod/uuid")) {
                        Ok(r) => {
                            *outcomes
                                .entry(format!("{} {}", r.status, r.text()))
                                .or_default() += 1
                        }
                        Err(e) => {
                            *outcomes
                                .entry(format!("request: {}", e.kind()))
                                .or_default() += 1;
                            break;
                        }
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            (outcomes, busy.join().expect("the victim's thread"))
        });
        // How far behind the host the agent's view fell meanwhile.
        let metrics = agent.unix(&Request::get("/metrics")).text();
        let netlink: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("rkt_mds_netlink_"))
            .collect();
        let served_as_victim = outcomes.get(&format!("200 {U_V}")).copied().unwrap_or(0);
        let attempts: u32 = outcomes.values().sum();
        if served_as_victim > 0 {
            served.push(format!(
                "{mode} v6={v6} token={}: the stranger (MAC {}, the victim's, and the victim's \
                 address {victim_addr}) was served as the victim {served_as_victim} times in \
                 {attempts} attempts over 8 s. Stranger's outcomes: {outcomes:#?}; victim's: \
                 {victim:#?}; the agent's netlink counters: {netlink:#?}",
                !token.is_empty(),
                format_mac(victim_mac),
            ));
        }
    }
    // Every case has run: the failure says which ones let the stranger in.
    assert!(served.is_empty(), "{}", served.join("\n"));
}

/// One request from inside `pod` to the bridge (its gateway).
fn from_pod(
    agent: &Agent,
    pod: &PodNet,
    src: Option<IpAddr>,
    v6: bool,
    token: &str,
) -> Option<(u16, String)> {
    let (_, gateway) = addresses(pod, v6);
    let stream = pod
        .connect_within(
            src,
            SocketAddr::new(gateway, agent.port),
            Duration::from_millis(500),
        )
        .ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let r = Conn::new(stream).send(&get(token, "pod/uuid")).ok()?;
    Some((r.status, r.text()))
}

const NOT_ENFORCED: &str =
    "the pod's bridge does not enforce source addresses: identity by address is off (--allow-unenforced-bridge)";

/// GET /pods says how a bridged pod is attributed and whether the bridge
/// enforces; until it does, the pod's address proves nothing, token or not.
#[test]
fn a_bridged_pods_attribution_and_enforcement_are_reported_and_decide() {
    if !require_root("a_bridged_pods_attribution_and_enforcement") {
        return;
    }
    for (mode, flag) in [("token+netns", false), ("netns", false), ("netns", true)] {
        let mut options = AgentOptions::identity(mode);
        if flag {
            options = options.arg("--allow-unenforced-bridge");
        }
        let agent = Agent::start(options);
        let bridge = Bridge::new();
        let v = PodNet::on_bridge(&bridge);
        register(&agent, &v, U_V, T_V);
        let tokens: &[&str] = if mode == "netns" { &[T_V, ""] } else { &[T_V] };
        for v6 in [false, true] {
            for t in tokens {
                let got = from_pod(&agent, &v, None, v6, t).expect("an answer");
                if flag {
                    assert_eq!(got, (200, U_V.to_owned()), "{mode} opted in v6={v6}");
                } else {
                    assert_eq!(
                        got,
                        (403, NOT_ENFORCED.to_owned()),
                        "{mode} v6={v6} token={t:?}"
                    );
                }
            }
        }
        // The host has neighbour entries for the pod now (its traffic
        // made them): the view names the path and that it is not enforced,
        // and, unless the agent opted in, the state says it is refused.
        let e = agent.pod_entry(U_V).unwrap();
        let state = if flag { "verified" } else { "unenforced" };
        assert_eq!(e["state"], state, "{e}");
        // `audit --check` fails on it, unless told the agent opted in.
        let socket = agent.socket.display().to_string();
        let audit = |extra: &[&str]| {
            let mut args = vec!["audit", "--check", "--socket", socket.as_str()];
            args.extend_from_slice(extra);
            std::process::Command::new(integration::agent::binary())
                .args(&args)
                .output()
                .expect("audit")
                .status
                .code()
        };
        assert_eq!(audit(&[]), Some(if flag { 0 } else { 1 }), "{mode} {flag}");
        assert_eq!(audit(&["--allow-unenforced-bridge"]), Some(0), "{mode}");
        assert_eq!(e["attribution"]["path"], "bridged", "{e}");
        assert_eq!(e["attribution"]["enforced"], false, "{e}");
        assert!(
            e["attribution"]["note"]
                .as_str()
                .unwrap_or_default()
                .contains("not enforced"),
            "{e}"
        );
        // The operator enforces: permanent neighbour, static sticky FDB.
        bridge.enforce(&v);
        integration::wait_for("enforcement to show", Duration::from_secs(5), || {
            (agent.pod_entry(U_V).unwrap()["attribution"]["enforced"] == true).then_some(())
        });
        for v6 in [false, true] {
            for t in tokens {
                let got = from_pod(&agent, &v, None, v6, t).expect("an answer");
                assert_eq!(
                    got,
                    (200, U_V.to_owned()),
                    "{mode} enforced v6={v6} token={t:?}"
                );
            }
        }
    }
}

/// On an enforced bridge, a takeover of a pod's address, by a namespace
/// nobody registered (with the pod's MAC too) or by a registered pod,
/// gains nothing, and the rightful pod keeps its identity; a pod claiming
/// the bridge's (the host's) address changes nothing for host-network
/// tokens.
#[test]
fn takeovers_on_an_enforced_bridge_gain_nothing() {
    if !require_root("takeovers_on_an_enforced_bridge_gain_nothing") {
        return;
    }
    const T_B: &str = "bbbb56789abcdef0123456789abcdef0";
    const U_B: &str = "0000000b-a507-4694-aabf-edbe4fc5266f";
    const T_H: &str = "hhhh56789abcdef0123456789abcdef0";
    const U_H: &str = "0000000c-a507-4694-aabf-edbe4fc5266f";
    for mode in ["token+netns", "netns"] {
        let agent = Agent::start(AgentOptions::identity(mode));
        let bridge = Bridge::new();
        let (v, b, stranger) = (
            PodNet::on_bridge(&bridge),
            PodNet::on_bridge(&bridge),
            PodNet::on_bridge(&bridge),
        );
        bridge.enforce(&v);
        bridge.enforce(&b);
        register(&agent, &v, U_V, T_V);
        register(&agent, &b, U_B, T_B);
        let r = agent.register(U_H, T_H, &fixtures::read("pods/bare-pod.json"), "");
        assert_eq!(r.status, 200);
        let tokens: &[&str] = if mode == "netns" { &[T_V, ""] } else { &[T_V] };
        for v6 in [false, true] {
            let (victim_addr, _) = addresses(&v, v6);
            let len = if v6 { 128 } else { 32 };
            // (a) A stranger with the victim's MAC and address.
            stranger.set_mac(v.mac());
            stranger.add_address(victim_addr, len);
            for t in tokens {
                for _ in 0..5 {
                    let got = from_pod(&agent, &stranger, Some(victim_addr), v6, t);
                    assert!(
                        got.as_ref().is_none_or(|(s, _)| *s != 200),
                        "{mode} v6={v6}: the stranger was answered {got:?}"
                    );
                }
            }
            stranger.del_address(victim_addr, len);
            // (b) A registered pod claims the victim's address.
            b.add_address(victim_addr, len);
            integration::wait_for("B's conflict", Duration::from_secs(5), || {
                (agent.pod_entry(U_B).unwrap()["state"] == "conflict").then_some(())
            });
            let got = from_pod(&agent, &b, Some(victim_addr), v6, T_B);
            assert!(
                got.as_ref().is_none_or(|(s, _)| *s != 200),
                "{mode} v6={v6}: B from V's address: {got:?}"
            );
            // The victim keeps its identity throughout.
            for t in tokens {
                let got = integration::wait_for(
                    "the victim to be answered",
                    Duration::from_secs(10),
                    || from_pod(&agent, &v, None, v6, t),
                );
                assert_eq!(got, (200, U_V.to_owned()), "{mode} v6={v6} token={t:?}");
            }
            assert_eq!(agent.pod_entry(U_V).unwrap()["state"], "verified");
            b.del_address(victim_addr, len);
        }
        // (c) A pod claims the bridge's address, the host's own: the
        // host keeps it (a packet from outside with a local source is a
        // martian), host-network tokens are still answered on the host,
        // and the claim is reported as B's conflict.
        let gateway = IpAddr::V4(bridge.v4());
        b.add_address(gateway, 32);
        integration::wait_for(
            "B's conflict on the host's address",
            Duration::from_secs(5),
            || {
                let e = agent.pod_entry(U_B).unwrap();
                (e["state"] == "conflict"
                    && e["conflicts"].to_string().contains(&gateway.to_string()))
                .then_some(())
            },
        );
        let host = SocketAddr::new(gateway, agent.port);
        let r = integration::http::tcp(host, &get(T_H, "pod/uuid")).unwrap();
        assert_eq!((r.status, r.text()), (200, U_H.to_owned()), "{mode}");
        let got = from_pod(&agent, &b, Some(gateway), false, T_H);
        assert!(
            got.as_ref().is_none_or(|(s, _)| *s != 200),
            "{mode}: B holding the host's address was answered {got:?}"
        );
        assert_eq!(agent.pod_entry(U_V).unwrap()["state"], "verified");
        b.del_address(gateway, 32);
    }
}
