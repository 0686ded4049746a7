//! A real etcd (Debian's `etcd-server`, `/usr/bin/etcd`): one member or a
//! cluster of several, each a process on 127.0.0.1 with free client and
//! peer ports and a data directory of its own. Members are killed,
//! paused (SIGSTOP: a partitioned member that still accepts connections),
//! stopped and restarted by index, and die with the test process
//! (`setpriv --pdeathsig KILL`).
//!
//! Reads and writes go through etcd's JSON gateway with a plain blocking
//! HTTP/1.0 client of its own (`gateway`), independent of the agent's.
//! A `secure_cluster` serves TLS with client certificates on its client
//! and peer URLs and has authentication on (`hardening`); the harness then
//! reads and writes as root. Every member serves its metrics on a
//! plaintext port of its own (`metrics_port`).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};

use crate::agent::free_port;
use hardening::Hardening;

pub mod ctl;
pub mod gateway;
pub mod hardening;
pub mod secure;

pub const BINARY: &str = "/usr/bin/etcd";

/// Whether etcd is installed (`.ci/run` installs `etcd-server`).
pub fn available() -> bool {
    std::path::Path::new(BINARY).exists()
}

/// One member's process and its addresses.
struct Member {
    name: String,
    child: Option<Child>,
    /// The data directory in use (`NAME-data-N` under the root).
    data: PathBuf,
    fresh: u32,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    paused: bool,
}

/// How long a start or restart waits for every member to answer.
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct Etcd {
    members: Vec<Member>,
    root: tempfile::TempDir,
    /// The first member's client port.
    pub client_port: u16,
    /// TLS and authentication (`secure_cluster`); none: plaintext.
    hardening: Option<Hardening>,
}

/// One key as read: its value and its lease (0: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub value: String,
    pub lease: i64,
}

impl Etcd {
    /// Starts a one-member etcd and waits until it answers.
    pub fn start() -> Self {
        Self::cluster(1)
    }

    /// Starts a cluster of `n` members and waits until it has a leader.
    pub fn cluster(n: usize) -> Self {
        Self::start_cluster(n, false)
    }

    /// Starts a cluster of `n` members with TLS and client certificates
    /// (client and peer URLs), waits until it has a leader, adds the root
    /// user and turns authentication on.
    pub fn secure_cluster(n: usize) -> Self {
        let etcd = Self::start_cluster(n, true);
        if let Some(h) = &etcd.hardening {
            h.enable_auth(&etcd.endpoint());
        }
        etcd
    }

