//! The agent as a real process with private directories, a free port and
//! its log captured; killed on drop.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::http::{self, Request, Response};

/// The `rkt-mds` binary next to the running test or tool, checked once per
/// process (a long benchmark is not upset by edits made while it runs).
pub fn binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(find_binary).clone()
}

fn find_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("rkt-mds");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --workspace`, or run `cargo test --workspace`)",
        bin.display()
    );
    // `cargo test -p integration` alone does not rebuild the agent: refuse
    // to test an old binary against new sources.
    let built = modified(&bin);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for src in ["src", "netns/src"] {
        if newest_below(&root.join(src)).is_some_and(|t| t > built) {
            panic!(
                "{} is older than its sources: run `cargo test --workspace` (or `cargo build --workspace` first)",
                bin.display()
            );
        }
    }
    bin
}

fn modified(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH)
}

fn newest_below(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        let t = if p.is_dir() {
            newest_below(&p)
        } else {
            Some(modified(&p))
        };
        newest = newest.max(t);
    }
    newest
}

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub identity: &'static str,
    pub args: Vec<String>,
    /// A command that starts the agent (e.g. `systemd-socket-activate
    /// -l PATH`); the binary and its arguments are appended.
    pub launcher: Vec<String>,
    /// The registration socket path (default: in the agent's temp dir).
    pub socket: Option<PathBuf>,
    /// `RUST_LOG` for the agent.
    pub log_filter: String,
    /// `--liveness-interval`: short in tests, so deletions show quickly.
    pub liveness_interval: &'static str,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            identity: "token+netns",
            args: Vec::new(),
            launcher: Vec::new(),
            socket: None,
            log_filter: "info".into(),
            liveness_interval: "100ms",
        }
    }
}

impl AgentOptions {
    pub fn identity(mode: &'static str) -> Self {
        Self {
            identity: mode,
            ..Self::default()
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
}

pub struct Agent {
    child: Option<Child>,
    pub root: tempfile::TempDir,
    pub socket: PathBuf,
    pub port: u16,
    /// The SPIFFE Workload API's port.
    pub workload_port: u16,
    pub options: AgentOptions,
}

impl Agent {
    pub fn start(options: AgentOptions) -> Self {
        let root = tempfile::Builder::new()
            .prefix("rkt-mds-test")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(root.path().join("rkt/pods/run")).expect("rkt dir");
        let mut agent = Self {
            child: None,
            socket: options
                .socket
                .clone()
                .unwrap_or_else(|| root.path().join("run/metadata-svc.sock")),
            root,
            port: free_port(),
            workload_port: free_port(),
            options,
        };
        agent.spawn();
        agent
    }

    pub fn rkt_dir(&self) -> PathBuf {
        self.root.path().join("rkt")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }
    pub fn runtime_dir(&self) -> PathBuf {
        self.root.path().join("run/mds")
    }
    /// The Workload API's Unix socket (in a directory pods may be given).
    pub fn workload_socket(&self) -> PathBuf {
        self.root.path().join("workload/api.sock")
    }
    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("agent.log")
    }

    /// The command line (without the binary).
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "serve".into(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--listen-port".into(),
            self.port.to_string(),
            "--dir".into(),
            self.rkt_dir().display().to_string(),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
            "--runtime-dir".into(),
            self.runtime_dir().display().to_string(),
            "--identity".into(),
            self.options.identity.into(),
            "--liveness-interval".into(),
            self.options.liveness_interval.into(),
        ];
        // Lets the suite run unprivileged where it can (root always may).
        if !nix::unistd::geteuid().is_root() {
            a.push("--registration-group".into());
            a.push(nix::unistd::getgid().as_raw().to_string());
        }
        if !self
            .options
            .args
            .iter()
            .any(|x| x == "--workload-api-socket")
        {
            a.push("--workload-api-socket".into());
            a.push(self.workload_socket().display().to_string());
        }
        if !self.options.args.iter().any(|x| x == "--workload-api-port") {
            a.push("--workload-api-port".into());
            a.push(self.workload_port.to_string());
        }
        // Agents run side by side: each scrape port is its own.
        if !self.options.args.iter().any(|x| x == "--metrics-address") {
            a.push("--metrics-address".into());
            a.push("127.0.0.1:0".into());
        }
        a.extend(self.options.args.iter().cloned());
        a
    }

