//! The fleet, simulated on one machine (`bench --fleet`): a 3-member etcd
//! on loopback and N agents with host-network pods, registered through
//! each agent's socket. What is measured is the cluster directory: how
//! fast a registration reaches etcd, what etcd writes, what the readers
//! cost, and what etcd's faults cost (the leader killed mid-burst, an
//! outage, agents killed). With `--fleet-secure` the same on a cluster
//! with TLS and authentication, each agent its own user (`fleet_access`);
//! the bench itself reads etcd as root over TLS, and etcd's metrics on
//! each member's plaintext metrics port.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use integration::{
    agent::binary,
    etcd::Etcd,
    fixtures,
    http::{self, Request},
    Agent, AgentOptions,
};

use crate::{
    check_interrupted,
    directory::{agent_with, etcd_version, register, uuid, Stats, Watcher},
    fleet_access::Access,
    wrk::clock_ticks_per_second,
};

const PREFIX: &str = "/rkt-mds/pods/";
const TTL_SECS: u64 = 10;
/// The steady part of the registrations, paced.
const STEADY_RATE: f64 = 200.0;
const STEADY: u32 = 1000;
/// Registrations of the leader-kill burst; the leader dies after a third.
const FAULT_BURST: u32 = 600;
/// How long etcd is away in the outage: six lease TTLs, so every lease
/// would have expired had etcd not extended them on its return.
const OUTAGE: Duration = Duration::from_secs(60);
const IDLE: Duration = Duration::from_secs(30);

/// GET `path` from `127.0.0.1:port` (HTTP/1.0: read to the end).
fn get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text
        .split_once("\r\n\r\n")
        .map_or(text.clone(), |(_, b)| b.to_owned()))
}

/// etcd's counters, from each member's plaintext metrics port: apart
/// from `Etcd`, so a thread reads them while the members restart.
#[derive(Clone)]
struct Metrics(Vec<u16>);

impl Metrics {
    fn of(etcd: &Etcd) -> Self {
        Self((0..3).map(|i| etcd.metrics_port(i)).collect())
    }

    /// Per running member that has any: the sum of the series of `family`
    /// whose labels hold every one of `labels` (members that do not
    /// answer, or have no such series, are left out).
    fn per_member(&self, family: &str, labels: &[&str]) -> Vec<f64> {
        self.0
            .iter()
            .filter_map(|port| {
                let text = get(*port, "/metrics").ok()?;
                text.lines()
                    .filter(|l| l.starts_with(family) && labels.iter().all(|x| l.contains(x)))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .reduce(|a, b| a + b)
            })
            .collect()
    }

    /// The sum of the series of `family` whose labels hold every one of
    /// `labels`, over every running member.
    fn sum(&self, family: &str, labels: &[&str]) -> f64 {
        self.per_member(family, labels).into_iter().sum()
    }