    fn start_cluster(n: usize, secure: bool) -> Self {
        assert!(
            available(),
            "{BINARY} is missing: apt-get install etcd-server (.ci/run does)"
        );
        let root = tempfile::Builder::new()
            .prefix("rkt-mds-etcd")
            .tempdir()
            .expect("tempdir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                child: None,
                data: root.path().join(format!("m{i}-data-0")),
                fresh: 0,
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                paused: false,
            })
            .collect();
        let mut etcd = Self {
            client_port: members[0].client_port,
            hardening: secure.then(|| Hardening::new(root.path(), n)),
            members,
            root,
        };
        for i in 0..n {
            etcd.spawn(i, "new");
        }
        etcd.wait_ready();
        etcd
    }

    /// Every member's `http[s]://127.0.0.1:PORT`, comma-separated: what
    /// `--etcd` takes.
    pub fn endpoint(&self) -> String {
        (0..self.members.len())
            .map(|i| self.member_endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i`'s client URL.
    pub fn member_endpoint(&self, i: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[i].client_port
        )
    }

    /// Member `i`'s plaintext port for `GET /metrics`.
    pub fn metrics_port(&self, i: usize) -> u16 {
        self.members[i].metrics_port
    }

    /// The CA, certificates and root's etcdctl of a `secure_cluster`.
    pub fn hardening(&self) -> Option<&Hardening> {
        self.hardening.as_ref()
    }

    fn scheme(&self) -> &'static str {
        if self.hardening.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The first member's PID.
    pub fn pid(&self) -> Option<u32> {
        self.members[0].child.as_ref().map(Child::id)
    }

    /// Every member's log.
    pub fn log(&self) -> String {
        (0..self.members.len())
            .map(|i| {
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                format!("--- {} ---\n{log}", self.members[i].name)
            })
            .collect()
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.root
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}://127.0.0.1:{}", m.name, self.scheme(), m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("etcd log file");
        let initial = self.initial_cluster();
        // One token per cluster (members of one test form one cluster).
        let token = format!("t{}", self.client_port);
        let scheme = self.scheme();
        let tls = self.hardening.as_ref().map(|h| {
            h.forget(i);
            h.member_args()
        });
        let m = &mut self.members[i];
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("{scheme}://127.0.0.1:{}", m.peer_port);
        let metrics = format!("http://127.0.0.1:{}", m.metrics_port);
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", BINARY])
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &token])
            .args(["--listen-metrics-urls", &metrics])
            .args(tls.unwrap_or_default())
            // Elections within a second or two on a loaded 2-core machine.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        m.child = Some(child);
        m.paused = false;
    }

    /// Waits until every running member answers and one is the leader.
    fn wait_ready(&mut self) {
        self.wait_ready_within(READY_WITHIN);
    }

    fn wait_ready_within(&mut self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut last;
        loop {
            for i in 0..self.members.len() {
                if let Some(Ok(Some(status))) = self.members[i].child.as_mut().map(Child::try_wait)
                {
                    panic!("etcd exited with {status} during start-up:\n{}", self.log());
                }
            }
            match self.ready() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            assert!(
                std::time::Instant::now() < deadline,
                "etcd not ready within {limit:?}: {last}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ready(&self) -> Result<(), String> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() {
                self.call_member(i, "/v3/kv/range", &json!({"key": B64.encode("/")}))?;
            }
        }
        self.leader().map(|_| ()).ok_or_else(|| "no leader".into())
    }

    /// The index of the member that is the leader, as the members say.
    pub fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() || self.members[i].paused {
                ids.push(None);
                continue;
            }
            let status = self
                .call_member(i, "/v3/maintenance/status", &json!({}))
                .ok();
            ids.push(status.as_ref().map(|s| uint(&s["header"]["member_id"])));
            if let Some(s) = status {
                let l = uint(&s["leader"]);
                if l != 0 {
                    leader = Some(l);
                }
            }
        }
        let leader = leader?;
        ids.iter().position(|id| *id == Some(leader))
    }

    /// The index of a running member that is not the leader.
    pub fn follower(&self) -> Option<usize> {
        let leader = self.leader()?;
        (0..self.members.len()).find(|i| *i != leader && self.members[*i].child.is_some())
    }

    /// SIGTERM every member by PID, then wait (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }

    /// SIGTERM member `i`, then wait (SIGKILL after 10 s).
    pub fn stop_member(&mut self, i: usize) {
        self.resume_member(i);
        let Some(mut child) = self.members[i].child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL every member, then wait.
    pub fn kill(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// SIGKILL member `i`, then wait.
    pub fn kill_member(&mut self, i: usize) {
        self.members[i].paused = false;
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP member `i`: its sockets still accept, nothing answers.
    pub fn pause_member(&mut self, i: usize) {
        if let Some(child) = &self.members[i].child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGSTOP);
            self.members[i].paused = true;
        }
    }

    /// SIGCONT member `i`.
    pub fn resume_member(&mut self, i: usize) {
        if let Some(child) = &self.members[i].child {
            if self.members[i].paused {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            }
        }
        self.members[i].paused = false;
    }

    /// Starts member `i` again on its data directory and ports, and waits
    /// for it to answer.
    pub fn restart_member(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "stop the member first");
        self.spawn(i, "new");
        self.wait_ready();
    }

    /// Starts every member again on the same data directories and ports.
    pub fn restart(&mut self) {
        self.restart_within(READY_WITHIN);
    }

    /// [`Etcd::restart`], waiting up to `limit` for the members to answer
    /// (a bench whose clients flood the returning members).
    pub fn restart_within(&mut self, limit: Duration) {
        for i in 0..self.members.len() {
            assert!(self.members[i].child.is_none(), "stop etcd first");
            self.spawn(i, "new");
        }
        self.wait_ready_within(limit);
    }

    /// Starts again on the same ports with new, empty data directories:
    /// every key and lease is gone.
    pub fn restart_fresh(&mut self) {
        for i in 0..self.members.len() {
            assert!(self.members[i].child.is_none(), "stop etcd first");
            let m = &mut self.members[i];
            m.fresh += 1;
            m.data = self
                .root
                .path()
                .join(format!("{}-data-{}", m.name, m.fresh));
            self.spawn(i, "new");
        }
        self.wait_ready();
    }

    /// `call` on a connection to member `i` (as root on a secure cluster).
    fn via<T>(
        &self,
        i: usize,
        timeout: Duration,
        call: impl Fn(gateway::Target) -> Result<T, String>,
    ) -> Result<T, String> {
        let authority = format!("127.0.0.1:{}", self.members[i].client_port);
        match &self.hardening {
            Some(h) => h.as_root(i, &authority, timeout, call),
            None => call(gateway::Target::plain(&authority)),
        }
    }

    /// One gateway call to member `i`, bounded by 5 s.
    fn call_member(&self, i: usize, path: &str, body: &Value) -> Result<Value, String> {
        let timeout = Duration::from_secs(5);
        self.via(i, timeout, |t| gateway::call(t, path, body, timeout))
    }

    /// A watch of member `i`: `request` is `/v3/watch`'s body; each read
    /// waits at most `timeout`.
    pub fn watch(
        &self,
        i: usize,
        request: &Value,
        timeout: Duration,
    ) -> Result<gateway::Stream, String> {
        self.via(i, timeout, |t| {
            gateway::Stream::open(t, "/v3/watch", request, timeout)
        })
    }

    /// One gateway call to the first running, unpaused member that answers.
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, String> {
        let mut last = "no running member".to_owned();
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() || self.members[i].paused {
                continue;
            }
            match self.call_member(i, path, body) {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Every key under `prefix`, at one revision (one read).
    pub fn kvs(&self, prefix: &str) -> Result<BTreeMap<String, Kv>, String> {
        let end = range_end(prefix.as_bytes());
        let answer = self.call(
            "/v3/kv/range",
            &json!({"key": B64.encode(prefix), "range_end": B64.encode(end)}),
        )?;
        let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
        kvs.iter()
            .map(|kv| {
                let bytes = |v: &Value| {
                    B64.decode(v.as_str().unwrap_or(""))
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .map_err(|e| e.to_string())
                };
                Ok((
                    bytes(&kv["key"])?,
                    Kv {
                        value: bytes(&kv["value"])?,
                        lease: int(&kv["lease"]),
                    },
                ))
            })
            .collect()
    }

    /// How many keys are under `prefix` (etcd counts).
    pub fn count(&self, prefix: &str) -> Result<i64, String> {
        let end = range_end(prefix.as_bytes());
        let answer = self.call(
            "/v3/kv/range",
            &json!({"key": B64.encode(prefix), "range_end": B64.encode(end), "count_only": true}),
        )?;
        Ok(int(&answer["count"]))
    }

    /// Puts `value` at `key` (with no lease).
    pub fn put(&self, key: &str, value: &str) {
        self.call(
            "/v3/kv/put",
            &json!({"key": B64.encode(key), "value": B64.encode(value)}),
        )
        .expect("etcd put");
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) {
        self.call("/v3/kv/deleterange", &json!({"key": B64.encode(key)}))
            .expect("etcd delete");
    }

    /// Whether lease `id` exists.
    pub fn lease_alive(&self, id: i64) -> bool {
        let answer = self
            .call("/v3/lease/leases", &json!({}))
            .expect("etcd leases");
        answer["leases"]
            .as_array()
            .is_some_and(|ls| ls.iter().any(|l| int(&l["ID"]) == id))
    }

    /// The pods node `node` published under the default prefix: UUID →
    /// entry (and its lease).
    pub fn pods_of(
        &self,
        node: &str,
    ) -> Result<BTreeMap<String, (serde_json::Value, i64)>, String> {
        let prefix = format!("/rkt-mds/pods/{node}/");
        Ok(self
            .kvs(&prefix)?
            .into_iter()
            .map(|(k, kv)| {
                let uuid = k.trim_start_matches(&prefix).to_owned();
                let entry = serde_json::from_str(&kv.value).unwrap_or(serde_json::Value::Null);
                (uuid, (entry, kv.lease))
            })
            .collect())
    }

    /// Node `node`'s record under the default prefix, and its lease.
    pub fn node_record(&self, node: &str) -> Result<Option<(serde_json::Value, i64)>, String> {
        let key = format!("/rkt-mds/nodes/{node}");
        Ok(self.kvs(&key)?.remove(&key).map(|kv| {
            let record = serde_json::from_str(&kv.value).unwrap_or(serde_json::Value::Null);
            (record, kv.lease)
        }))
    }
}

/// The end of the range of keys that start with `prefix`.
pub fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// An unsigned 64-bit integer (a member ID) as proto3 JSON gives it.
fn uint(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A 64-bit integer as proto3 JSON gives it (a string, or absent for 0).
pub fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- etcd log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
