//! Tenant isolation under attack: the victim's latency and success while
//! another pod floods at full speed, next to the victim alone; the agent's
//! peak memory under a connection flood and a header-memory attack.

use std::{
    io::{BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use integration::{
    fixtures,
    http::{read_response, Request},
    Agent, AgentOptions, PodNet,
};
use serde_json::{json, Value};
use socket2::Socket;

use crate::{
    bridged_attacks::{self, BridgedAttacks},
    check_interrupted, wrk,
};

const T_V: &str = "victim56789abcdef0123456789abcde";
const T_A: &str = "attack56789abcdef0123456789abcde";
const U_V: &str = "11111111-a507-4694-aabf-edbe4fc5266f";
const U_A: &str = "22222222-a507-4694-aabf-edbe4fc5266f";

/// The victim's pace: well within the default rate (1000/s).
const VICTIM_INTERVAL: Duration = Duration::from_millis(2);
const VICTIM_REQUESTS: usize = 2_000;

pub struct Isolation {
    pub alone: Victim,
    /// Under floods of 64 connections (the attacker's whole share), of 128
    /// and of 1024 (beyond it: the first extra one closed at accept, the
    /// rest dropped by the kernel's SYN filter).
    pub floods: Vec<Flood>,
    pub rss_idle_kib: u64,
    pub rss_connection_flood_kib: u64,
    /// Of the 4,500 the attacker tried at once, how many the agent held,
    /// and how many it closed at accept (the kernel dropped the rest).
    pub half_heads_held: usize,
    pub half_heads_closed_at_accept: u64,
    pub rss_header_attack_kib: u64,
    pub rss_header_attack_unlimited_kib: u64,
    /// Heads of 15 KB, just under the 16 KiB bound: held open, not refused.
    pub rss_head_just_under_kib: u64,
    pub bridged: BridgedAttacks,
}

pub struct Flood {
    pub connections: u32,
    pub victim: Victim,
    pub rps: f64,
    pub requests: u64,
    pub refused_429: u64,
    pub agent_cpu_share: f64,
}

#[derive(Clone, Copy, Default)]
pub struct Victim {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub success: f64,
}

impl Isolation {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "\nIsolation (default flags: 1000 req/s per pod, burst 2000, 64 connections per source): the victim pod at one request per {} ms ({} requests), alone: p50 {:.3} ms, p99 {:.3} ms, success {:.1}%.",
            VICTIM_INTERVAL.as_millis(), VICTIM_REQUESTS,
            self.alone.p50_ms, self.alone.p99_ms, 100.0 * self.alone.success,
        );
        for f in &self.floods {
            s += &format!(
                " While another pod floods with wrk -t2 -c{} ({:.0} req/s answered, {} of {} with 429; the agent used {:.0}% of one core): p50 {:.3} ms, p99 {:.3} ms ({:.1}x alone), success {:.1}%.",
                f.connections, f.rps, f.refused_429, f.requests, 100.0 * f.agent_cpu_share,
                f.victim.p50_ms, f.victim.p99_ms, f.victim.p99_ms / self.alone.p99_ms.max(1e-9),
                100.0 * f.victim.success,
            );
        }
        s += &format!(
            " Agent peak RSS (VmHWM): {:.1} MiB idle, {:.1} MiB after one pod started 4,500 connections with idle half-heads at once ({} held, {} closed at accept, the rest dropped by the kernel), {:.1} MiB after it opened connections one after another that each sent an unfinished 380 KB header, until the kernel dropped 20 in a row ({:.1} MiB with the per-source limit off, when 3,000 open: each is refused at the 16 KiB head bound), {:.1} MiB with 3,000 unfinished 15 KB heads held open (per-source limit off).\n",
            self.rss_idle_kib as f64 / 1024.0, self.rss_connection_flood_kib as f64 / 1024.0, self.half_heads_held, self.half_heads_closed_at_accept,
            self.rss_header_attack_kib as f64 / 1024.0, self.rss_header_attack_unlimited_kib as f64 / 1024.0,
            self.rss_head_just_under_kib as f64 / 1024.0,
        );
        s += &self.bridged.markdown();
        s
    }

    pub fn json(&self) -> Value {
        let v = |v: &Victim| json!({"p50_ms": v.p50_ms, "p99_ms": v.p99_ms, "success": v.success});
        json!({
            "victim_alone": v(&self.alone),
            "floods": self.floods.iter().map(|f| json!({
                "connections": f.connections, "victim": v(&f.victim), "rps": f.rps,
                "requests": f.requests, "refused_429": f.refused_429,
                "agent_cpu_share": f.agent_cpu_share,
            })).collect::<Vec<_>>(),
            "rss_idle_kib": self.rss_idle_kib,
            "rss_connection_flood_kib": self.rss_connection_flood_kib,
            "half_heads_held": self.half_heads_held,
            "half_heads_closed_at_accept": self.half_heads_closed_at_accept,
            "rss_header_attack_kib": self.rss_header_attack_kib,
            "rss_header_attack_unlimited_kib": self.rss_header_attack_unlimited_kib,
            "rss_head_just_under_kib": self.rss_head_just_under_kib,
            "bridged_attacks": self.bridged.json(),
        })
    }
}

