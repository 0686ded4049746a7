//! The cluster directory survives an etcd member's faults (a 3-member
//! etcd of Debian's etcd-server on 127.0.0.1): the leader SIGKILLed, a
//! follower SIGKILLed, a follower or the leader paused with SIGSTOP (it
//! still accepts connections, it never answers), and a member restarted.
//!
//! Two agents publish host-network pods to every member. The member hit
//! is the one the agents use (first in `--etcd`), so they must fail over.
//! Throughout the fault and for three lease TTLs after it, every read of
//! the directory that succeeds must hold every pod (no key lost), and a
//! pod registered after the fault must reach etcd within 5 s.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use integration::{etcd::Etcd, fixtures, privilege::require_root, wait_for, Agent, AgentOptions};

/// Short, so a lease that is not kept alive expires within the test.
const TTL: Duration = Duration::from_secs(3);
/// How long after the fault the directory is watched for losses.
const WATCH: Duration = Duration::from_secs(9);
/// A registration after the fault reaches etcd within this.
const REPUBLISH: Duration = Duration::from_secs(5);
const NODES: [&str; 2] = ["fault-a", "fault-b"];
const PODS: u32 = 4;

fn uuid(node: usize, n: u32) -> String {
    format!("{n:08x}-fa{node:02x}-4694-aabf-edbe4fc5266f")
}

fn token(node: usize, n: u32) -> String {
    format!("tok{node:02x}{n:027x}")
}

enum Fault {
    KillLeader,
    KillFollower,
    PauseFollower,
    /// etcd before the fix of etcd#15247 (PR #16822; Debian ships 3.4.23)
    /// lets a leader that was stalled revoke, once it runs again, every
    /// lease it saw no keep-alive for: the keep-alives went to the new
    /// leader. No client can keep its keys through that; what the agent
    /// owes is to have them back within `REPUBLISH`.
    PauseLeader,
    Restart,
}

/// `--etcd` for `node` with member `victim` where the node's agent starts:
/// at the index its name picks (its bytes summed, as
/// `rkt_mds::cluster::first_member`; checked below on its connections).
fn endpoints_for(etcd: &Etcd, victim: usize, node: &str) -> String {
    let start = node.bytes().map(usize::from).sum::<usize>() % 3;
    let mut list: Vec<String> = (0..3).map(|i| etcd.member_endpoint(i)).collect();
    list.rotate_left((victim + 3 - start) % 3);
    list.join(",")
}

/// The client port of `endpoint` (`http://127.0.0.1:PORT`).
fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// The UUIDs etcd holds for `node`, or `None` when no member answered.
fn held(etcd: &Etcd, node: &str) -> Option<BTreeSet<String>> {
    etcd.pods_of(node).ok().map(|p| p.into_keys().collect())
}

