//! The benchmark: the release agent against a bare hyper server, both
//! loaded from inside pod network namespaces over veth, alternating, in
//! one run. Prints a markdown table and writes every figure as JSON.
//! Needs root and `wrk` (see integration/bench.sh).

mod bridged_attacks;
mod churn_long;
mod directory;
mod documents;
mod fleet;
mod fleet_access;
mod hardened;
mod isolation;
mod loopback;
mod reaction;
mod report;
mod scale;
mod setups;
mod streams;
mod validation;
mod wrk;

use std::{
    net::IpAddr,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use clap::Parser;
use integration::{agent::free_port, fixtures, http, Agent, AgentOptions, PodNet};
use report::{Report, Row};
use wrk::{Figures, Load};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmark rkt-mds against a bare hyper server, from inside pod namespaces")]
pub struct Args {
    /// Alternating agent/reference rounds per scenario (medians reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of load per wrk run.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Concurrent keep-alive connections per wrk run.
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Registered pods in the scale scenario.
    #[arg(long, default_value_t = 10_000)]
    pub pods: u32,
    /// Namespaces the scale scenario spreads them over.
    #[arg(long, default_value_t = 500)]
    pub namespaces: u32,
    /// Address-change reaction trials.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Where to write every figure as JSON.
    #[arg(long, default_value = "bench-results.json")]
    pub json: std::path::PathBuf,
    /// Run only these sections (repeatable; default: all).
    #[arg(long, value_enum)]
    pub only: Vec<Section>,
    /// Skip these sections (repeatable).
    #[arg(long, value_enum)]
    pub skip: Vec<Section>,
    /// The agents' RUST_LOG. The default `info` includes the access log,
    /// one line per request, as in production.
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Only measure pod set-ups: create and drop this many pods one after
    /// the other (at most two minutes) and print setups/s. Needs no wrk.
    #[arg(long, value_name = "N")]
    pub setups: Option<u32>,
    /// Only measure the etcd cluster directory (needs /usr/bin/etcd):
    /// registration-to-etcd delays, the publication rate at 10,000 pods,
    /// the agent's CPU with and without --etcd. Needs no wrk.
    #[arg(long)]
    pub etcd: bool,
    /// Only measure the fleet (needs /usr/bin/etcd): a 3-member etcd and
    /// --fleet-agents agents with --fleet-pods host-network pods each;
    /// registration to etcd, the readers, and etcd's faults. Needs no wrk.
    #[arg(long)]
    pub fleet: bool,
    #[arg(long, default_value_t = 20)]
    pub fleet_agents: u32,
    #[arg(long, default_value_t = 500)]
    pub fleet_pods: u32,
    /// With --fleet (--only fleet): the same measurements on a 3-member etcd with TLS
    /// (server and peer certificates, --client-cert-auth) and
    /// authentication on, each agent with its own least-privilege user and
    /// role (`rkt-mds cluster roles --node NODE`), the readers (audit,
    /// jwks, bundle) with a user of the readers' role. Needs
    /// /usr/bin/etcdctl.
    #[arg(long)]
    pub fleet_secure: bool,
    /// Pods (each in a namespace of its own, each holding one Workload API
    /// stream) in `--only streams`.
    #[arg(long, default_value_t = 10_000)]
    pub stream_pods: u32,
}

/// The parts of a full run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// wrk -t2 -c64 on 127.0.0.1 against a host-network pod, with each new
    /// feature turned off in turn; Connection: close.
    Loopback,
    /// From inside a pod over veth, both identity modes; Connection:
    /// close; the reaction to address changes.
    Veth,
    /// 10,000 pods over 500 namespaces against 10 pods; reload time.
    Scale,
    /// A victim while another pod floods; memory under connection floods.
    Isolation,
    /// Identity documents per second.
    Documents,
    /// Manifest validation time against the number of annotations.
    Validation,
    /// The churn test's long form, every identity mode.
    Churn,
    /// The same as --etcd (only with --only: a full run leaves it out).
    Etcd,
    /// The same as --fleet (only with --only: a full run leaves it out).
    Fleet,
    /// Workload API streams held by --stream-pods pods, each in its own
    /// namespace: memory per stream, idle CPU, a CA rotation's push to
    /// every stream (only with --only; needs no wrk).
    Streams,
}

impl Args {
    fn wants(&self, s: Section) -> bool {
        (self.only.is_empty() || self.only.contains(&s)) && !self.skip.contains(&s)
    }

    /// Whether this run is a separate measurement that needs no wrk.
    fn only(&self, s: Section) -> bool {
        self.only.contains(&s) && !self.skip.contains(&s)
    }
}