    /// etcd's applied puts: the most any running member has applied (a
    /// member that is down, or was just restarted with its counter at 0,
    /// does not count). Polled until a member answers: right after the
    /// leader's death no leader is known, and reading one fixed member
    /// then gave 0 (a run reported 10,460 duplicate writes that were that
    /// 0).
    fn puts(&self) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self
                .per_member("etcd_mvcc_put_total ", &[])
                .into_iter()
                .reduce(f64::max)
            {
                Some(n) => return n,
                None if Instant::now() > deadline => return f64::NAN,
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Per member, the gRPC calls started and handled, by method, the
    /// busiest first (`Authenticate 310/280`: 30 still running or never
    /// answered).
    fn calls_by_method(&self) -> String {
        let mut members = Vec::new();
        for port in &self.0 {
            let Ok(text) = get(*port, "/metrics") else {
                members.push(format!(":{port} no answer"));
                continue;
            };
            let mut by: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
            for l in text.lines() {
                let started = l.starts_with("grpc_server_started_total{");
                if !started && !l.starts_with("grpc_server_handled_total{") {
                    continue;
                }
                let Some(method) = l
                    .split("grpc_method=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                else {
                    continue;
                };
                let n: f64 = l
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                let e = by.entry(method.to_owned()).or_default();
                if started {
                    e.0 += n;
                } else {
                    e.1 += n;
                }
            }
            let mut by: Vec<_> = by.into_iter().filter(|(_, (s, _))| *s > 0.0).collect();
            by.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
            let calls: Vec<String> = by
                .iter()
                .map(|(m, (s, h))| format!("{m} {s:.0}/{h:.0}"))
                .collect();
            members.push(format!(":{port} {}", calls.join(", ")));
        }
        members.join("; ")
    }

    /// The highest rate of puts over 250 ms windows, from the first
    /// answer (members just started: their counters begin at 0) until
    /// `stop`.
    fn peak_put_rate(&self, stop: &AtomicBool) -> f64 {
        let mut peak = 0.0f64;
        let mut last = (Instant::now(), self.puts());
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            let now = (Instant::now(), self.puts());
            peak = peak.max((now.1 - last.1) / now.0.duration_since(last.0).as_secs_f64());
            last = now;
        }
        peak
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `rkt-mds command etcd_args args` and returns (wall time, peak RSS
/// in KiB) through a Python wrapper whose only child it is.
fn timed_rkt_mds(
    command: &str,
    etcd_args: &[String],
    args: &[&str],
) -> Result<(Duration, u64), String> {
    let script = "import resource, subprocess, sys\nr = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\nprint(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)";
    let started = Instant::now();
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(binary())
        .arg(command)
        .args(etcd_args)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut fields = text.split_whitespace();
    let code = fields.next().unwrap_or("?");
    if code != "0" {
        return Err(format!(
            "rkt-mds {command} {etcd_args:?} {args:?} exited {code}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let rss = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    Ok((took, rss))
}

/// Registers pods `from..to` of the fleet, round robin over the agents.
fn register_range(
    agents: &[Agent],
    from: u32,
    to: u32,
    manifest: &[u8],
) -> Result<Vec<(String, Instant)>, String> {
    let mut sent = Vec::new();
    for i in from..to {
        if i % 500 == 0 {
            check_interrupted()?;
        }
        let a = (i as usize) % agents.len();
        let started = Instant::now();
        register(&agents[a], 100 + a as u32, i, manifest)?;
        // The watcher's key below the prefix: NODE/UUID.
        sent.push((format!("fleet-{a:03}/{}", uuid(100 + a as u32, i)), started));
    }
    Ok(sent)
}

/// `/health` on every agent's socket, until stopped: failures counted.
fn probe(
    sockets: Vec<std::path::PathBuf>,
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    probes: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        for s in &sockets {
            probes.fetch_add(1, Ordering::Relaxed);
            match http::unix(s, &Request::get("/health")) {
                Ok(r) if r.status == 200 => {}
                _ => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `secure`: on a cluster with TLS and authentication, a user per node.
pub fn measure(n_agents: u32, pods_per_agent: u32, secure: bool) -> Result<(), String> {
    if !integration::etcd::available() {
        return Err("bench --fleet needs /usr/bin/etcd (apt-get install etcd-server)".into());
    }
    if secure && !Path::new(integration::etcd::ctl::ETCDCTL).exists() {
        return Err(
            "bench --fleet-secure needs /usr/bin/etcdctl (apt-get install etcd-client)".into(),
        );
    }
    let manifest = fixtures::read("pods/bare-pod.json");
    let total = n_agents * pods_per_agent;
    let kind = if secure { "secure " } else { "" };
    eprintln!("bench: fleet of {n_agents} agents, {total} pods, on a {kind}3-member etcd");
    let mut etcd = if secure {
        Etcd::secure_cluster(3)
    } else {
        Etcd::cluster(3)
    };
    let nodes: Vec<String> = (0..n_agents).map(|i| format!("fleet-{i:03}")).collect();
    let access = Access::new(&etcd, &nodes)?;
    let agents: Vec<Agent> = nodes
        .iter()
        .map(|node| {
            let options = AgentOptions::default()
                .arg("--node-name")
                .arg(node)
                .arg("--etcd-lease-ttl")
                .arg(format!("{TTL_SECS}s"));
            let a = agent_with(
                access
                    .node_args(node)
                    .into_iter()
                    .fold(options, AgentOptions::arg),
            );
            a.log_line("the agent to publish", |l| l.contains("publishing to etcd"));
            a
        })
        .collect();
    let leader = etcd.leader().ok_or("no leader")?;
    // The watch and the counts go through a member the faults spare.
    let watch_member = (leader + 1) % 3;
    let watcher = Watcher::start(&etcd, watch_member, PREFIX)?;
    let metrics = Metrics::of(&etcd);

    // 1. Registration to etcd: paced, then the rest back to back.
    let puts_before = metrics.puts();
    let started = Instant::now();
    let steady_n = STEADY.min(total);
    let mut steady = Vec::new();
    for i in 0..steady_n {
        let t = Instant::now();
        steady.extend(register_range(&agents, i, i + 1, &manifest)?);
        std::thread::sleep(Duration::from_secs_f64(1.0 / STEADY_RATE).saturating_sub(t.elapsed()));
    }
    let burst = register_range(&agents, steady_n, total, &manifest)?;
    let steady_ms = watcher.wait_for(&steady, Duration::from_secs(120))?;
    let burst_ms = watcher.wait_for(&burst, Duration::from_secs(300))?;
    let fill = started.elapsed();
    let puts_per_registration = (metrics.puts() - puts_before) / f64::from(total);

    // 2. Idle: writes per node per minute, agents' CPU and memory.
    eprintln!("bench: idle for {IDLE:?}");
    let keepalives = || {
        metrics.sum(
            "grpc_server_msg_received_total",
            &["grpc_method=\"LeaseKeepAlive\""],
        )
    };
    let (p0, k0) = (metrics.puts(), keepalives());
    let pids: Vec<u32> = agents.iter().filter_map(Agent::pid).collect();
    let ticks0: u64 = pids
        .iter()
        .map(|p| crate::wrk::cpu_ticks(*p).unwrap_or(0))
        .sum();
    std::thread::sleep(IDLE);
    let ticks1: u64 = pids
        .iter()
        .map(|p| crate::wrk::cpu_ticks(*p).unwrap_or(0))
        .sum();
    let minutes = IDLE.as_secs_f64() / 60.0;
    let idle_puts = (metrics.puts() - p0) / f64::from(n_agents) / minutes;
    let idle_keepalives = (keepalives() - k0) / f64::from(n_agents) / minutes;
    let idle_cpu = (ticks1 - ticks0) as f64
        / clock_ticks_per_second()
        / IDLE.as_secs_f64()
        / f64::from(n_agents);
    let rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();

    // 3. The readers.
    let ranges = || metrics.sum("grpc_server_handled_total", &["grpc_method=\"Range\""]);
    let r0 = ranges();
    let reader = access.reader_args();
    let (audit_time, audit_rss) = timed_rkt_mds("audit", &reader, &["--json"])?;
    let audit_ranges = ranges() - r0;
    let (jwks_time, _) = timed_rkt_mds("jwks", &reader, &[])?;
    let (bundle_time, _) = timed_rkt_mds("bundle", &reader, &[])?;

    // 4. The leader SIGKILLed mid-burst, a probe on every agent.
    eprintln!("bench: the leader killed mid-burst");
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, probes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let prober = {
        let sockets = agents.iter().map(|a| a.socket.clone()).collect();
        let (s, f, p) = (stop.clone(), failures.clone(), probes.clone());
        std::thread::spawn(move || probe(sockets, s, f, p))
    };
    // A count that fails is -1, and says why once.
    let said = std::cell::Cell::new(false);
    let count = |e: &Etcd| {
        e.count(PREFIX).unwrap_or_else(|why| {
            if !said.replace(true) {
                eprintln!("bench: cannot count the keys: {why}");
            }
            -1
        })
    };
    let before_fault = count(&etcd);
    // Every put of the burst, those of its first third still in flight at
    // the kill included; node-record refreshes (one per agent every half
    // TTL) count too.
    let burst_puts0 = metrics.puts();
    register_range(&agents, total, total + FAULT_BURST / 3, &manifest)?;
    let leader = etcd.leader().ok_or("no leader")?;
    etcd.kill_member(leader);
    let killed = Instant::now();
    let killed_at = std::time::SystemTime::now();
    // The goal counts from the new leader, the election's time
    // being etcd's: a survivor's status naming a running member as leader.
    let elected = std::thread::scope(|scope| {
        let watch = scope.spawn(|| {
            while killed.elapsed() < Duration::from_secs(60) {
                if etcd.leader().is_some() {
                    return Some(killed.elapsed());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        });
        let registered = register_range(
            &agents,
            total + FAULT_BURST / 3,
            total + FAULT_BURST,
            &manifest,
        );
        (watch.join().ok().flatten(), registered)
    });
    let elected = match elected {
        (elected, Ok(_)) => elected.ok_or("no new leader within 60 s of the kill")?,
        (_, Err(e)) => return Err(e),
    };
    let want = i64::from(total + FAULT_BURST);
    let mut lowest = i64::MAX;
    let complete = loop {
        let n = count(&etcd);
        if n >= 0 {
            lowest = lowest.min(n);
        }
        if n >= want {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(120) {
            eprintln!("{}", diagnosis(&agents, &etcd, &metrics, killed_at));
            return Err(format!(
                "the directory was not complete 120 s after the leader died ({n} of {want})"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let lost = (before_fault - lowest).max(0);
    let duplicate_writes = (metrics.puts() - burst_puts0) - f64::from(FAULT_BURST);
    etcd.restart_member(leader);
    stop.store(true, Ordering::Relaxed);
    let _ = prober.join();

    // 5. An outage: every member stopped, registrations go on.
    eprintln!("bench: etcd stopped for {OUTAGE:?}");
    let base = total + FAULT_BURST;
    etcd.stop();
    let outage = Instant::now();
    let mut during = 0;
    while outage.elapsed() < OUTAGE {
        register_range(&agents, base + during, base + during + 1, &manifest)?;
        during += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let restarted_at = std::time::SystemTime::now();
    let restarted = Instant::now();
    // The storm's rate is read from the members' start on: waiting for
    // them to answer (and, on a secure cluster, for root's tokens) took
    // long enough for the agents to write the whole backlog before it.
    let storm_done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (m, done) = (metrics.clone(), storm_done.clone());
        std::thread::spawn(move || m.peak_put_rate(&done))
    };
    // The agents' calls flood the members as they start: wait longer than
    // a test would for them to answer (the storm's figure counts it).
    etcd.restart_within(Duration::from_secs(180));
    let want = i64::from(base + during);
    let mut said_at = Duration::ZERO;
    let storm = loop {
        std::thread::sleep(Duration::from_millis(250));
        let n = count(&etcd);
        if n >= want {
            break restarted.elapsed();
        }
        if restarted.elapsed() >= said_at + Duration::from_secs(15) {
            said_at = restarted.elapsed();
            eprintln!("bench: {n} of {want} keys {said_at:.0?} after the outage");
        }
        if restarted.elapsed() > Duration::from_secs(180) {
            storm_done.store(true, Ordering::Relaxed);
            eprintln!("{}", diagnosis(&agents, &etcd, &metrics, restarted_at));
            return Err(format!(
                "the directory was not complete 180 s after the outage ({n} of {want})"
            ));
        }
    };
    storm_done.store(true, Ordering::Relaxed);
    let peak_rate = sampler.join().unwrap_or(f64::NAN);
    // The members restarted: their counters are since then. On a secure
    // cluster each is a password check (bcrypt).
    let authentications = metrics.sum(
        "grpc_server_started_total",
        &["grpc_method=\"Authenticate\""],
    );
    eprintln!(
        "bench: etcd's gRPC calls per member since the outage: {}",
        metrics.calls_by_method()
    );
    // When each agent was back, from its log (its clock is the same): the
    // first line after the restart saying so, waited for (an agent with
    // nothing queued may come back after the directory is complete).
    let since = restarted_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let back_of = |a: &Agent| -> Option<(f64, bool)> {
        a.log().lines().find_map(|l| {
            let went_on = l.contains("etcd answers again");
            let anew = l.contains("re-published everything") || l.contains("publishing to etcd");
            let t = parse_stamp(l.get(..26)?)? - since;
            ((went_on || anew) && t > 0.0).then_some((t, went_on))
        })
    };
    let waited = Instant::now();
    let mut back: Vec<Option<(f64, bool)>> = agents.iter().map(back_of).collect();
    while back.iter().any(Option::is_none) && waited.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        back = agents.iter().map(back_of).collect();
    }
    let went_on = back.iter().flatten().filter(|(_, w)| *w).count();
    let back: Vec<f64> = back.into_iter().flatten().map(|(t, _)| t).collect();

    // 6. A tenth of the agents SIGKILLed: their keys go at lease expiry.
    let doomed = (n_agents / 10).max(1);
    eprintln!("bench: {doomed} agents killed");
    let mut agents = agents;
    let remaining_before = count(&etcd);
    let mut doomed_pods = 0;
    for a in agents.iter_mut().take(doomed as usize) {
        a.kill();
    }
    for i in 0..doomed {
        doomed_pods += etcd.count(&format!("{PREFIX}fleet-{i:03}/")).unwrap_or(0);
    }
    let killed_at = Instant::now();
    let want_after = remaining_before - doomed_pods;
    let vanished = loop {
        if count(&etcd) <= want_after {
            break killed_at.elapsed();
        }
        if killed_at.elapsed() > Duration::from_secs(TTL_SECS * 6) {
            return Err("the killed agents' keys did not vanish".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    // The report.
    println!(
        "Fleet: {n_agents} agents × {pods_per_agent} host-network pods = {total} pods; etcd {} × 3 members on 127.0.0.1 (the same 2 cores), {}; --etcd-lease-ttl {TTL_SECS}s.",
        etcd_version(),
        access.describe()
    );
    println!();
    println!("| registration to its key in etcd | n | median ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "{}",
        Stats::row(&format!("steady, {STEADY_RATE:.0}/s"), &steady_ms)
    );
    println!("{}", Stats::row("burst, back to back", &burst_ms));
    println!();
    println!("| figure | value |");
    println!("| --- | ---: |");
    println!(
        "| all {total} keys in etcd after the first registration | {:.1} s |",
        fill.as_secs_f64()
    );
    println!("| etcd puts per registration | {puts_per_registration:.2} |");
    println!("| etcd puts per idle node per minute | {idle_puts:.1} |");
    println!("| lease keep-alives per idle node per minute | {idle_keepalives:.1} |");
    println!(
        "| agent CPU at idle (mean of {n_agents}) | {:.2}% of a core |",
        idle_cpu * 100.0
    );
    println!(
        "| agent RSS at idle (max of {n_agents}) | {} MiB |",
        rss.iter().max().copied().unwrap_or(0) / 1024
    );
    println!(
        "| `audit --etcd` over {total} pods: wall time | {:.2} s |",
        audit_time.as_secs_f64()
    );
    println!("| `audit --etcd`: peak RSS | {} MiB |", audit_rss / 1024);
    println!("| `audit --etcd`: etcd ranges (pages) | {audit_ranges:.0} |");
    println!(
        "| `jwks --etcd`: wall time | {:.2} s |",
        jwks_time.as_secs_f64()
    );
    println!(
        "| `bundle --etcd`: wall time | {:.2} s |",
        bundle_time.as_secs_f64()
    );
    println!(
        "| leader SIGKILLed mid-burst: a new leader after | {:.2} s |",
        elected.as_secs_f64()
    );
    println!(
        "| leader SIGKILLed mid-burst: directory complete again after | {:.2} s ({:.2} s after the new leader) |",
        complete.as_secs_f64(),
        complete.saturating_sub(elected).as_secs_f64()
    );
    println!("| leader SIGKILLed: keys lost | {lost} |");
    println!("| leader SIGKILLed: puts beyond one per registration | {duplicate_writes:.0} |");
    println!(
        "| leader SIGKILLed: failed local /health probes | {} of {} |",
        failures.load(Ordering::Relaxed),
        probes.load(Ordering::Relaxed)
    );
    println!("| etcd stopped {} s with {during} registrations meanwhile: complete after restart | {:.2} s |", OUTAGE.as_secs(), storm.as_secs_f64());
    println!("| the re-publish storm: peak etcd puts/s | {peak_rate:.0} |");
    println!("| authentications from etcd's restart until complete (all members) | {authentications:.0} |");
    if let (Some(first), Some(last)) = (
        back.iter().cloned().reduce(f64::min),
        back.iter().cloned().reduce(f64::max),
    ) {
        println!("| agents back in etcd after the restart: first, last of {} (jitter; {went_on} went on in their session, the others re-published) | {first:.2} s, {last:.2} s |", back.len());
    }
    println!("| {doomed} agents SIGKILLed: their {doomed_pods} keys gone after | {:.1} s (lease {TTL_SECS} s) |", vanished.as_secs_f64());
    drop(watcher);
    Ok(())
}

/// Seconds since the epoch of a log line's `YYYY-MM-DDTHH:MM:SS.uuuuuu`.
fn parse_stamp(stamp: &str) -> Option<f64> {
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.trim_end_matches('Z').parse::<f64>().ok()?,
    );
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86400.0 + h * 3600.0 + min * 60.0 + sec)
}

/// What a failed fault phase leaves to read: the agents' log lines since
/// `since`, counted by message (fields and time left out), and the last
/// lines of each etcd member's log. The agents' and members' files are
/// removed with them when the bench exits.
fn diagnosis(
    agents: &[Agent],
    etcd: &Etcd,
    metrics: &Metrics,
    since: std::time::SystemTime,
) -> String {
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut by_message: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for a in agents {
        let mut seen = std::collections::BTreeSet::new();
        for line in a.log().lines() {
            let Some(t) = line.get(..26).and_then(parse_stamp) else {
                continue;
            };
            if t < since || line.contains(" access: ") {
                continue;
            }
            let message: Vec<&str> = line
                .split_whitespace()
                .skip(1)
                .take_while(|w| {
                    !w.split_once('=').is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
                })
                .collect();
            let message = message.join(" ");
            let e = by_message.entry(message.clone()).or_default();
            e.0 += 1;
            if seen.insert(message) {
                e.1 += 1;
            }
        }
    }
    let mut out =
        String::from("bench: the agents' log lines since the fault (lines, agents, message):\n");
    for (message, (lines, agents)) in &by_message {
        out.push_str(&format!("  {lines:>6} {agents:>4}  {message}\n"));
    }
    out.push_str(&format!(
        "bench: etcd's gRPC calls per member since its start: {}\n",
        metrics.calls_by_method()
    ));
    out.push_str("bench: the members' last log lines:\n");
    let log = etcd.log();
    let mut members: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in log.lines() {
        match members.last_mut() {
            Some((_, lines)) if !line.starts_with("--- ") => lines.push(line),
            _ => members.push((line, Vec::new())),
        }
    }
    for (name, lines) in members {
        out.push_str(name);
        out.push('\n');
        for l in &lines[lines.len().saturating_sub(25)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}
