//! Workload API streams at scale: N pods, each in a namespace of its own
//! (attestation wants exactly one live pod per namespace), each holding one
//! `FetchX509SVID` stream open over TCP, as an X509Source in every pod
//! would. Measures the agent's memory per stream, its CPU while the
//! streams are idle, and how long a CA rotation takes to reach every
//! stream. The client is rust-spiffe's, over sockets made inside each
//! pod's namespace.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use integration::{fixtures, http::Request, AgentOptions, PodNet};
use tokio::sync::Semaphore;

use crate::{check_interrupted, directory::Stats, wrk};

/// How long CPU is sampled while the agent is idle.
const IDLE: Duration = Duration::from_secs(10);
/// Streams being opened at once (each costs the agent a key per identity).
const OPENING: usize = 32;
/// The longest a rotation may take to reach every stream.
const ROTATION_DEADLINE: Duration = Duration::from_secs(120);

fn uuid(n: u32) -> String {
    format!("57ea3000-a507-4694-aabf-{n:012x}")
}

fn token(n: u32) -> String {
    format!("stream{n:026x}")
}

/// What each stream saw: when its first message came, and when the first
/// one after the rotation did.
#[derive(Default)]
struct Seen {
    first: Vec<Duration>,
    svids_per_message: usize,
    after_rotation: Vec<Instant>,
    ended: Vec<String>,
}

