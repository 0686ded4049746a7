//! Attacks on how the Workload API's Unix socket attests its callers. The
//! agent names a caller by the pidfd the kernel took when it connected
//! (the PID read from the pidfd, `/proc/PID/ns/net`, then the pidfd asked
//! whether that process still lives), and the namespace must be the one
//! the caller had at connect and exactly one live pod's. Two attacks:
//!
//! - PID reuse: a process in pod B connects, forks a child that inherits
//!   the connection, and exits; a process in pod A takes its PID; the
//!   child calls over the connection. Refused, never A's SVID; whether the
//!   agent had looked at the connection before the process exited or not.
//! - Moving: a process connects from pod A's namespace, then moves itself
//!   to pod B's and calls. Refused: neither A's SVID nor B's.
//!
//! Each has its control: the same path without the attack gets the SVIDs
//! it should, so a refusal is the attack's, not a broken path's. The
//! attacker is `workload_attacks.py` (run with `ip netns exec`); the
//! client is rust-spiffe's (spiffe-client over the attacker's connection).
//! Needs root; runs in CI.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    time::{Duration, Instant},
};

use integration::{fixtures, privilege::require_root, wait_for, Agent, AgentOptions, PodNet};
use netns::NetnsFile;
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

const T_A: &str = "aaaa56789abcdef0123456789abcdef0";
const U_A: &str = "aaaaaaaa-a507-4694-aabf-edbe4fc5266f";
const T_B: &str = "bbbb56789abcdef0123456789abcdef0";
const U_B: &str = "bbbbbbbb-b507-4694-aabf-edbe4fc5266f";
const TD: &str = "example.org";

const ATTACKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workload_attacks.py");
const CLIENT: &str = env!("CARGO_BIN_EXE_spiffe-client");

/// The longest a client's output takes (the client gives up after 30 s).
const OUTPUT: Duration = Duration::from_secs(45);

/// The SPIFFE IDs of the web pod `uuid`: the pod's, then its apps'.
fn ids(uuid: &str) -> Vec<String> {
    let pod = format!("spiffe://{TD}/rkt/node/node-1/pod/{uuid}");
    vec![
        pod.clone(),
        format!("{pod}/app/web"),
        format!("{pod}/app/log-shipper"),
    ]
}

/// An agent serving the Workload API on its Unix socket, with pods A and B
/// registered in namespaces of their own.
fn start() -> (Agent, PodNet, PodNet) {
    let agent = Agent::start(
        AgentOptions::identity("token+netns")
            .arg("--node-name")
            .arg("node-1")
            .arg("--trust-domain")
            .arg(TD),
    );
    let (a, b) = (PodNet::new(), PodNet::new());
    let manifest = fixtures::read(fixtures::WEB.manifest);
    agent.register_in(U_A, T_A, &manifest, &a);
    agent.register_in(U_B, T_B, &manifest, &b);
    (agent, a, b)
}

/// `PermissionDenied`, as rust-spiffe prints it.
fn permission_denied(err: &str) -> bool {
    err.to_lowercase().contains("permission")
}

/// The attacker in `pod`'s namespace, in `mode`, against `agent`.
fn attacker(agent: &Agent, pod: &PodNet, mode: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &pod.name, "python3", ATTACKER])
        .arg(agent.workload_socket())
        .arg(CLIENT)
        .args(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the attacker")
}

/// A child process, killed and reaped on drop (panics included).
struct Reaped(Child);

impl Reaped {
    /// Kills and reaps the process now: its PID is free afterwards.
    fn end(&mut self) {
        // Once reaped, `kill` sends nothing (no other process is hit).
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// The exit code, waiting at most `limit`.
    fn code(&mut self, limit: Duration) -> Option<i32> {
        let status = wait_for("the process to exit", limit, || {
            self.0.try_wait().expect("wait")
        });
        status.code()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.end();
    }
}

/// A child's standard output (line by line) and standard error (whole),
/// read by threads of their own.
struct Output {
    lines: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

impl Output {
    fn of(child: &mut Child) -> Self {
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let (line_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    return;
                }
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(err).read_to_string(&mut text);
            let _ = err_tx.send(text);
        });
        Self { lines, err: err_rx }
    }

