//! Scale: many pods over many namespaces: registration rate, memory,
//! throughput against the number of pods, start-up reload time.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use integration::{fixtures, Agent, PodNet};
use nix::sys::signal::Signal;

use crate::{check_interrupted, medians, report::Scale, wrk, Args, TOKEN};

/// Keep-alive GET /pod/uuid from the load pod against two agents, one
/// with 10 pods and one with many, in alternating rounds (medians). The
/// agent not measured is stopped (SIGSTOP) meanwhile, so that neither's
/// background work lands in the other's figures, and machine drift falls
/// on both alike.
fn throughput(
    args: &Args,
    agents: [&Agent; 2],
    pod: &PodNet,
    scripts: &std::path::Path,
) -> Result<[wrk::Figures; 2], String> {
    let targets: Vec<(u32, String)> = agents
        .iter()
        .map(|a| crate::agent_target(a, IpAddr::V4(pod.host_v4()), "pod/uuid"))
        .collect();
    let load = |(server, url): &(u32, String)| wrk::Load {
        pod: Some(pod),
        threads: 1,
        url: url.clone(),
        form: None,
        close: false,
        connections: args.connections,
        duration: Duration::from_secs(args.seconds),
        server: *server,
    };
    let pause = |pid: u32, signal| {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    };
    let turn = |i: usize| {
        pause(targets[1 - i].0, Signal::SIGSTOP);
        pause(targets[i].0, Signal::SIGCONT);
    };
    let runs = wrk::alternate_with(
        args,
        &targets,
        &load,
        scripts,
        "scale throughput (10 pods, then all)",
        &turn,
    );
    for (pid, _) in &targets {
        pause(*pid, Signal::SIGCONT);
    }
    let runs = runs?;
    Ok([medians(&runs[0]), medians(&runs[1])])
}

fn uuid(n: u32) -> String {
    format!("5ca1e000-a507-4694-aabf-{n:012x}")
}

fn token(n: u32) -> String {
    format!("scale{n:027x}")
}

pub fn measure(
    args: &Args,
    agent: Agent,
    load_pod: &PodNet,
    scripts: &std::path::Path,
) -> Result<Scale, String> {
    // Fresh agents: one that keeps 10 pods, one that gets them all.
    drop(agent);
    let small = crate::start_agent("token+netns", "info");
    let mut agent = crate::start_agent("token+netns", "info");
    crate::register_example(&small, load_pod, crate::UUID, TOKEN)?;
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
    let manifest = fixtures::read("pods/web-pod.json");
    let register = |agent: &Agent, n: u32| -> Result<(), String> {
        let ns = &namespaces[n as usize % namespaces.len().max(1)];
        let r = agent.register(
            &uuid(n),
            &token(n),
            &manifest,
            &format!("&netns={}", ns.netns_path()),
        );
        if r.status != 200 {
            return Err(format!("registering pod {n}: {} {}", r.status, r.text()));
        }
        Ok(())
    };
    // Ten pods (the load pod's and nine more) in both.
    for n in 1..10 {
        register(&small, n)?;
        register(&agent, n)?;
    }

    eprintln!("bench: registering up to {} pods", args.pods);
    let started = Instant::now();
    for n in 10..args.pods {
        if n % 500 == 0 {
            check_interrupted()?;
        }
        register(&agent, n)?;
    }
    let registration_per_sec =
        f64::from(args.pods.saturating_sub(10)) / started.elapsed().as_secs_f64();
    let [at_10, at_n] = throughput(args, [&small, &agent], load_pod, scripts)?;
    drop(small);
    let rss_hwm_kib = agent.peak_rss_kib();

    eprintln!("bench: restarting to time the reload");
    agent.stop();
    agent.restart();
    let log = agent.log();
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