pub fn measure(pods: u32) -> Result<(), String> {
    // The agent holds a descriptor per pod (its namespace) and one per
    // stream (its connection), and leaves 1,024 spare: as many streams as
    // that leaves of the open-file limit, which only CAP_SYS_RESOURCE may
    // raise past its hard value.
    let limit = raise_fd_limit(u64::from(pods) * 2 + 1_024)?;
    let streams = u32::try_from(limit.saturating_sub(u64::from(pods) + 1_024))
        .unwrap_or(u32::MAX)
        .min(pods);
    let options = AgentOptions::identity("token+netns")
        .arg("--rate-limit")
        .arg(crate::RATE_HEADROOM)
        .arg("--rate-burst")
        .arg(crate::RATE_HEADROOM)
        .arg("--max-connections")
        .arg((streams + 256).to_string());
    // A neighbour entry per pod on the host: past gc_thresh3 (1,024 by
    // default) the kernel drops them ("neighbor table overflow") and the
    // pods' handshakes stall.
    let _room = NeighbourRoom::for_entries(u64::from(pods) * 2)?;
    let mut options = options;
    options.log_filter = "warn".into();
    options.liveness_interval = "500ms";
    let agent = integration::Agent::start(options);
    let pid = agent.pid().unwrap_or(0);

    eprintln!("bench: streams: creating {pods} namespaces");
    let started = Instant::now();
    let mut nets = Vec::with_capacity(pods as usize);
    for n in 0..pods {
        if n.is_multiple_of(500) {
            check_interrupted()?;
        }
        nets.push(PodNet::new());
    }
    let setup = started.elapsed();
    eprintln!("bench: streams: registering {pods} pods");
    let manifest = fixtures::read("pods/web-pod.json");
    let started = Instant::now();
    for (n, net) in nets.iter().enumerate() {
        let n = n as u32;
        if n.is_multiple_of(500) {
            check_interrupted()?;
        }
        let r = agent.register(
            &uuid(n),
            &token(n),
            &manifest,
            &format!("&netns={}", net.netns_path()),
        );
        if r.status != 200 {
            return Err(format!("registering pod {n}: {} {}", r.status, r.text()));
        }
    }
    let registration = started.elapsed();
    let (cpu_idle_without, rss_without) = idle(pid)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let opened_at = Instant::now();
    let opening = Arc::new(Semaphore::new(OPENING));
    let rotated_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    eprintln!("bench: streams: opening {streams} streams, each from inside its pod");
    for (n, net) in nets.iter().take(streams as usize).enumerate() {
        if n.is_multiple_of(500) {
            check_interrupted()?;
        }
        // A connection is made only when its stream can be opened at once:
        // the agent closes a connection that makes no call within 10 s.
        let permit = runtime
            .block_on(opening.clone().acquire_owned())
            .map_err(|e| e.to_string())?;
        let to = SocketAddr::from((net.host_v4(), agent.workload_port));
        let socket = netns::run_in(&net.netns(), move || std::net::TcpStream::connect(to))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("connect to the Workload API at {to}: {e}"))?;
        let (seen, rotated_at) = (seen.clone(), rotated_at.clone());
        runtime.spawn(async move {
            let asked = Instant::now();
            let mut stream = match open(socket).await {
                Ok(s) => s,
                Err(e) => {
                    seen.lock().unwrap().ended.push(e);
                    return;
                }
            };
            match stream.next().await {
                Some(Ok(context)) => {
                    let mut s = seen.lock().unwrap();
                    s.first.push(asked.elapsed());
                    s.svids_per_message = context.svids().len();
                }
                other => {
                    let e = format!("first message: {:?}", other.map(|r| r.map(|_| ())));
                    seen.lock().unwrap().ended.push(e);
                    return;
                }
            }
            drop(permit);
            while let Some(item) = stream.next().await {
                let now = Instant::now();
                match item {
                    Ok(_) if rotated_at.lock().unwrap().is_some_and(|r| now >= r) => {
                        seen.lock().unwrap().after_rotation.push(now);
                        // Keep the stream open: only its first push counts.
                        while stream.next().await.is_some() {}
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        seen.lock().unwrap().ended.push(e.to_string());
                        return;
                    }
                }
            }
        });
    }
    let all = streams as usize;
    let opened = integration::wait_for(
        "every stream's first message",
        Duration::from_secs(u64::from(pods) / 10 + 60),
        || {
            let s = seen.lock().unwrap();
            (s.first.len() + s.ended.len() >= all).then_some(s.first.len())
        },
    );
    let open_secs = opened_at.elapsed().as_secs_f64();
    if let Some(e) = seen.lock().unwrap().ended.first() {
        return Err(format!("a stream failed to open: {e}"));
    }
    let (cpu_idle_with, rss_with) = idle(pid)?;

    eprintln!("bench: streams: rotating the CA");
    let rotation_started = Instant::now();
    *rotated_at.lock().unwrap() = Some(rotation_started);
    let r = agent.unix(&Request::new("POST", "/keys/rotate?kind=x509", None, &[]));
    if r.status != 200 {
        return Err(format!("rotate: {} {}", r.status, r.text()));
    }
    let deadline = rotation_started + ROTATION_DEADLINE;
    let reached = loop {
        let n = seen.lock().unwrap().after_rotation.len();
        if n >= opened || Instant::now() >= deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (latencies, first, svids) = {
        let s = seen.lock().unwrap();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let after: Vec<f64> = s
            .after_rotation
            .iter()
            .map(|t| ms(t.duration_since(rotation_started)))
            .collect();
        let first: Vec<f64> = s.first.iter().copied().map(ms).collect();
        (Stats::of(&after), Stats::of(&first), s.svids_per_message)
    };
    runtime.shutdown_background();

    let per_stream_kib = rss_with.saturating_sub(rss_without) as f64 / opened.max(1) as f64;
    println!();
    println!(
        "Workload API streams: {pods} pods, each in its own namespace (set up in {:.1} s, registered at {:.0}/s); {streams} of them (what the open-file limit of {limit} leaves) each hold one FetchX509SVID stream over TCP (rust-spiffe, {} SVIDs per message). Opened {opened} streams in {open_secs:.1} s, {OPENING} at a time (first message median {:.1} ms, p99 {:.1} ms).",
        setup.as_secs_f64(),
        f64::from(pods) / registration.as_secs_f64(),
        svids,
        first.median,
        first.p99,
    );
    println!();
    println!("| agent | RSS MiB | CPU % of one core, idle {IDLE:?} |");
    println!("| --- | ---: | ---: |");
    println!(
        "| {pods} pods, no stream | {:.1} | {:.2} |",
        rss_without as f64 / 1024.0,
        cpu_idle_without
    );
    println!(
        "| {pods} pods, {opened} streams held | {:.1} | {:.2} |",
        rss_with as f64 / 1024.0,
        cpu_idle_with
    );
    println!();
    println!(
        "RSS per stream held (its connection included): {per_stream_kib:.1} KiB. CA rotation (`keys rotate --kind x509`) pushed to {reached} of {opened} streams: median {:.0} ms, p99 {:.0} ms, max {:.0} ms after the rotation was asked.",
        latencies.median,
        latencies.p99,
        latencies.max,
    );
    eprintln!("bench: streams: removing {} namespaces", nets.len());
    drop(agent);
    drop(nets);
    if reached < opened {
        return Err(format!(
            "the rotation reached {reached} of {opened} streams within {ROTATION_DEADLINE:?}"
        ));
    }
    Ok(())
}