pub const UUID: &str = "b0b0b0b0-a507-4694-aabf-edbe4fc5266f";
pub const TOKEN: &str = "bench0123456789abcdef0123456789ab";

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("bench: run as root (it creates network namespaces)");
        return std::process::ExitCode::from(2);
    }
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    if let Some(n) = args.setups {
        return match setups::measure(n) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if args.fleet || args.only(Section::Fleet) {
        return match fleet::measure(args.fleet_agents, args.fleet_pods, args.fleet_secure) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if args.only(Section::Streams) {
        return match streams::measure(args.stream_pods) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if args.etcd || args.only(Section::Etcd) {
        return match directory::measure() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("bench: wrk is missing: apt-get install wrk (integration/bench.sh does)");
        return std::process::ExitCode::from(2);
    }
    match run(&args) {
        Ok(report) => {
            println!("{}", report.markdown());
            if let Err(e) = std::fs::write(&args.json, report.json().to_string()) {
                eprintln!("bench: cannot write {}: {e}", args.json.display());
                return std::process::ExitCode::FAILURE;
            }
            eprintln!("bench: figures written to {}", args.json.display());
            if report.churn.as_ref().is_some_and(|c| !c.clean()) {
                eprintln!("bench: the churn found a problem (see the report)");
                return std::process::ExitCode::FAILURE;
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub fn check_interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// A reference server process, killed on drop.
struct Reference {
    child: Child,
    port: u16,
}

impl Reference {
    fn start(body_size: usize) -> Result<Self, String> {
        Self::spawn(body_size, None)
    }

    /// One that reads each request's body before answering.
    fn reading(body_size: usize) -> Result<Self, String> {
        Self::spawn(body_size, Some("read"))
    }

    /// One that reads each request's form and answers its HMAC signature
    /// (see the `reference` binary).
    fn signing() -> Result<Self, String> {
        Self::spawn(0, Some("sign"))
    }

    fn spawn(body_size: usize, mode: Option<&str>) -> Result<Self, String> {
        let port = free_port();
        let bin = integration::agent::binary().with_file_name("reference");
        let child = Command::new(&bin)
            .args([port.to_string(), body_size.to_string()])
            .args(mode)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        integration::wait_for("the reference server", Duration::from_secs(10), || {
            http::tcp(addr, &http::Request::get("/")).ok()
        });
        Ok(Self { child, port })
    }

    /// Its load target, reached at `host`.
    fn target(&self, host: IpAddr) -> (u32, String) {
        (self.child.id(), format!("http://{host}:{}/", self.port))
    }
}

/// A load target: the server's pid (its CPU time is measured) and the URL
/// of the public endpoint `path` on `agent`, reached at `host`.
fn agent_target(agent: &Agent, host: IpAddr, path: &str) -> (u32, String) {
    (
        agent.pid().unwrap_or(0),
        format!("http://{host}:{}/{TOKEN}/acMetadata/v1/{path}", agent.port),
    )
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rate limit and burst far above what any benchmark load reaches:
/// the limiter runs, and never refuses.
pub const RATE_HEADROOM: &str = "10000000";

/// A benchmark agent logging at `log_filter`.
pub fn start_agent(mode: &'static str, log_filter: &str) -> Agent {
    // The per-pod limit stays on, far above what one load pod can send:
    // the default (1,000/s) would measure the limit, not the agent.
    let mut options = AgentOptions::identity(mode)
        .arg("--rate-limit")
        .arg(RATE_HEADROOM)
        .arg("--rate-burst")
        .arg(RATE_HEADROOM);
    options.log_filter = log_filter.to_owned();
    // The production default, not the tests' quicker one.
    options.liveness_interval = "500ms";
    Agent::start(options)
}

/// Registers the appc example pod (and its one imaged app) bound to `pod`.
pub fn register_example(
    agent: &Agent,
    pod: &PodNet,
    uuid: &str,
    token: &str,
) -> Result<(), String> {
    let r = agent.register(
        uuid,
        token,
        &fixtures::read("appc-examples/pod_runtime.json"),
        &format!("&netns={}", pod.netns_path()),
    );
    if r.status != 200 {
        return Err(format!("register: {} {}", r.status, r.text()));
    }
    let r = agent.register_app(
        uuid,
        "reduce-worker",
        &fixtures::read("appc-examples/image.json"),
    );
    if r.status != 200 {
        return Err(format!("register app: {} {}", r.status, r.text()));
    }
    Ok(())
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn medians(runs: &[Figures]) -> Figures {
    let of = |field: fn(&Figures) -> f64| median(&runs.iter().map(field).collect::<Vec<_>>());
    Figures {
        rps: of(|f| f.rps),
        p50_ms: of(|f| f.p50_ms),
        p99_ms: of(|f| f.p99_ms),
        cpu_us: of(|f| f.cpu_us),
    }
}

struct Endpoint {
    name: &'static str,
    path: &'static str,
    form: Option<&'static str>,
}

const ENDPOINTS: [Endpoint; 4] = [
    Endpoint {
        name: "GET /pod/uuid",
        path: "pod/uuid",
        form: None,
    },
    Endpoint {
        name: "GET /pod/manifest",
        path: "pod/manifest",
        form: None,
    },
    Endpoint {
        name: "GET /apps/reduce-worker/annotations",
        path: "apps/reduce-worker/annotations",
        form: None,
    },
    Endpoint {
        name: "POST /pod/hmac/sign",
        path: "pod/hmac/sign",
        form: Some("content=hello"),
    },
];

fn run(args: &Args) -> Result<Report, String> {
    let scripts = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut report = Report::new(args);
    if args.wants(Section::Loopback) {
        eprintln!("bench: the loopback setup");
        report.rows.extend(loopback::measure(args, scripts.path())?);
    }
    if args.wants(Section::Isolation) {
        report.isolation = Some(isolation::measure(scripts.path())?);
    }
    if args.wants(Section::Documents) {
        report.documents = Some(documents::measure(args, scripts.path())?);
    }
    if args.wants(Section::Validation) {
        eprintln!("bench: manifest validation");
        report.validation = Some(validation::measure()?);
    }
    if args.wants(Section::Churn) {
        report.churn = Some(churn_long::measure()?);
    }
    if !args.wants(Section::Veth) && !args.wants(Section::Scale) {
        return Ok(report);
    }
    eprintln!("bench: starting agents and the load pod");
    let load_pod = PodNet::new();
    let token_agent = start_agent("token", &args.log);
    let netns_agent = start_agent("token+netns", &args.log);
    // The same, without the access log: what one line per request costs.
    let quiet_agent = start_agent("token+netns", "warn");
    for a in [&token_agent, &netns_agent, &quiet_agent] {
        register_example(a, &load_pod, UUID, TOKEN)?;
    }
    report.version = token_agent.unix(&http::Request::get("/info")).json()["version"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let host = IpAddr::V4(load_pod.host_v4());
    let url = |agent: &Agent, path: &str| agent_target(agent, host, path);

    if args.wants(Section::Veth) {
        // Reference servers answer bodies of the agent's sizes.
        let mut references = Vec::new();
        for e in &ENDPOINTS {
            let size = body_size(&load_pod, &url(&netns_agent, e.path).1, e.form)?;
            references.push((Reference::start(size)?, size));
        }

        let load = |(server, url): (u32, String), form: Option<&'static str>, close: bool| Load {
            pod: Some(&load_pod),
            threads: 1,
            url,
            form,
            close,
            connections: if close { 4 } else { args.connections },
            duration: Duration::from_secs(args.seconds),
            server,
        };

        // 1. Keep-alive, both identity modes.
        for (e, (reference, size)) in ENDPOINTS.iter().zip(&references) {
            // Agents and the reference alternate within each round.
            let modes = ["token", "token+netns", "token+netns, no access log"];
            let targets = [
                url(&token_agent, e.path),
                url(&netns_agent, e.path),
                url(&quiet_agent, e.path),
                reference.target(host),
            ];
            let mut runs = wrk::alternate(
                args,
                &targets,
                &|t| load(t.clone(), e.form, false),
                scripts.path(),
                &format!("keep-alive {}", e.name),
            )?;
            let reference_runs = runs.pop().unwrap_or_default();
            let reference = medians(&reference_runs);
            for (mode, r) in modes.iter().zip(&runs) {
                report.rows.push(Row::new(
                    format!("keep-alive {}", e.name),
                    mode,
                    *size,
                    r,
                    Some((&reference_runs, reference)),
                ));
            }
        }

        // 2. One request per connection: the identity check on every connection.
        let (reference, size) = &references[0];
        let ref_url = reference.target(host);
        let (mut agent_runs, mut ref_runs) = (Vec::new(), Vec::new());
        for target in [url(&netns_agent, "pod/uuid"), ref_url.clone()] {
            wrk::warm_up(&load(target, None, true), scripts.path())?;
        }
        for round in 0..args.rounds {
            check_interrupted()?;
            eprintln!("bench: connection-per-request round {}", round + 1);
            agent_runs.push(wrk::run(
                &load(url(&netns_agent, "pod/uuid"), None, true),
                scripts.path(),
            )?);
            ref_runs.push(wrk::run(
                &load(ref_url.clone(), None, true),
                scripts.path(),
            )?);
        }
        let reference = medians(&ref_runs);
        report.rows.push(Row::new(
            "Connection: close GET /pod/uuid".into(),
            "token+netns",
            *size,
            &agent_runs,
            Some((&ref_runs, reference)),
        ));
        drop(token_agent);
        drop(quiet_agent);

        // 4. Reaction time to address changes.
        check_interrupted()?;
        eprintln!("bench: address-change reaction, {} trials", args.trials);
        report.reaction = Some(reaction::measure(&netns_agent, &load_pod, args.trials)?);
    }

    // 3. Scale.
    if args.wants(Section::Scale) {
        report.scale = Some(scale::measure(
            args,
            netns_agent,
            &load_pod,
            scripts.path(),
        )?);
    }
    Ok(report)
}

/// The size of the agent's answer, so the reference answers as much.
fn body_size(pod: &PodNet, url: &str, form: Option<&str>) -> Result<usize, String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pod.name, "curl", "-s", "--fail"]);
    if let Some(f) = form {
        cmd.args(["-d", f]);
    }
    let out = cmd.arg(url).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout.len())
}
