//! How the fleet's agents and readers reach etcd (`bench --fleet`):
//! plaintext, or on a secure cluster (`--fleet-secure`) over TLS with a
//! client certificate without a common name (etcd's JSON gateway refuses
//! one) and a user per node, made by pasting `rkt-mds cluster roles --node
//! NODE` into a shell as etcd's root, as an operator would; the readers
//! (`audit`, `jwks`, `bundle`) as a user of the readers' role it makes.

use std::{collections::HashMap, process::Command, time::Instant};

use integration::{
    agent::binary,
    etcd::{secure::access_args, Etcd},
};

/// The readers' user on a secure cluster.
const READER: &str = "fleet-reader";

pub(crate) struct Access {
    endpoints: String,
    secure: Option<Secure>,
    /// The password files.
    _dir: tempfile::TempDir,
}

/// A secure cluster's TLS and user flags.
struct Secure {
    /// By node name.
    nodes: HashMap<String, Vec<String>>,
    readers: Vec<String>,
}

impl Access {
    /// On a secure cluster: a user, a password and a certificate for
    /// each of `nodes`, and for the readers.
    pub(crate) fn new(etcd: &Etcd, nodes: &[String]) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let endpoints = etcd.endpoint();
        let Some(hardening) = etcd.hardening() else {
            return Ok(Self {
                endpoints,
                secure: None,
                _dir: dir,
            });
        };
        let started = Instant::now();
        let mut script = String::new();
        for (i, node) in nodes.iter().enumerate() {
            let roles = Command::new(binary())
                .args(["cluster", "roles", "--node", node, "--password-file"])
                .arg(format!("{node}.pw"))
                .output()
                .map_err(|e| e.to_string())?;
            if !roles.status.success() {
                return Err(format!(
                    "rkt-mds cluster roles --node {node}: {}",
                    String::from_utf8_lossy(&roles.stderr)
                ));
            }
            let roles = String::from_utf8_lossy(&roles.stdout).into_owned();
            // The readers' role is made once per cluster: with the first
            // node's commands only.
            script += if i == 0 {
                &roles
            } else {
                roles.split("# Readers").next().unwrap_or(&roles)
            };
        }
        script += &format!(
            "etcdctl user add {READER} --interactive=false < {READER}.pw\netcdctl user grant-role {READER} rkt-mds-reader\n"
        );
        for name in nodes.iter().chain([&READER.to_owned()]) {
            std::fs::write(
                dir.path().join(format!("{name}.pw")),
                format!("pw-{name}\n"),
            )
            .map_err(|e| e.to_string())?;
        }
        let pasted = hardening.root_ctl(&endpoints).script(&script, dir.path());
        if !pasted.status.success() {
            return Err(format!(
                "the users of `cluster roles`: {}",
                String::from_utf8_lossy(&pasted.stderr)
            ));
        }
        let flags = |user: &str, name: &str| {
            access_args(
                &hardening.pki.ca(),
                &hardening.pki.issue_client(name, false),
                user,
                &dir.path().join(format!("{name}.pw")),
            )
        };
        let per_node = nodes
            .iter()
            .map(|n| (n.clone(), flags(&format!("rkt-mds-node-{n}"), n)))
            .collect();
        let readers = flags(READER, READER);
        eprintln!(
            "bench: {} node users and a reader made in {:.1} s",
            nodes.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(Self {
            endpoints,
            secure: Some(Secure {
                nodes: per_node,
                readers,
            }),
            _dir: dir,
        })
    }

    /// `--etcd` and, on a secure cluster, node `node`'s TLS and user flags.
    pub(crate) fn node_args(&self, node: &str) -> Vec<String> {
        self.with_endpoints(self.secure.as_ref().and_then(|s| s.nodes.get(node)))
    }

    /// `--etcd` and, on a secure cluster, the readers' TLS and user flags.
    pub(crate) fn reader_args(&self) -> Vec<String> {
        self.with_endpoints(self.secure.as_ref().map(|s| &s.readers))
    }

    fn with_endpoints(&self, flags: Option<&Vec<String>>) -> Vec<String> {
        let mut args = vec!["--etcd".to_owned(), self.endpoints.clone()];
        args.extend(flags.into_iter().flatten().cloned());
        args
    }

    /// What the agents and readers go through, for the report.
    pub(crate) fn describe(&self) -> &'static str {
        if self.secure.is_some() {
            "TLS with client certificates on client and peer URLs, authentication on; each agent its own user and role from `cluster roles`, the readers a user of its readers' role"
        } else {
            "plaintext, no authentication"
        }
    }
}
