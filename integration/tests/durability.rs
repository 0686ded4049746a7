//! Nothing lost (DESIGN "Durability"): registrations and keys across
//! restarts and SIGKILLs, corrupt state, key rotation, garbage collection.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use integration::{
    agent::binary,
    fixtures,
    http::{self, Conn, Request},
    privilege::require_root,
    wait_for, Agent, AgentOptions, PodNet,
};

const POD: &str = "pods/bare-pod.json";

fn uuid(n: u32) -> String {
    format!("6733c088-a507-4694-aabf-{n:012x}")
}

fn token(n: u32) -> String {
    format!("tok{n:029x}")
}

/// A small deterministic generator; the seed is printed so a failing storm
/// can be replayed.
struct Lcg(u64);

impl Lcg {
    fn seeded() -> Self {
        let seed = std::env::var("STORM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("crash storm seed: STORM_SEED={seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

fn listed(agent: &Agent) -> BTreeSet<String> {
    agent.pods()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["uuid"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn crash_storm_loses_nothing_acknowledged() {
    let mut agent = Agent::start(AgentOptions::identity("token"));
    let manifest = fixtures::read(POD);
    let mut rng = Lcg::seeded();
    let mut registered: BTreeSet<u32> = BTreeSet::new();
    let mut unregistered: BTreeSet<u32> = BTreeSet::new();
    let mut next = 0u32;
    for round in 0..25 {
        let pid = agent.pid().expect("running");
        let delay = Duration::from_micros(rng.below(60_000));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        for _ in 0..5_000 {
            let unregister = !registered.is_empty() && rng.below(3) == 0;
            if unregister {
                let pick = *registered
                    .iter()
                    .nth(rng.below(registered.len() as u64) as usize)
                    .unwrap();
                registered.remove(&pick);
                match http::unix(
                    &agent.socket,
                    &Request::new("DELETE", &format!("/pods/{}", uuid(pick)), None, &[]),
                ) {
                    Ok(r) if r.status == 200 => {
                        unregistered.insert(pick);
                    }
                    Ok(r) => panic!("unregister {pick}: {} {}", r.status, r.text()),
                    // Outcome unknown: the pod is never looked at again.
                    Err(_) => break,
                }
            } else {
                let n = next;
                next += 1;
                let req = Request::chunked(
                    "PUT",
                    &format!("/pods/{}?token={}", uuid(n), token(n)),
                    &manifest,
                );
                match http::unix(&agent.socket, &req) {
                    Ok(r) if r.status == 200 => {
                        registered.insert(n);
                    }
                    Ok(r) => panic!("register {n}: {} {}", r.status, r.text()),
                    Err(_) => break,
                }
            }
        }
        killer.join().unwrap();
        agent.kill();
        agent.restart();
        let present = listed(&agent);
        for n in &registered {
            assert!(
                present.contains(&uuid(*n)),
                "round {round}: acknowledged registration {n} lost"
            );
            let r = agent.get(&format!("/{}/acMetadata/v1/pod/uuid", token(*n)));
            assert_eq!(
                (r.status, r.text()),
                (200, uuid(*n)),
                "round {round}: pod {n} not served"
            );
        }
        for n in &unregistered {
            assert!(
                !present.contains(&uuid(*n)),
                "round {round}: acknowledged unregistration {n} undone"
            );
        }
    }
    assert!(
        next > 25,
        "the storm registered {next} pods: too few to mean anything"
    );
    eprintln!(
        "crash storm: 25 SIGKILLs, {next} registrations attempted, {} live at the end",
        registered.len()
    );
}

#[test]
fn corrupt_and_foreign_files_are_skipped_and_the_agent_starts() {
    let mut agent = Agent::start(AgentOptions::identity("token"));
    assert_eq!(
        agent
            .register(&uuid(1), &token(1), &fixtures::read(POD), "")
            .status,
        200
    );
    assert_eq!(agent.stop().code(), Some(0));
    let dir = agent.runtime_dir();
    let good = std::fs::read(dir.join(format!("{}.json", uuid(1)))).unwrap();
    std::fs::write(
        dir.join(format!("{}.json", uuid(2))),
        &good[..good.len() / 2],
    )
    .unwrap();
    std::fs::write(dir.join(format!("{}.json", uuid(3))), b"").unwrap();
    std::fs::write(dir.join(format!("{}.json", uuid(4))), b"\x00\xffgarbage{{{").unwrap();
    // A record filed under another pod's name.
    std::fs::write(dir.join(format!("{}.json", uuid(5))), &good).unwrap();
    std::fs::write(dir.join("notes.txt"), b"foreign").unwrap();
    let leftover = dir.join(format!(".{}.json.tmp-1-1", uuid(6)));
    std::fs::write(&leftover, &good[..10]).unwrap();

    agent.restart();
    assert_eq!(listed(&agent), BTreeSet::from([uuid(1)]));
    assert_eq!(
        agent
            .get(&format!("/{}/acMetadata/v1/pod/uuid", token(1)))
            .text(),
        uuid(1)
    );
    assert!(!leftover.exists(), "a crash's temporary file is cleaned up");
    let skipped = |log: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains("skipping"))
            .count()
    };
    let log = agent.wait_log("five skipped files", |log| skipped(log) >= 5);
    assert_eq!(skipped(&log), 5, "{log}");
}

fn sign(agent: &Agent, t: &str, content: &str) -> String {
    let r = http::tcp(
        agent.loopback(),
        &Request::form(
            &format!("/{t}/acMetadata/v1/pod/hmac/sign"),
            &[("content", content)],
        ),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    r.text()
}

fn verify(agent: &Agent, u: &str, content: &str, sig: &str) -> u16 {
    http::tcp(
        agent.loopback(),
        &Request::form(
            "/x/acMetadata/v1/pod/hmac/verify",
            &[("content", content), ("uuid", u), ("signature", sig)],
        ),
    )
    .unwrap()
    .status
}

fn rotate(agent: &Agent) {
    let out = Command::new(binary())
        .args(["keys", "rotate", "--socket", agent.socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn keys_rotate_and_retire_and_survive_restarts() {
    let mut agent = Agent::start(
        AgentOptions::identity("token")
            .arg("--key-retention")
            .arg("2"),
    );
    let (u, t) = (uuid(1), token(1));
    assert_eq!(agent.register(&u, &t, &fixtures::read(POD), "").status, 200);
    let s1 = sign(&agent, &t, "one");
    rotate(&agent);
    let s2 = sign(&agent, &t, "one");
    assert_ne!(s1, s2, "the new key signs");
    assert_eq!(verify(&agent, &u, "one", &s1), 200);
    assert_eq!(verify(&agent, &u, "one", &s2), 200);

    agent.stop();
    agent.restart();
    assert_eq!(
        verify(&agent, &u, "one", &s1),
        200,
        "after restart and rotation"
    );
    assert_eq!(verify(&agent, &u, "one", &s2), 200);
    assert_eq!(
        sign(&agent, &t, "one"),
        s2,
        "the newest key still signs after a restart"
    );

    rotate(&agent);
    assert_eq!(
        verify(&agent, &u, "one", &s1),
        403,
        "key 1 is beyond retention"
    );
    assert_eq!(verify(&agent, &u, "one", &s2), 200);
    let out = Command::new(binary())
        .args([
            "keys",
            "list",
            "--json",
            "--socket",
            agent.socket.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        list["jwt"].as_array().unwrap().len(),
        3,
        "rotated with it: {list}"
    );
    assert_eq!(
        list["hmac"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
}

fn from_pod(agent: &Agent, pod: &PodNet, t: &str) -> http::Response {
    let s = pod
        .connect(None, SocketAddr::new(IpAddr::V4(pod.host_v4()), agent.port))
        .unwrap();
    Conn::new(s)
        .send(&Request::get(&format!("/{t}/acMetadata/v1/pod/uuid")))
        .unwrap()
}

#[test]
fn namespace_bound_registrations_survive_a_restart() {
    if !require_root("namespace_bound_registrations_survive_a_restart") {
        return;
    }
    let mut agent = Agent::start(AgentOptions::identity("token+netns"));
    let (a, b, mut gone) = (PodNet::new(), PodNet::new(), PodNet::new());
    for (n, p) in [(1, &a), (2, &b), (3, &gone)] {
        agent.register_in(&uuid(n), &token(n), &fixtures::read(POD), p);
    }
    assert_eq!(agent.stop().code(), Some(0));
    // While the agent is down, one pod's namespace goes away.
    gone.delete_netns_only();
    agent.restart();
    assert_eq!(from_pod(&agent, &a, &token(1)).text(), uuid(1));
    assert_eq!(from_pod(&agent, &b, &token(2)).text(), uuid(2));
    assert_eq!(
        from_pod(&agent, &b, &token(1)).status,
        403,
        "identity still enforced after reload"
    );
    assert_eq!(listed(&agent), BTreeSet::from([uuid(1), uuid(2)]));
    let line = agent.log_line("the dropped registration", |l| {
        l.contains("dropping a stored registration")
    });
    assert!(
        line.contains("INFO") && line.contains(&uuid(3)) && line.contains("gone"),
        "{line}"
    );
}

#[test]
fn dead_pods_are_collected_after_the_grace_period() {
    if !require_root("dead_pods_are_collected_after_the_grace_period") {
        return;
    }
    let agent = Agent::start(
        AgentOptions::identity("token+netns")
            .arg("--gc-grace")
            .arg("1s"),
    );
    let (mut a, b) = (PodNet::new(), PodNet::new());
    for (n, p) in [(1, &a), (2, &b)] {
        agent.register_in(&uuid(n), &token(n), &fixtures::read(POD), p);
    }
    // An rkt pod whose directory leaves pods/run (rkt gc moved it).
    let dir = agent.rkt_dir().join("pods/run").join(uuid(3));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(
        agent
            .register(&uuid(3), &token(3), &fixtures::read(POD), "")
            .status,
        200
    );

    a.delete_netns_only();
    std::fs::remove_dir(&dir).unwrap();
    wait_for(
        "both dead pods to be collected",
        Duration::from_secs(15),
        || {
            let l = listed(&agent);
            (!l.contains(&uuid(1)) && !l.contains(&uuid(3))).then_some(l)
        },
    );
    assert!(
        listed(&agent).contains(&uuid(2)),
        "a live pod is not collected"
    );
    assert_eq!(
        agent.unregister(&uuid(1)).status,
        404,
        "rkt gc's DELETE of a collected pod: 404"
    );
    let line = agent.log_line("pod 1's collection", |l| {
        l.contains(&uuid(1)) && l.contains("network namespace is gone")
    });
    assert!(line.contains("INFO"), "{line}");
    let line = agent.log_line("pod 3's collection", |l| {
        l.contains(&uuid(3)) && l.contains("rkt pod directory")
    });
    assert!(line.contains("INFO"), "{line}");
}
