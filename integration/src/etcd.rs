//! A real etcd (Debian's `etcd-server`, `/usr/bin/etcd`) as a process: on
//! 127.0.0.1 with free client and peer ports and a data directory of its
//! own; stopped by PID, restarted on the same data directory or a fresh
//! one, and killed with the test process (`setpriv --pdeathsig KILL`).
//! Reads go through the `etcd-client` crate.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::agent::free_port;

pub const BINARY: &str = "/usr/bin/etcd";

/// Whether etcd is installed (`.ci/run` installs `etcd-server`).
pub fn available() -> bool {
    std::path::Path::new(BINARY).exists()
}

pub struct Etcd {
    child: Option<Child>,
    root: tempfile::TempDir,
    /// The data directory in use (`data-N` under the root).
    data: PathBuf,
    fresh: u32,
    pub client_port: u16,
    pub peer_port: u16,
    rt: tokio::runtime::Runtime,
}

/// One key as read: its value and its lease (0: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub value: String,
    pub lease: i64,
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub fn start() -> Self {
        assert!(
            available(),
            "{BINARY} is missing: apt-get install etcd-server (.ci/run does)"
        );
        let root = tempfile::Builder::new()
            .prefix("rkt-mds-etcd")
            .tempdir()
            .expect("tempdir");
        let mut etcd = Self {
            child: None,
            data: root.path().join("data-0"),
            root,
            fresh: 0,
            client_port: free_port(),
            peer_port: free_port(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for etcd reads"),
        };
        etcd.spawn();
        etcd
    }

    /// `http://127.0.0.1:PORT`, what `--etcd` takes.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", BINARY])
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        crate::wait_for("etcd to answer", Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited with {status} during start-up:\n{}", self.log());
            }
            self.kvs("/").ok()
        });
    }

    /// SIGTERM by PID, then wait (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut exited = false;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL by PID, then wait.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same data directory and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop etcd first");
        self.spawn();
    }

    /// Starts again on the same ports with a new, empty data directory:
    /// every key and lease is gone.
    pub fn restart_fresh(&mut self) {
        assert!(self.child.is_none(), "stop etcd first");
        self.fresh += 1;
        self.data = self.root.path().join(format!("data-{}", self.fresh));
        self.spawn();
    }

    /// Runs `f` with a client, bounded by 5 s.
    fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(etcd_client::Client) -> Result<T, etcd_client::Error>,
    ) -> Result<T, String> {
        let endpoint = self.endpoint();
        self.rt.block_on(async move {
            let call = async {
                let client = etcd_client::Client::connect([endpoint], None).await?;
                f(client).await
            };
            match tokio::time::timeout(Duration::from_secs(5), call).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("etcd did not answer within 5 s".into()),
            }
        })
    }

    /// Every key under `prefix`.
    pub fn kvs(&self, prefix: &str) -> Result<BTreeMap<String, Kv>, String> {
        let prefix = prefix.to_owned();
        self.with_client(async move |mut c| {
            let options = etcd_client::GetOptions::new().with_prefix();
            let mut answer = c.get(prefix, Some(options)).await?;
            Ok(answer
                .take_kvs()
                .into_iter()
                .map(|kv| {
                    let lease = kv.lease();
                    let (k, v) = kv.into_key_value();
                    (
                        String::from_utf8_lossy(&k).into_owned(),
                        Kv {
                            value: String::from_utf8_lossy(&v).into_owned(),
                            lease,
                        },
                    )
                })
                .collect())
        })
    }

    /// Puts `value` at `key` (with no lease).
    pub fn put(&self, key: &str, value: &str) {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.with_client(async move |mut c| c.put(key, value, None).await.map(|_| ()))
            .expect("etcd put");
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) {
        let key = key.to_owned();
        self.with_client(async move |mut c| c.delete(key, None).await.map(|_| ()))
            .expect("etcd delete");
    }

    /// Whether lease `id` exists.
    pub fn lease_alive(&self, id: i64) -> bool {
        self.with_client(async move |mut c| {
            let leases = c.leases().await?;
            Ok(leases.leases().iter().any(|l| l.id() == id))
        })
        .expect("etcd leases")
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

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "--- etcd log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
