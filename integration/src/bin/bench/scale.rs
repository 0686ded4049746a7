//! Scale: many pods over many namespaces: registration rate, memory,
//! throughput against the number of pods, start-up reload time.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use integration::{fixtures, Agent, PodNet};

use crate::{check_interrupted, medians, report::Scale, wrk, Args, TOKEN};

fn uuid(n: u32) -> String {
    format!("5ca1e000-a507-4694-aabf-{n:012x}")
}

fn token(n: u32) -> String {
    format!("scale{n:027x}")
}

/// Keep-alive GET /pod/uuid from the load pod, on one agent, in rounds
/// that alternate between all the pods registered and 10 (the others
/// unregistered, then registered again): medians at 10, and at all. One
/// process: two agents side by side differed by up to ±7 % whatever their
/// pods, more than the effect measured. Starts and ends with all pods.
fn throughput(
    args: &Args,
    pods: &Pods<'_>,
    pod: &PodNet,
    scripts: &std::path::Path,
) -> Result<[wrk::Figures; 2], String> {
    let load = wrk::Load {
        pod: Some(pod),
        threads: 1,
        url: crate::agent_target(pods.agent, IpAddr::V4(pod.host_v4()), "pod/uuid").1,
        form: None,
        close: false,
        connections: args.connections,
        duration: Duration::from_secs(args.seconds),
        server: pods.agent.pid().unwrap_or(0),
    };
    settle(&load, scripts)?;
    let mut runs: [Vec<wrk::Figures>; 2] = [Vec::new(), Vec::new()];
    let mut all = true;
    for round in 0..args.rounds {
        // Each round measures the state it finds, changes it, and measures
        // again: the order alternates, with one change per round.
        for half in 0..2 {
            check_interrupted()?;
            if half == 1 {
                pods.set(10, args.pods, !all)?;
                all = !all;
                settle(&load, scripts)?;
            }
            let label = if all { "all pods" } else { "10 pods" };
            let run = wrk::run(&load, scripts)?;
            eprintln!(
                "bench: scale throughput at {label}, round {}: {:.0} req/s, {:.2} CPU µs/req",
                round + 1,
                run.rps,
                run.cpu_us
            );
            runs[usize::from(all)].push(run);
        }
    }
    if !all {
        pods.set(10, args.pods, true)?;
    }
    Ok([medians(&runs[0]), medians(&runs[1])])
}

/// After thousands of registrations or unregistrations (each a file
/// written or removed, and fsync'd), the file system's writeback goes on
/// for a while on the same 2 cores: let it finish, and warm up again, so
/// that a measurement is of the agent in that state, not of the change.
fn settle(load: &wrk::Load<'_>, scripts: &std::path::Path) -> Result<(), String> {
    nix::unistd::sync();
    wrk::warm_up(load, scripts)
}

/// Registration and unregistration of the pods beyond the first ten.
struct Pods<'a> {
    agent: &'a Agent,
    namespaces: &'a [PodNet],
    manifest: Vec<u8>,
}

impl Pods<'_> {
    fn register(&self, n: u32) -> Result<(), String> {
        let ns = &self.namespaces[n as usize % self.namespaces.len().max(1)];
        let r = self.agent.register(
            &uuid(n),
            &token(n),
            &self.manifest,
            &format!("&netns={}", ns.netns_path()),
        );
        if r.status != 200 {
            return Err(format!("registering pod {n}: {} {}", r.status, r.text()));
        }
        Ok(())
    }

    /// Pods `from..to` registered (`grow`) or unregistered.
    fn set(&self, from: u32, to: u32, grow: bool) -> Result<(), String> {
        for n in from..to {
            if n % 500 == 0 {
                check_interrupted()?;
            }
            if grow {
                self.register(n)?;
            } else {
                let r = self.agent.unregister(&uuid(n));
                if r.status != 200 {
                    return Err(format!("unregistering pod {n}: {} {}", r.status, r.text()));
                }
            }
        }
        Ok(())
    }
}

pub fn measure(
    args: &Args,
    agent: Agent,
    load_pod: &PodNet,
    scripts: &std::path::Path,
) -> Result<Scale, String> {
    // A fresh agent: only the load pod registered so far.
    drop(agent);
    let mut agent = crate::start_agent("token+netns", "info");
    crate::register_example(&agent, load_pod, crate::UUID, TOKEN)?;

    let started = Instant::now();
    eprintln!(
        "bench: creating {} namespaces",
        args.namespaces.saturating_sub(1)
    );
    let mut namespaces = Vec::new();
    for _ in 1..args.namespaces.max(1) {
        check_interrupted()?;
        namespaces.push(PodNet::new());
    }
    let setup_secs = started.elapsed().as_secs_f64();
    let pods = Pods {
        agent: &agent,
        namespaces: &namespaces,
        manifest: fixtures::read("pods/web-pod.json"),
    };
    // Ten pods (the load pod's and nine more).
    pods.set(1, 10, true)?;
    eprintln!("bench: registering up to {} pods", args.pods);
    let started = Instant::now();
    pods.set(10, args.pods, true)?;
    let registration_per_sec =
        f64::from(args.pods.saturating_sub(10)) / started.elapsed().as_secs_f64();
    let at = throughput(args, &pods, load_pod, scripts)?;
    let (at_10, at_n) = (at[0], at[1]);
    let rss_hwm_kib = agent.peak_rss_kib();

    drop(pods);
    eprintln!("bench: restarting to time the reload");
    agent.stop();
    agent.restart();
    // Lines reach the log in batches: wait for the second start's.
    let log = agent.wait_log("the restart's start-up line", |log| {
        log.matches("rkt-mds serving").count() >= 2
    });
    let reload_ms = log
        .lines()
        .rfind(|l| l.contains("rkt-mds serving"))
        .and_then(|l| l.split("millis=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no start-up line with the reload time in the agent's log")?;
    let listed = agent.pods()["pods"].as_array().map_or(0, |a| a.len());
    if listed != args.pods as usize {
        return Err(format!(
            "after the reload {listed} pods are listed, not {}",
            args.pods
        ));
    }
    eprintln!("bench: removing {} namespaces", namespaces.len());
    Ok(Scale {
        pods: args.pods,
        namespaces: args.namespaces,
        setup_secs,
        registration_per_sec,
        rss_hwm_kib,
        at_10,
        at_n,
        reload_ms,
    })
}
