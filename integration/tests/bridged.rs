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
