//! `bench --etcd`: the cluster directory (SPEC §8) against a real etcd.
//! How long a registration takes to reach etcd (1,000 paced, 1,000 back
//! to back, 100 at 10,000 pods), how fast an agent publishes 10,000 pods
//! (a full re-publish into an empty etcd), and what publishing costs the
//! agent in CPU (utime+stime from /proc, with and without `--etcd`).
//! Host-network pods: no namespace set-up in the figures.

use std::{
    collections::HashMap,
    io::ErrorKind,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use integration::{etcd::Etcd, fixtures, Agent, AgentOptions};

use crate::{
    check_interrupted,
    wrk::{clock_ticks_per_second, cpu_ticks},
};

/// Registrations of the latency runs.
const LATENCY_RUNS: u32 = 1_000;
/// The pause between paced registrations.
const PACE: Duration = Duration::from_millis(10);
/// Pods of the scale runs.
const SCALE: u32 = 10_000;
/// Registrations timed at scale.
const AT_SCALE: u32 = 100;
/// How long an idle agent with 10,000 pods is watched.
const IDLE: Duration = Duration::from_secs(20);

pub fn measure() -> Result<(), String> {
    if !integration::etcd::available() {
        return Err("bench --etcd needs /usr/bin/etcd (apt-get install etcd-server)".into());
    }
    let manifest = fixtures::read("pods/bare-pod.json");
    let mut etcd = Etcd::start();
    let ep = etcd.endpoint();

    // 1. Latency: a registration's key appears in etcd.
    eprintln!("bench: registration to etcd, {LATENCY_RUNS} paced and {LATENCY_RUNS} back to back");
    let agent = publishing_agent(&ep, "bench-latency");
    let watcher = Watcher::start(&etcd, 0, "/rkt-mds/pods/bench-latency/")?;
    let mut sent = Vec::new();
    for i in 0..LATENCY_RUNS * 2 {
        check_interrupted()?;
        let paced = i < LATENCY_RUNS;
        let started = Instant::now();
        register(&agent, 1, i, &manifest)?;
        sent.push((uuid(1, i), started));
        if paced {
            std::thread::sleep(PACE.saturating_sub(started.elapsed()));
        }
    }
    let arrivals = watcher.wait_for(&sent, Duration::from_secs(60))?;
    let (paced, burst) = arrivals.split_at(LATENCY_RUNS as usize);
    drop(agent);

    // 2. CPU while registering 10,000 pods, with and without --etcd:
    // interleaved, so that both agents see the same disk and load.
    eprintln!("bench: {SCALE} registrations to each of two agents, without and with --etcd");
    let plain = agent_with(
        AgentOptions::default()
            .arg("--node-name")
            .arg("bench-plain"),
    );
    let scale = publishing_agent(&ep, "bench-scale");
    let pids = [
        plain.pid().ok_or("agent not running")?,
        scale.pid().ok_or("agent not running")?,
        etcd.pid().ok_or("etcd not running")?,
    ];
    let ticks = || -> Result<Vec<u64>, String> { pids.iter().map(|p| cpu_ticks(*p)).collect() };
    let before = ticks()?;
    let started = Instant::now();
    for i in 0..SCALE {
        if i % 1000 == 0 {
            check_interrupted()?;
        }
        register(&plain, 2, i, &manifest)?;
        register(&scale, 3, i, &manifest)?;
    }
    let registering = started.elapsed();
    let used: Vec<u64> = ticks()?.iter().zip(&before).map(|(a, b)| a - b).collect();
    let (plain_cpu, scale_cpu, etcd_cpu) = (used[0], used[1], used[2]);
    let prefix = "/rkt-mds/pods/bench-scale/";
    wait_count(&etcd, prefix, SCALE as i64, Duration::from_secs(120))?;
    let all_in = started.elapsed();

    // 3. A registration at 10,000 pods.
    eprintln!("bench: {AT_SCALE} registrations at {SCALE} pods");
    let watcher = Watcher::start(&etcd, 0, prefix)?;
    let mut sent = Vec::new();
    for i in SCALE..SCALE + AT_SCALE {
        let started = Instant::now();
        register(&scale, 3, i, &manifest)?;
        sent.push((uuid(3, i), started));
        std::thread::sleep(Duration::from_millis(50).saturating_sub(started.elapsed()));
    }
    let at_scale = watcher.wait_for(&sent, Duration::from_secs(60))?;

    // 4. Idle at 10,000 pods: the periodic work.
    eprintln!("bench: idle at {SCALE} pods, {IDLE:?} each");
    let idle_plain = cpu_over(&plain, IDLE)?;
    let idle_scale = cpu_over(&scale, IDLE)?;
    drop(plain);

    // 5. A full re-publish of 10,100 pods into an empty etcd.
    eprintln!("bench: a full re-publish into an empty etcd");
    etcd.stop();
    integration::wait_for(
        "the agent to notice etcd's absence",
        Duration::from_secs(30),
        || scale.log().contains("an etcd call failed").then_some(()),
    );
    let restarted = Instant::now();
    etcd.restart_fresh();
    let total = i64::from(SCALE + AT_SCALE);
    wait_count(&etcd, prefix, total, Duration::from_secs(120))?;
    let back = restarted.elapsed();
    let line = scale.log_line("the re-publish", |l| l.contains("re-published everything"));
    let millis: f64 = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("millis=")?.parse().ok())
        .ok_or(format!("no millis= in {line}"))?;

    let tck = clock_ticks_per_second();
    let secs = |ticks: u64| ticks as f64 / tck;
    println!("Cluster directory (etcd {}, one member on 127.0.0.1; agent --etcd-lease-ttl 30s; host-network pods):", etcd_version());
    println!();
    println!("| registration to its key in etcd | n | median ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (what, v) in [
        (format!("paced, one per {} ms", PACE.as_millis()), paced),
        ("back to back".to_owned(), burst),
        (
            format!("at {SCALE} pods, one per 50 ms"),
            at_scale.as_slice(),
        ),
    ] {
        println!("{}", Stats::row(&what, v));
    }
    println!();
    let extra = secs(scale_cpu) - secs(plain_cpu);
    println!(
        "{SCALE} registrations to each of two agents, interleaved (sequential, fsync'd), {:.1} s: the agent without --etcd used {:.2} CPU s, the one with --etcd {:.2} CPU s: publishing cost {:.2} CPU s ({:.0} µs per registration); etcd itself used {:.2} CPU s. Every key was in etcd {:.1} s after the first registration.",
        registering.as_secs_f64(),
        secs(plain_cpu),
        secs(scale_cpu),
        extra,
        extra * 1e6 / f64::from(SCALE),
        secs(etcd_cpu),
        all_in.as_secs_f64(),
    );
    println!(
        "Idle at {SCALE} pods over {} s: without --etcd {:.2}% of a core, with --etcd {:.2}%.",
        IDLE.as_secs(),
        secs(idle_plain) * 100.0 / IDLE.as_secs_f64(),
        secs(idle_scale) * 100.0 / IDLE.as_secs_f64(),
    );
    println!(
        "Full re-publish of {total} pods into an empty etcd: {:.0} ms ({:.0} pods/s); every key back {:.1} s after etcd restarted (detection and backoff included).",
        millis,
        total as f64 * 1000.0 / millis.max(1.0),
        back.as_secs_f64(),
    );
    drop(scale);
    drop(etcd);
    crate::hardened::measure()
}