    /// The next line of standard output; on its end, a panic with
    /// standard error.
    fn line(&self, what: &str) -> String {
        match self.lines.recv_timeout(OUTPUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("no {what} within {OUTPUT:?}"),
            Err(RecvTimeoutError::Disconnected) => {
                let err = self.err.recv_timeout(OUTPUT).unwrap_or_default();
                panic!("no {what}: {err}")
            }
        }
    }

    /// The rest of standard output and all of standard error, once both
    /// have ended (within [`OUTPUT`]).
    fn rest(&self) -> (Vec<String>, String) {
        let deadline = Instant::now() + OUTPUT;
        let left = || deadline.saturating_duration_since(Instant::now());
        let mut lines = Vec::new();
        loop {
            match self.lines.recv_timeout(left()) {
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("the client's output goes on"),
            }
        }
        let err = self
            .err
            .recv_timeout(left())
            .expect("the end of the client's standard error");
        (lines, err)
    }
}

/// What a client run ended with.
#[derive(Debug)]
struct Said {
    code: Option<i32>,
    ids: Vec<String>,
    err: String,
}

/// The attacker in `mode` in `pod`, run to its end: the client runs in
/// the attacker's own process.
fn run(agent: &Agent, pod: &PodNet, mode: &[&str]) -> Said {
    let mut child = attacker(agent, pod, mode);
    let output = Output::of(&mut child);
    let mut child = Reaped(child);
    let (ids, err) = output.rest();
    let code = child.code(Duration::from_secs(5));
    Said { code, ids, err }
}

/// The attacker in a fork mode: P (the process that connected) has forked
/// C, which holds the connection and waits for the word to call.
struct Forked {
    p: Reaped,
    /// C's standard input (C quits at its end).
    to_c: Option<ChildStdin>,
    output: Output,
    /// P's PID.
    pid: u32,
}

impl Forked {
    fn start(agent: &Agent, pod: &PodNet, mode: &str) -> Self {
        let mut child = attacker(agent, pod, &[mode]);
        let output = Output::of(&mut child);
        let to_c = child.stdin.take();
        let p = Reaped(child);
        let ready = output.line("fork from the attacker");
        let pid: u32 = ready
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the attacker said {ready:?}"));
        // `ip netns exec` execs: the attacker is the process we started,
        // so we are the one who reaps it.
        assert_eq!(pid, p.0.id(), "the attacker is not our child");
        Self {
            p,
            to_c,
            output,
            pid,
        }
    }

    /// P exits (killed) and is reaped: its PID is free. C lives on with
    /// the connection.
    fn exit(&mut self) {
        self.p.end();
    }

    /// C calls over the connection P made: the SPIFFE IDs it got and its
    /// error. (C is not our child: its exit code is not ours to see.)
    fn call(mut self) -> (Vec<String>, String) {
        let mut to_c = self.to_c.take().expect("C's standard input");
        to_c.write_all(b"go\n").expect("tell C to call");
        drop(to_c);
        self.output.rest()
    }
}

