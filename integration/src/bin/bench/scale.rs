//! Scale: many pods over many namespaces: registration rate, memory,
//! throughput against the number of pods, start-up reload time.

use std::time::{Duration, Instant};

use integration::{fixtures, Agent, PodNet};

use crate::{check_interrupted, medians, report::Scale, wrk, Args, TOKEN};

fn throughput(
    args: &Args,
    agent: &Agent,
    pod: &PodNet,
    scripts: &std::path::Path,
    label: &str,
) -> Result<wrk::Figures, String> {
    let load = wrk::Load {
        pod: Some(pod),
        threads: 1,
        url: format!(
            "http://{}:{}/{TOKEN}/acMetadata/v1/pod/uuid",
            pod.host_v4(),
            agent.port
        ),
        form: None,
        close: false,
        connections: args.connections,
        duration: Duration::from_secs(args.seconds),
        server: agent.pid().unwrap_or(0),
    };
    wrk::warm_up(&load, scripts)?;
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        check_interrupted()?;
        eprintln!("bench: scale throughput at {label} round {}", round + 1);
        runs.push(wrk::run(&load, scripts)?);
    }
    Ok(medians(&runs))
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
    let manifest = fixtures::read("pods/web-pod.json");
    let register = |n: u32| -> Result<(), String> {
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
    // Ten pods (the load pod's and nine more).
    for n in 1..10 {
        register(n)?;
    }
    let at_10 = throughput(args, &agent, load_pod, scripts, "10 pods")?;

    eprintln!("bench: registering up to {} pods", args.pods);
    let started = Instant::now();
    for n in 10..args.pods {
        if n % 500 == 0 {
            check_interrupted()?;
        }
        register(n)?;
    }
    let registration_per_sec =
        f64::from(args.pods.saturating_sub(10)) / started.elapsed().as_secs_f64();
    let at_n = throughput(
        args,
        &agent,
        load_pod,
        scripts,
        &format!("{} pods", args.pods),
    )?;
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