    /// Where `--metrics-address` was bound, from the start-up line.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.log()
            .lines()
            .rev()
            .find(|l| l.contains("rkt-mds serving"))?
            .split_whitespace()
            .find_map(|f| f.strip_prefix("metrics="))?
            .trim_matches('"')
            .parse()
            .ok()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        // setpriv execs the rest in the same process, which the kernel
        // kills if this test process dies without running destructors
        // (SIGKILL, SIGPIPE): no orphan agent outlives its test.
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"])
            .args(&self.options.launcher)
            .arg(binary());
        let child = cmd
            .args(self.args())
            .env("RUST_LOG", &self.options.log_filter)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn rkt-mds");
        self.child = Some(child);
        let socket = self.socket.clone();
        let log_path = self.log_path();
        let child = self.child.as_mut().expect("child");
        crate::wait_for(
            "the agent to answer /health",
            Duration::from_secs(20),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "agent exited with {status} during start-up:\n{}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                http::unix(&socket, &Request::get("/health"))
                    .ok()
                    .filter(|r| r.status == 200)
            },
        );
    }

    /// SIGTERM, then wait; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(Signal::SIGTERM)
    }

    /// `signal`, then wait; returns the exit status.
    pub fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        let mut child = self.child.take().expect("agent not running");
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        child.wait().expect("wait agent")
    }

    /// SIGKILL, then wait.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again with the same directories and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the agent first");
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log once `done(log)` holds: the agent writes its log through a
    /// batching thread, so a line shows up a moment after its event.
    pub fn wait_log(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        crate::wait_for(what, Duration::from_secs(5), || {
            let log = self.log();
            done(&log).then_some(log)
        })
    }

    /// The first log line matching `pred`, waiting for it to be written.
    pub fn log_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let log = self.wait_log(what, |log| log.lines().any(&pred));
        log.lines().find(|l| pred(l)).unwrap_or_default().to_owned()
    }

    /// One request over the registration socket.
    pub fn unix(&self, req: &Request) -> Response {
        http::unix(&self.socket, req).expect("registration socket request")
    }

    /// The value of one series in `/metrics` (`name{labels}` as the text
    /// spells it), or 0 when the scrape has no such line yet.
    pub fn metric(&self, series: &str) -> u64 {
        let text = self.unix(&Request::get("/metrics")).text();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// rkt's registration: the pod (chunked), then each app.
    pub fn register(&self, uuid: &str, token: &str, manifest: &[u8], query: &str) -> Response {
        self.unix(&Request::chunked(
            "PUT",
            &format!("/pods/{uuid}?token={token}{query}"),
            manifest,
        ))
    }

    /// Registers a pod bound to `pod`'s namespace, asserting success.
    pub fn register_in(&self, uuid: &str, token: &str, manifest: &[u8], pod: &crate::PodNet) {
        let r = self.register(
            uuid,
            token,
            manifest,
            &format!("&netns={}", pod.netns_path()),
        );
        assert_eq!(
            r.status,
            200,
            "registering {uuid} in {}: {}",
            pod.name,
            r.text()
        );
    }

    /// Registers a fixture pod and every app of it that has an image
    /// manifest, asserting each step succeeds.
    pub fn register_fixture(
        &self,
        uuid: &str,
        token: &str,
        fixture: &crate::fixtures::PodFixture,
        query: &str,
    ) {
        let r = self.register(uuid, token, &crate::fixtures::read(fixture.manifest), query);
        assert_eq!(
            r.status,
            200,
            "registering {}: {}",
            fixture.manifest,
            r.text()
        );
        for (app, image) in fixture.apps {
            let r = self.register_app(uuid, app, &crate::fixtures::read(image));
            assert_eq!(r.status, 200, "registering app {app}: {}", r.text());
        }
    }

    pub fn register_app(&self, uuid: &str, app: &str, image: &[u8]) -> Response {
        self.unix(&Request::chunked(
            "PUT",
            &format!("/pods/{uuid}/{app}"),
            image,
        ))
    }

    pub fn unregister(&self, uuid: &str) -> Response {
        self.unix(&Request::new("DELETE", &format!("/pods/{uuid}"), None, &[]))
    }

    /// `GET /pods`.
    pub fn pods(&self) -> serde_json::Value {
        let r = self.unix(&Request::get("/pods"));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// The entry of `uuid` in `GET /pods`.
    pub fn pod_entry(&self, uuid: &str) -> Option<serde_json::Value> {
        self.pods()["pods"]
            .as_array()?
            .iter()
            .find(|p| p["uuid"] == uuid)
            .cloned()
    }

    /// The public API address at `ip`.
    pub fn public(&self, ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, self.port)
    }

    pub fn loopback(&self) -> SocketAddr {
        self.public(IpAddr::from([127, 0, 0, 1]))
    }

    /// One public request from the host over loopback.
    pub fn get(&self, path: &str) -> Response {
        http::tcp(self.loopback(), &Request::get(path)).expect("public request")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's peak resident set (VmHWM) so far, KiB; 0 when stopped.
    pub fn peak_rss_kib(&self) -> u64 {
        let Some(pid) = self.pid() else {
            return 0;
        };
        status_kib(pid, "VmHWM")
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), KiB; 0 when the
/// process or the field is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

/// A TCP port free on both stacks right now, taken below the kernel's
/// ephemeral range. A port the kernel hands out (bind to 0) can be handed
/// again, as the local port of any outgoing connection, the moment its
/// listener closes: an agent killed and restarted on "its" port then finds it
/// held by some other test's client (EADDRINUSE). Below the ephemeral range
/// only an explicit bind takes a port, and this process's binds take each
/// port once, from a start that differs per process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    let high = ephemeral_low().max(LOW + 1_000);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + i) % span) as u16;
        let bound =
            TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port)));
        if bound.is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in {LOW}..{high}")
}

/// The lowest port of the kernel's ephemeral range (32768 when unreadable).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The path of a file in `dir`, created with `content`.
pub fn write_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write file");
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outgoing connection's local port comes from the ephemeral range; a
    /// port handed to an agent must never be one (CI once lost a restarted
    /// agent's port to a client that way).
    #[test]
    fn free_ports_are_below_the_ephemeral_range() {
        let low = ephemeral_low();
        let ports: Vec<u16> = (0..64).map(|_| free_port()).collect();
        assert!(
            ports.iter().all(|&p| u32::from(p) < low),
            "{ports:?} vs {low}"
        );
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
    }
}