pub(crate) fn agent_with(mut options: AgentOptions) -> Agent {
    options.log_filter = "info,access=off".into();
    // The production default.
    options.liveness_interval = "500ms";
    Agent::start(options)
}

fn publishing_agent(endpoint: &str, node: &str) -> Agent {
    let agent = agent_with(
        AgentOptions::default()
            .arg("--node-name")
            .arg(node)
            .arg("--etcd")
            .arg(endpoint),
    );
    agent.log_line("the agent to publish", |l| l.contains("publishing to etcd"));
    agent
}

pub(crate) fn uuid(set: u32, i: u32) -> String {
    format!("{i:08x}-{set:04x}-4694-aabf-edbe4fc5266f")
}

pub(crate) fn register(agent: &Agent, set: u32, i: u32, manifest: &[u8]) -> Result<(), String> {
    let token = format!("bench{set:04x}{i:023x}");
    let r = agent.register(&uuid(set, i), &token, manifest, "");
    if r.status != 200 {
        return Err(format!("register: {} {}", r.status, r.text()));
    }
    Ok(())
}

/// The agent's CPU ticks over `span`.
pub(crate) fn cpu_over(agent: &Agent, span: Duration) -> Result<u64, String> {
    let pid = agent.pid().ok_or("agent not running")?;
    let before = cpu_ticks(pid)?;
    std::thread::sleep(span);
    Ok(cpu_ticks(pid)? - before)
}

