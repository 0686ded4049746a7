//! `bench --etcd`, last part: the cluster directory on a hardened etcd
//! (TLS with client certificates, authentication, a role per node) against
//! a plaintext one, side by side: registration to its key in etcd, and the
//! agent's CPU per registration.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use integration::{
    agent::binary,
    etcd::{
        secure::{access_args, SecureEtcd},
        Etcd,
    },
    fixtures, Agent, AgentOptions,
};

use crate::{
    directory::{agent_with, register, uuid, Stats, Watcher},
    wrk::{clock_ticks_per_second, cpu_ticks},
};

const PACED: u32 = 200;
const PACE: Duration = Duration::from_millis(20);
const CPU_RUNS: u32 = 3000;

/// When each key under `prefix` was first put, from `etcdctl watch` on the
/// hardened etcd (as root).
struct CtlWatch {
    child: std::process::Child,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
}

impl CtlWatch {
    fn start(etcd: &SecureEtcd, prefix: &str) -> Result<Self, String> {
        let mut child = etcd
            .root_ctl()
            .command(&["watch", "--prefix", prefix, "-w", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let now = Instant::now();
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                for e in v["Events"].as_array().into_iter().flatten() {
                    if let Some(k) = e["kv"]["key"].as_str().and_then(|k| B64.decode(k).ok()) {
                        let mut seen = s.lock().unwrap_or_else(|p| p.into_inner());
                        seen.entry(String::from_utf8_lossy(&k).into_owned())
                            .or_insert(now);
                    }
                }
            }
        });
        // The watch is open once etcdctl answers for an existing key.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self { child, seen })
    }

    fn wait_for(&self, prefix: &str, sent: &[(String, Instant)]) -> Result<Vec<f64>, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                let delays: Option<Vec<f64>> = sent
                    .iter()
                    .map(|(u, at)| {
                        seen.get(&format!("{prefix}{u}"))
                            .map(|t| t.saturating_duration_since(*at).as_secs_f64() * 1e3)
                    })
                    .collect();
                if let Some(d) = delays {
                    return Ok(d);
                }
            }
            if Instant::now() > deadline {
                return Err("not every key reached the hardened etcd".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CtlWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn measure() -> Result<(), String> {
    let manifest = fixtures::read("pods/bare-pod.json");
    let plain_etcd = Etcd::start();
    let secure = SecureEtcd::start();
    let files = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(files.path().join("n.pw"), "pw-n\n").map_err(|e| e.to_string())?;
    let roles = Command::new(binary())
        .args([
            "cluster",
            "roles",
            "--node",
            "bench-tls",
            "--password-file",
            "n.pw",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let pasted = secure.run_as_root(&String::from_utf8_lossy(&roles.stdout), files.path());
    if !pasted.status.success() {
        return Err(format!(
            "cluster roles: {}",
            String::from_utf8_lossy(&pasted.stderr)
        ));
    }
    let cert = secure.pki.issue_client("rkt-mds-node-bench-tls", false);
    let plain = agent_with(
        AgentOptions::default()
            .arg("--node-name")
            .arg("bench-plain")
            .arg("--etcd")
            .arg(plain_etcd.endpoint()),
    );
    let mut options = access_args(
        &secure.pki.ca(),
        &cert,
        "rkt-mds-node-bench-tls",
        &files.path().join("n.pw"),
    )
    .into_iter()
    .fold(
        AgentOptions::default()
            .arg("--node-name")
            .arg("bench-tls")
            .arg("--etcd")
            .arg(secure.endpoint()),
        AgentOptions::arg,
    );
    options.log_filter = "info,access=off".into();
    let tls = Agent::start(options);
    for a in [&plain, &tls] {
        a.log_line("the agent to publish", |l| l.contains("publishing to etcd"));
    }

    // Paced registrations, each agent in turn.
    let plain_prefix = "/rkt-mds/pods/bench-plain/";
    let tls_prefix = "/rkt-mds/pods/bench-tls/";
    let watcher = Watcher::start(&plain_etcd, 0, plain_prefix)?;
    let ctl = CtlWatch::start(&secure, tls_prefix)?;
    let (mut sent_plain, mut sent_tls) = (Vec::new(), Vec::new());
    for i in 0..PACED {
        crate::check_interrupted()?;
        for (agent, set, sent) in [(&plain, 10, &mut sent_plain), (&tls, 11, &mut sent_tls)] {
            let t = Instant::now();
            register(agent, set, i, &manifest)?;
            sent.push((uuid(set, i), t));
        }
        std::thread::sleep(PACE);
    }
    let plain_ms = watcher.wait_for(&sent_plain, Duration::from_secs(60))?;
    let tls_ms = ctl.wait_for(tls_prefix, &sent_tls)?;

    // CPU per registration, interleaved.
    let pids = [plain.pid().ok_or("no pid")?, tls.pid().ok_or("no pid")?];
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).collect();
    for i in PACED..PACED + CPU_RUNS {
        if i % 500 == 0 {
            crate::check_interrupted()?;
        }
        register(&plain, 10, i, &manifest)?;
        register(&tls, 11, i, &manifest)?;
    }
    // Until both have published everything (polled through the gateway
    // and etcdctl: neither is the agent's code).
    crate::directory::wait_count(
        &plain_etcd,
        plain_prefix,
        i64::from(PACED + CPU_RUNS),
        Duration::from_secs(120),
    )?;
    let want = (PACED + CPU_RUNS) as usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    while secure.keys(tls_prefix).len() < want {
        if Instant::now() > deadline {
            return Err("the hardened etcd never held every key".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let used: Vec<u64> = pids
        .iter()
        .zip(&before)
        .map(|(p, b)| cpu_ticks(*p).unwrap_or(0) - b)
        .collect();
    let per = |ticks: u64| ticks as f64 / clock_ticks_per_second() * 1e6 / f64::from(CPU_RUNS);

    println!();
    println!("Hardened etcd (TLS with client certificates, authentication, the node's own role) against plaintext, one member each on 127.0.0.1:");
    println!();
    println!(
        "| registration to its key in etcd, one per {} ms | n | median ms | p99 ms | max ms |",
        PACE.as_millis() * 2
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (what, v) in [("plaintext", &plain_ms), ("TLS + auth", &tls_ms)] {
        println!("{}", Stats::row(what, v));
    }
    println!();
    println!(
        "Agent CPU per registration, {CPU_RUNS} registrations to each, interleaved (publishing included): plaintext {:.0} µs, TLS + auth {:.0} µs.",
        per(used[0]),
        per(used[1])
    );
    Ok(())
}