/// Makes a process in `pod`'s namespace (`sleep`, killed on drop) take
/// `pid`: the next PID handed out is `pid` once `ns_last_pid` is one below
/// it, unless another process forks in between (then again, until a
/// deadline). Returns once `/proc/PID/ns/net` is `pod`'s namespace.
fn take_pid(pid: u32, pod: &PodNet) -> Reaped {
    let want = pod.netns();
    let deadline = Instant::now() + Duration::from_secs(10);
    for tries in 1..=10_000 {
        assert!(
            Instant::now() < deadline,
            "PID {pid} not taken in {tries} tries: another process holds it"
        );
        if Path::new(&format!("/proc/{pid}")).exists() {
            // Taken by some other process (or thread): wait for its end.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write /proc/sys/kernel/ns_last_pid");
        let holder = Reaped(
            Command::new("ip")
                .args(["netns", "exec", &pod.name, "sleep", "60"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn a process in the pod"),
        );
        if holder.0.id() != pid {
            continue;
        }
        wait_for(
            &format!("PID {pid} in {}'s namespace", pod.name),
            Duration::from_secs(5),
            || {
                NetnsFile::open(format!("/proc/{pid}/ns/net"))
                    .ok()?
                    .same_namespace(&want)
                    .then_some(())
            },
        );
        return holder;
    }
    panic!("PID {pid} not taken");
}

/// The agent stopped (SIGSTOP: every thread of it) until drop: a
/// connection made meanwhile waits in the listen backlog, unaccepted and
/// unexamined.
struct Frozen(Pid);

impl Frozen {
    fn new(agent: &Agent) -> Self {
        let pid = Pid::from_raw(agent.pid().expect("the agent runs") as i32);
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP the agent");
        let frozen = Self(pid);
        wait_for("every agent thread to stop", Duration::from_secs(5), || {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            tasks
                .flatten()
                .all(|t| {
                    let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                    let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
                    state.starts_with('T') || state.starts_with('t')
                })
                .then_some(())
        });
        frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// The agent's line when it drops a connection whose peer it cannot name.
const UNKNOWN_PEER: &str = "cannot tell the peer's namespace";

/// A process in pod B connects, forks, and exits after the agent has
/// attested it at connect; a process in pod A takes its PID; the child
/// calls over the inherited connection. The agent must see that the
/// process that connected is gone (`PermissionDenied`), not serve the
/// namespace its PID now leads to. Control: while the process lives, its
/// child is served B's SVIDs over the same path.
#[test]
fn a_pid_taken_over_after_its_process_exits_gets_no_identity() {
    if !require_root("a_pid_taken_over_after_its_process_exits_gets_no_identity") {
        return;
    }
    let (agent, a, b) = start();
    let control = Forked::start(&agent, &b, "fork");
    let (got, err) = control.call();
    assert_eq!(got, ids(U_B), "the control: {err}");

    let mut forked = Forked::start(&agent, &b, "fork");
    forked.exit();
    let _holder = take_pid(forked.pid, &a);
    let (got, err) = forked.call();
    assert!(
        got.is_empty(),
        "served {got:?} to a connection whose PID is now pod A's"
    );
    assert!(permission_denied(&err), "{err}");
    // Refused because its process is gone, not only because the PID's
    // namespace is no longer the one at connect.
    assert!(err.contains("exited"), "{err}");
}

/// The same, but the agent has not looked at the connection yet when the
/// process exits and pod A's process takes its PID (the agent is stopped
/// meanwhile): at connect, as at a call, the PID must not stand for the
/// process. The connection is dropped at accept; no call is served.
/// Control: the same with the process alive is served B's SVIDs.
#[test]
fn a_pid_taken_over_before_the_agent_looks_gets_no_identity() {
    if !require_root("a_pid_taken_over_before_the_agent_looks_gets_no_identity") {
        return;
    }
    let (agent, a, b) = start();
    let frozen = Frozen::new(&agent);
    let control = Forked::start(&agent, &b, "fork-early");
    drop(frozen);
    let (got, err) = control.call();
    assert_eq!(got, ids(U_B), "the control: {err}");
    assert!(!agent.log().contains(UNKNOWN_PEER), "{}", agent.log());

    let frozen = Frozen::new(&agent);
    let mut forked = Forked::start(&agent, &b, "fork-early");
    forked.exit();
    let _holder = take_pid(forked.pid, &a);
    // The agent looks only now, with the PID pod A's.
    drop(frozen);
    let (got, err) = forked.call();
    assert!(
        got.is_empty(),
        "served {got:?} to a connection whose PID is now pod A's"
    );
    assert!(!err.is_empty(), "no error, and no SVID");
    agent.log_line("the agent to refuse the connection", |l| {
        l.contains(UNKNOWN_PEER)
    });
}

/// A process connects from pod A's namespace (and the agent attests it),
/// then moves itself to pod B's namespace and calls: refused
/// (`PermissionDenied`), neither A's SVIDs nor B's. Control: the same
/// process staying in A is served A's SVIDs.
#[test]
fn a_process_that_moves_namespace_after_connecting_gets_no_identity() {
    if !require_root("a_process_that_moves_namespace_after_connecting_gets_no_identity") {
        return;
    }
    let (agent, a, b) = start();
    let stayed = run(&agent, &a, &["stay"]);
    assert_eq!(stayed.code, Some(0), "the control: {stayed:?}");
    assert_eq!(stayed.ids, ids(U_A), "the control: {stayed:?}");

    let moved = run(&agent, &a, &["move", &b.netns_path()]);
    assert!(moved.ids.is_empty(), "served {moved:?} after a move");
    assert_eq!(moved.code, Some(1), "{moved:?}");
    assert!(permission_denied(&moved.err), "{moved:?}");
}