fn start_pair(extra: &[&str]) -> (Agent, PodNet, PodNet) {
    let mut options = AgentOptions::identity("token+netns");
    for a in extra {
        options = options.arg(*a);
    }
    options.liveness_interval = "500ms";
    let agent = Agent::start(options);
    let (victim, attacker) = (PodNet::new(), PodNet::new());
    let manifest = fixtures::read("appc-examples/pod_runtime.json");
    agent.register_in(U_V, T_V, &manifest, &victim);
    agent.register_in(U_A, T_A, &manifest, &attacker);
    (agent, victim, attacker)
}

fn connect(agent: &Agent, pod: &PodNet) -> std::io::Result<TcpStream> {
    pod.connect(None, SocketAddr::new(IpAddr::V4(pod.host_v4()), agent.port))
}

/// The victim's paced requests on one keep-alive connection.
fn victim(agent: &Agent, pod: &PodNet) -> Result<Victim, String> {
    let stream = connect(agent, pod).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = stream;
    let req = Request::get(&format!("/{T_V}/acMetadata/v1/pod/uuid"));
    let (mut latencies, mut ok) = (Vec::new(), 0usize);
    let mut next = Instant::now();
    for _ in 0..VICTIM_REQUESTS {
        let start = Instant::now();
        writer.write_all(req.bytes()).map_err(|e| e.to_string())?;
        let r = read_response(&mut reader).map_err(|e| e.to_string())?;
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        if r.status == 200 {
            ok += 1;
        }
        next += VICTIM_INTERVAL;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Ok(Victim {
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        success: ok as f64 / VICTIM_REQUESTS as f64,
    })
}

/// `pod` opens up to `n` connections one after another, each sending
/// `head` (never finished); it gives up once the kernel has dropped 20 in a
/// row (the SYN filter, beyond the share).
fn open_half_heads(agent: &Agent, pod: &PodNet, n: usize, head: &[u8]) -> Vec<TcpStream> {
    let to = SocketAddr::new(IpAddr::V4(pod.host_v4()), agent.port);
    let (mut held, mut dropped_in_a_row) = (Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while held.len() < n && dropped_in_a_row < 20 && Instant::now() < deadline {
        match pod.connect_within(None, to, Duration::from_millis(200)) {
            Ok(mut s) => {
                dropped_in_a_row = 0;
                let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                let _ = s.write_all(head);
                held.push(s);
            }
            Err(_) => dropped_in_a_row += 1,
        }
    }
    held
}

/// What a burst of connections from one pod came to.
struct Burst {
    /// Still open on the agent's side after the burst.
    held: Vec<Socket>,
    /// Reached the agent and were closed at accept.
    closed_at_accept: u64,
}

/// `pod` starts `n` connections at once, each sending a partial head as
/// soon as it opens: a connection flood.
fn burst_half_heads(agent: &Agent, pod: &PodNet, n: usize) -> Burst {
    let refused = || agent.metric("rkt_mds_connections_refused_total{reason=\"per-source\"}");
    let before = refused();
    let to = SocketAddr::new(IpAddr::V4(pod.host_v4()), agent.port);
    let started: Vec<Socket> = (0..n)
        .filter_map(|_| pod.connect_started(to).ok())
        .collect();
    // Handshakes that will finish do so within this (a dropped SYN is
    // retried only after 1 s), and the agent accepts or closes them.
    std::thread::sleep(Duration::from_millis(500));
    let held = started
        .into_iter()
        .filter(|s| s.peer_addr().is_ok() && s.send(b"GET /x").is_ok())
        .collect::<Vec<_>>();
    std::thread::sleep(Duration::from_millis(100));
    // The ones the agent closed read as ended.
    let held: Vec<Socket> = held
        .into_iter()
        .filter(|s| {
            let mut buf = [std::mem::MaybeUninit::new(0u8); 1];
            matches!(s.peek(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .collect();
    Burst {
        held,
        closed_at_accept: refused() - before,
    }
}

pub fn measure(scripts: &std::path::Path) -> Result<Isolation, String> {
    eprintln!("bench: isolation, the victim alone");
    let (agent, v, a) = start_pair(&[]);
    let rss_idle_kib = agent.peak_rss_kib();
    let alone = victim(&agent, &v)?;
    check_interrupted()?;
    let mut floods = Vec::new();
    for connections in [64, 128, 1024] {
        eprintln!(
            "bench: isolation, the victim while another pod floods with {connections} connections"
        );
        let flood = wrk::Load {
            pod: Some(&a),
            threads: 2,
            url: format!(
                "http://{}:{}/{T_A}/acMetadata/v1/pod/uuid",
                a.host_v4(),
                agent.port
            ),
            form: None,
            close: false,
            connections,
            duration: Duration::from_secs(8),
            server: agent.pid().unwrap_or(0),
        };
        let pid = agent.pid().unwrap_or(0);
        let cpu_before = wrk::cpu_ticks(pid)?;
        let started = Instant::now();
        let (victim_result, flood_result) = std::thread::scope(|s| {
            let flooder = s.spawn(|| wrk::run_counting(&flood, scripts));
            // Let the flood start first.
            std::thread::sleep(Duration::from_millis(500));
            let v = victim(&agent, &v);
            (v, flooder.join())
        });
        let secs = started.elapsed().as_secs_f64();
        let cpu = (wrk::cpu_ticks(pid)? - cpu_before) as f64 / wrk::clock_ticks_per_second();
        let (figures, outcome) = flood_result.map_err(|_| "the flood panicked".to_string())??;
        floods.push(Flood {
            connections,
            victim: victim_result?,
            rps: figures.rps,
            requests: outcome.requests,
            refused_429: outcome.non_2xx,
            agent_cpu_share: cpu / secs,
        });
        check_interrupted()?;
    }
    eprintln!("bench: isolation, a connection flood of idle half-heads");
    let burst = burst_half_heads(&agent, &a, 4_500);
    let rss_connection_flood_kib = agent.peak_rss_kib();
    let (half_heads_held, half_heads_closed_at_accept) = (burst.held.len(), burst.closed_at_accept);
    drop(burst);
    drop(agent);
    check_interrupted()?;
    eprintln!("bench: isolation, unfinished 380 KB headers");
    let head = {
        let mut h = b"GET / HTTP/1.1\r\nHost: x\r\nX-Fill: ".to_vec();
        h.resize(380 * 1024, b'a');
        h
    };
    let under = {
        let mut h = b"GET / HTTP/1.1\r\nHost: x\r\nX-Fill: ".to_vec();
        h.resize(15 * 1024, b'a');
        h
    };
    let unlimited: &[&str] = &["--max-connections-per-source", "0"];
    let mut rss = Vec::new();
    for (extra, head) in [(&[][..], &head), (unlimited, &head), (unlimited, &under)] {
        let (agent, _v, a) = start_pair(extra);
        let held = open_half_heads(&agent, &a, 3_000, head);
        rss.push(agent.peak_rss_kib());
        drop(held);
    }
    Ok(Isolation {
        alone,
        floods,
        rss_idle_kib,
        rss_connection_flood_kib,
        half_heads_held,
        half_heads_closed_at_accept,
        rss_header_attack_kib: rss[0],
        rss_header_attack_unlimited_kib: rss[1],
        rss_head_just_under_kib: rss[2],
        bridged: bridged_attacks::measure()?,
    })
}