/// Waits until `prefix` holds `want` keys (counted by etcd, polled).
pub(crate) fn wait_count(
    etcd: &Etcd,
    prefix: &str,
    want: i64,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let count = etcd.count(prefix);
        if count.as_ref().is_ok_and(|n| *n >= want) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{prefix} never held {want} keys within {limit:?} (last: {count:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn etcd_version() -> String {
    std::process::Command::new(integration::etcd::BINARY)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("etcd Version: "))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
}

/// When each key under a prefix was first put, as seen by a watch of one
/// member.
pub(crate) struct Watcher {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    /// Why the watch ended before it was stopped.
    ended: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    prefix: String,
}

impl Watcher {
    pub(crate) fn start(etcd: &Etcd, member: usize, prefix: &str) -> Result<Self, String> {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, is_ready) = std::sync::mpsc::channel::<()>();
        let end = integration::etcd::range_end(prefix.as_bytes());
        let request = serde_json::json!({"create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(end),
        }});
        let mut stream = etcd.watch(member, &request, Duration::from_millis(100))?;
        let ended = Arc::new(Mutex::new(None));
        let (s, st, why) = (seen.clone(), stop.clone(), ended.clone());
        let thread = std::thread::spawn(move || {
            let end = |reason: String| {
                *why.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
            };
            let mut created = false;
            while !st.load(Ordering::Relaxed) {
                let answer = match stream.next_object() {
                    Ok(Some(answer)) => answer,
                    Ok(None) => {
                        end("etcd closed the watch".into());
                        break;
                    }
                    // A read that timed out (or a line that is not JSON):
                    // look at the stop flag.
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Other
                        ) =>
                    {
                        continue
                    }
                    // The connection is gone (e.g. a TLS stream cut off).
                    Err(e) => {
                        end(format!("the watch's connection failed: {e}"));
                        break;
                    }
                };
                if answer.get("error").is_some() || answer["result"]["canceled"] == true {
                    end(format!("etcd ended the watch: {answer}"));
                    break;
                }
                let result = &answer["result"];
                if !created && result["created"].as_bool() == Some(true) {
                    created = true;
                    let _ = ready.send(());
                }
                let now = Instant::now();
                let mut seen = s.lock().unwrap_or_else(|p| p.into_inner());
                for event in result["events"].as_array().into_iter().flatten() {
                    // PUT is the default (0) type, absent from the JSON.
                    if event["type"].as_str().is_some_and(|t| t != "PUT") {
                        continue;
                    }
                    let Some(key) = event["kv"]["key"].as_str() else {
                        continue;
                    };
                    if let Ok(key) = B64.decode(key) {
                        seen.entry(String::from_utf8_lossy(&key).into_owned())
                            .or_insert(now);
                    }
                }
            }
        });
        is_ready
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the etcd watch did not start".to_owned())?;
        Ok(Self {
            seen,
            ended,
            stop,
            thread: Some(thread),
            prefix: prefix.to_owned(),
        })
    }

    /// The delay (ms) from each (UUID, sent) to its key's first put.
    pub(crate) fn wait_for(
        &self,
        sent: &[(String, Instant)],
        limit: Duration,
    ) -> Result<Vec<f64>, String> {
        let deadline = Instant::now() + limit;
        loop {
            {
                let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                let delays: Option<Vec<f64>> = sent
                    .iter()
                    .map(|(uuid, at)| {
                        let key = format!("{}{uuid}", self.prefix);
                        seen.get(&key)
                            .map(|t| t.saturating_duration_since(*at).as_secs_f64() * 1e3)
                    })
                    .collect();
                if let Some(delays) = delays {
                    return Ok(delays);
                }
            }
            if Instant::now() >= deadline {
                let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).len();
                let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone();
                return Err(format!(
                    "not every key reached etcd within {limit:?} ({seen} keys seen by the watch; {})",
                    ended.unwrap_or_else(|| "the watch went on".into())
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) struct Stats {
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    pub(crate) fn of(v: &[f64]) -> Self {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| {
            v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        Self {
            median: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    /// A markdown row `| what | n | median | p99 | max |` of delays in ms.
    pub(crate) fn row(what: &str, v: &[f64]) -> String {
        let s = Self::of(v);
        format!(
            "| {what} | {} | {:.1} | {:.1} | {:.1} |",
            v.len(),
            s.median,
            s.p99,
            s.max
        )
    }
}