fn run(fault: Fault, name: &str) {
    if !require_root(name) {
        return;
    }
    let mut etcd = Etcd::cluster(3);
    // The member hit: the leader, a follower, or (restart) member 0.
    let victim = match fault {
        Fault::KillLeader | Fault::PauseLeader => etcd.leader().expect("a leader"),
        Fault::KillFollower | Fault::PauseFollower => etcd.follower().expect("a follower"),
        Fault::Restart => 0,
    };
    let manifest = fixtures::read("pods/bare-pod.json");
    let agents: Vec<Agent> = NODES
        .iter()
        .map(|node| {
            Agent::start(
                AgentOptions::default()
                    .arg("--node-name")
                    .arg(*node)
                    .arg("--etcd")
                    .arg(endpoints_for(&etcd, victim, node))
                    .arg("--etcd-lease-ttl")
                    .arg(format!("{}s", TTL.as_secs())),
            )
        })
        .collect();
    let mut want: Vec<BTreeSet<String>> = vec![BTreeSet::new(); NODES.len()];
    for (i, agent) in agents.iter().enumerate() {
        for n in 0..PODS {
            let r = agent.register(&uuid(i, n), &token(i, n), &manifest, "");
            assert_eq!(r.status, 200, "{}", r.text());
            want[i].insert(uuid(i, n));
        }
    }
    for (i, node) in NODES.iter().enumerate() {
        wait_for(&format!("{node}'s pods in etcd"), REPUBLISH, || {
            (held(&etcd, node).as_ref() == Some(&want[i])).then_some(())
        });
    }

    // The member hit is one every agent uses.
    let victim_port = port_of(&etcd.member_endpoint(victim));
    for (agent, node) in agents.iter().zip(NODES) {
        let pid = agent.pid().expect("the agent runs");
        assert!(
            integration::proc_net::connections_to(pid, victim_port) > 0,
            "{node} has no connection to the member hit"
        );
    }
    let leases_before: Vec<i64> = NODES
        .iter()
        .map(|node| etcd.node_record(node).ok().flatten().map_or(0, |(_, l)| l))
        .collect();
    match fault {
        Fault::KillLeader | Fault::KillFollower => etcd.kill_member(victim),
        Fault::PauseFollower | Fault::PauseLeader => etcd.pause_member(victim),
        Fault::Restart => etcd.stop_member(victim),
    }
    let faulted = Instant::now();
    if let Fault::Restart = fault {
        etcd.restart_member(victim);
    }

    // New registrations during the fault, one per agent.
    let mut sent = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let r = agent.register(&uuid(i, PODS), &token(i, PODS), &manifest, "");
        assert_eq!(r.status, 200, "{}", r.text());
        sent.push(Instant::now());
    }
    let mut arrived: Vec<Option<Duration>> = vec![None; NODES.len()];
    let mut reads = 0;
    while faulted.elapsed() < WATCH || arrived.iter().any(Option::is_none) {
        assert!(
            faulted.elapsed() < WATCH + REPUBLISH,
            "a registration after the fault never reached etcd: {arrived:?}"
        );
        for (i, node) in NODES.iter().enumerate() {
            let Some(have) = held(&etcd, node) else {
                continue;
            };
            reads += 1;
            let lost: Vec<&String> = want[i].difference(&have).collect();
            assert!(
                lost.is_empty(),
                "{node} lost keys {:.1} s after the fault: {lost:?}\n{}",
                faulted.elapsed().as_secs_f64(),
                agents[i].log()
            );
            if arrived[i].is_none() && have.contains(&uuid(i, PODS)) {
                arrived[i] = Some(sent[i].elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (i, at) in arrived.iter().enumerate() {
        let at = at.expect("arrived");
        assert!(
            at <= REPUBLISH,
            "{}'s registration reached etcd {at:?} after it was made",
            NODES[i]
        );
        eprintln!(
            "{name}: {} registration after the fault in etcd after {at:?}",
            NODES[i]
        );
    }
    assert!(reads > 0, "no read of the directory succeeded");
    etcd.resume_member(victim);
    if let Fault::PauseLeader = fault {
        // The resumed member revokes (or not) within its lessor's next
        // ticks; watch two TTLs for a gap, and bound every gap.
        let resumed = Instant::now();
        let all: Vec<BTreeSet<String>> = (0..NODES.len())
            .map(|i| {
                let mut all = want[i].clone();
                all.insert(uuid(i, PODS));
                all
            })
            .collect();
        let mut missing_since: Vec<Option<Instant>> = vec![None; NODES.len()];
        let mut longest = Duration::ZERO;
        while resumed.elapsed() < 2 * TTL || missing_since.iter().any(Option::is_some) {
            for (i, node) in NODES.iter().enumerate() {
                let (Some(have), Ok(record)) = (held(&etcd, node), etcd.node_record(node)) else {
                    continue;
                };
                if have == all[i] && record.is_some() {
                    missing_since[i] = None;
                    continue;
                }
                let since = *missing_since[i].get_or_insert_with(Instant::now);
                longest = longest.max(since.elapsed());
                assert!(
                    since.elapsed() <= REPUBLISH,
                    "{node}'s keys were missing for {:?} after the old leader resumed:\n{}",
                    since.elapsed(),
                    agents[i].log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let renewed = NODES
            .iter()
            .zip(&leases_before)
            .filter(|(node, before)| {
                etcd.node_record(node).ok().flatten().map(|(_, l)| l) != Some(**before)
            })
            .count();
        eprintln!(
            "{name}: {renewed} of {} nodes on a new lease after the old leader resumed; \
             keys missing at most {longest:?}",
            NODES.len()
        );
        return;
    }
    // The sessions went on: no new lease, so no full re-publish (a
    // fault the lease outlives costs no writes beyond the changes).
    for (i, node) in NODES.iter().enumerate() {
        let Some((_, lease)) = etcd.node_record(node).unwrap() else {
            panic!(
                "{node}'s record is gone after the fault:\n{}\n{}",
                agents[i].log(),
                etcd.log()
            );
        };
        assert_eq!(
            lease,
            leases_before[i],
            "{node} took a new lease (and re-published everything):\n{}",
            agents[i].log()
        );
    }
    // Local service never stopped.
    for agent in &agents {
        assert_eq!(
            agent.pods()["pods"].as_array().map(Vec::len),
            Some(PODS as usize + 1)
        );
    }
}

#[test]
fn the_leader_killed_costs_no_keys() {
    run(Fault::KillLeader, "the_leader_killed_costs_no_keys");
}

#[test]
fn a_follower_killed_costs_no_keys() {
    run(Fault::KillFollower, "a_follower_killed_costs_no_keys");
}

#[test]
fn a_paused_follower_costs_no_keys() {
    run(Fault::PauseFollower, "a_paused_follower_costs_no_keys");
}

#[test]
fn a_paused_leader_costs_no_keys_until_it_resumes() {
    run(
        Fault::PauseLeader,
        "a_paused_leader_costs_no_keys_until_it_resumes",
    );
}

#[test]
fn a_restarted_member_costs_no_keys() {
    run(Fault::Restart, "a_restarted_member_costs_no_keys");
}