/// A FetchX509SVID stream over `socket` (connected from inside a pod).
async fn open(
    socket: std::net::TcpStream,
) -> Result<
    impl futures::Stream<Item = Result<spiffe::X509Context, spiffe::WorkloadApiError>>,
    String,
> {
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let peer = socket.peer_addr().map_err(|e| e.to_string())?;
    let socket = Mutex::new(Some(socket));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{peer}"))
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_| {
            // The one socket, once: a channel that reconnects would connect
            // from the host, not from the pod.
            let socket = socket.lock().unwrap().take();
            async move {
                let socket = socket.ok_or_else(|| std::io::Error::other("used"))?;
                let socket = tokio::net::TcpStream::from_std(socket)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(socket))
            }
        }))
        .await
        .map_err(|e| e.to_string())?;
    let endpoint = format!("tcp://{peer}")
        .parse()
        .map_err(|e| format!("{e:?}"))?;
    let client = spiffe::WorkloadApiClient::new_with_channel(endpoint, channel);
    client
        .stream_x509_contexts()
        .await
        .map_err(|e| e.to_string())
}

/// The agent's CPU (% of one core) over `IDLE`, and its RSS (KiB) after.
fn idle(pid: u32) -> Result<(f64, u64), String> {
    let before = wrk::cpu_ticks(pid)?;
    std::thread::sleep(IDLE);
    let ticks = wrk::cpu_ticks(pid)? - before;
    let cpu = ticks as f64 / wrk::clock_ticks_per_second() / IDLE.as_secs_f64() * 100.0;
    Ok((cpu, integration::agent::status_kib(pid, "VmRSS")))
}

/// The open-file limit raised towards `want` (the agent inherits it), as
/// far as the hard limit allows without CAP_SYS_RESOURCE: the limit now.
fn raise_fd_limit(want: u64) -> Result<u64, String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    if soft >= want {
        return Ok(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_ok() {
        return Ok(want);
    }
    let to = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, to, hard).map_err(|e| e.to_string())?;
    if to < want {
        eprintln!("bench: streams: the open-file limit stays at {to} (no CAP_SYS_RESOURCE)");
    }
    Ok(to)
}

/// The host's neighbour tables (IPv4 and IPv6) sized for `n` entries, and
/// put back as they were on drop.
struct NeighbourRoom {
    saved: Vec<(String, String)>,
}

impl NeighbourRoom {
    fn for_entries(n: u64) -> Result<Self, String> {
        let mut room = Self { saved: Vec::new() };
        for family in ["ipv4", "ipv6"] {
            for (knob, want) in [("gc_thresh3", n), ("gc_thresh2", n / 2)] {
                let path = format!("/proc/sys/net/{family}/neigh/default/{knob}");
                let old = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
                if old.trim().parse::<u64>().is_ok_and(|v| v >= want) {
                    continue;
                }
                std::fs::write(&path, want.to_string()).map_err(|e| format!("{path}: {e}"))?;
                room.saved.push((path, old));
            }
        }
        Ok(room)
    }
}

impl Drop for NeighbourRoom {
    fn drop(&mut self) {
        for (path, old) in self.saved.drain(..).rev() {
            let _ = std::fs::write(&path, old.trim());
        }
    }
}
