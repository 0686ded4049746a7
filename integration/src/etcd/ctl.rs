//! etcdctl (Debian's etcd-client) over TLS: a certificate, and a user with
//! its password or none (then, with `--client-cert-auth`, etcd takes the
//! certificate's common name as the user). Everything is given through
//! etcdctl's `ETCDCTL_*` variables, as an operator's shell would.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use super::secure::CertFiles;

pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// How etcdctl reaches etcd, and as whom.
#[derive(Clone, Debug)]
pub struct Etcdctl {
    /// Comma-separated `https://HOST:PORT`.
    pub endpoints: String,
    pub ca: PathBuf,
    pub cert: CertFiles,
    /// `NAME:PASSWORD`.
    pub user: Option<String>,
}

impl Etcdctl {
    /// `etcdctl` with the variables set (and `sh` etc. for `script`).
    fn with_env(&self, mut cmd: Command) -> Command {
        cmd.env("ETCDCTL_API", "3")
            .env("ETCDCTL_ENDPOINTS", &self.endpoints)
            .env("ETCDCTL_CACERT", &self.ca)
            .env("ETCDCTL_CERT", &self.cert.cert)
            .env("ETCDCTL_KEY", &self.cert.key)
            .env("ETCDCTL_COMMAND_TIMEOUT", "5s")
            .env_remove("ETCDCTL_USER")
            .stdin(Stdio::null());
        if let Some(user) = &self.user {
            cmd.env("ETCDCTL_USER", user);
        }
        cmd
    }

    /// `etcdctl ARGS`, not yet run (e.g. a watch to read as it goes).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.with_env(Command::new(ETCDCTL));
        cmd.args(args);
        cmd
    }

    /// `etcdctl ARGS`, run to its end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("etcdctl")
    }

    /// Runs a shell script (e.g. `rkt-mds cluster roles` output) in `cwd`
    /// with `sh -e`, its etcdctl set up through the variables.
    pub fn script(&self, script: &str, cwd: &Path) -> Output {
        let mut cmd = self.with_env(Command::new("sh"));
        cmd.args(["-e", "-c", script])
            .current_dir(cwd)
            .output()
            .expect("sh")
    }
}
