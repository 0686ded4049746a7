//! A hardened etcd for tests: certificates made in the test (rcgen), one
//! member serving `https://127.0.0.1:PORT` with `--client-cert-auth` and
//! `--trusted-ca-file`, authentication enabled with a root user, and
//! etcdctl (Debian's etcd-client) as root for set-up and independent
//! checks. Nothing here goes through the agent's code.

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::ctl::{Etcdctl, ETCDCTL};
use crate::agent::free_port;

pub(super) const ROOT_PASSWORD: &str = "root-test-password";

/// A member's flags for TLS with client certificates on its client URLs
/// (`server`, signed by `ca`); with `peers`, on its peer URLs too.
pub(super) fn tls_args(server: &CertFiles, ca: &Path, peers: bool) -> Vec<OsString> {
    let urls: &[&str] = if peers { &["", "peer-"] } else { &[""] };
    urls.iter()
        .flat_map(|p| {
            [
                format!("--{p}cert-file").into(),
                server.cert.clone().into(),
                format!("--{p}key-file").into(),
                server.key.clone().into(),
                format!("--{p}trusted-ca-file").into(),
                ca.into(),
                format!("--{p}client-cert-auth").into(),
            ]
        })
        .collect()
}

/// An agent's or reader's flags for a hardened etcd: the CA of its server
/// certificates, a client certificate, the user and its password file
/// (`--etcd` not included).
pub fn access_args(ca: &Path, cert: &CertFiles, user: &str, password_file: &Path) -> Vec<String> {
    vec![
        "--etcd-cacert".into(),
        ca.display().to_string(),
        "--etcd-cert".into(),
        cert.cert.display().to_string(),
        "--etcd-key".into(),
        cert.key.display().to_string(),
        "--etcd-user".into(),
        user.into(),
        "--etcd-password-file".into(),
        password_file.display().to_string(),
    ]
}

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA that signs the test's certificates.
pub struct Pki {
    dir: PathBuf,
    name: String,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A new CA named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = CertifiedIssuer::self_signed(params, ca_key).expect("ca cert");
        let pki = Self {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            ca,
        };
        std::fs::write(pki.ca_path(), pki.ca.pem()).expect("write ca");
        pki
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name()))
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate's file.
    pub fn ca(&self) -> PathBuf {
        self.ca_path()
    }

    /// A certificate for `cn`, valid for 127.0.0.1 and localhost, for
    /// both server and client use; `expired`: its validity ended a day ago.
    pub fn issue(&self, cn: &str, expired: bool) -> CertFiles {
        self.make(cn, expired, true)
    }

    /// A client certificate for the agent: no common name (etcd's JSON
    /// gateway refuses one), `name` only in its file names.
    pub fn issue_client(&self, name: &str, expired: bool) -> CertFiles {
        self.make(name, expired, false)
    }

    fn make(&self, cn: &str, expired: bool, with_cn: bool) -> CertFiles {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name = rcgen::DistinguishedName::new();
        if with_cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = time::OffsetDateTime::now_utc();
        if expired {
            params.not_before = now - time::Duration::days(30);
            params.not_after = now - time::Duration::days(1);
        } else {
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let stem = format!(
            "{cn}{}{}",
            if with_cn { "" } else { "-client" },
            if expired { "-expired" } else { "" }
        );
        let files = CertFiles {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}

/// One etcd member with TLS, client certificates and authentication.
pub struct SecureEtcd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub port: u16,
    peer_port: u16,
    root: CertFiles,
}

impl SecureEtcd {
    /// Starts etcd, adds the root user and enables authentication.
    pub fn start() -> Self {
        assert!(
            super::available() && Path::new(ETCDCTL).exists(),
            "needs /usr/bin/etcd and /usr/bin/etcdctl (apt-get install etcd-server etcd-client; .ci/run does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("rkt-mds-secure-etcd")
            .tempdir()
            .expect("tempdir");
        let pki = Pki::new(dir.path(), "test-ca");
        let root = pki.issue("root", false);
        let mut etcd = Self {
            child: None,
            port: free_port(),
            peer_port: free_port(),
            root,
            pki,
            dir,
        };
        etcd.spawn();
        etcd.ctl_ok(&[
            "user",
            "add",
            "root",
            &format!("--new-user-password={ROOT_PASSWORD}"),
        ]);
        etcd.ctl_ok(&["auth", "enable"]);
        etcd
    }

    fn spawn(&mut self) {
        let server = self.pki.issue("etcd-server", false);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("log");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", super::BINARY])
            .args(["--name", "secure"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("secure={peer}")])
            .args(tls_args(&server, &self.pki.ca(), false))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        crate::wait_for("the secure etcd to answer", Duration::from_secs(20), || {
            self.etcdctl(&["endpoint", "health"], true)
                .status
                .success()
                .then_some(())
        });
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// etcdctl as root (`as_root`) or with no user, over TLS with root's
    /// certificate.
    pub fn etcdctl(&self, args: &[&str], as_root: bool) -> Output {
        self.etcdctl_as(
            args,
            as_root.then(|| format!("root:{ROOT_PASSWORD}")),
            &self.root,
        )
    }

    /// etcdctl as `user` (`NAME:PASSWORD`) with certificate `cert`.
    pub fn etcdctl_as(&self, args: &[&str], user: Option<String>, cert: &CertFiles) -> Output {
        Etcdctl {
            endpoints: self.endpoint(),
            ca: self.pki.ca(),
            cert: cert.clone(),
            user,
        }
        .run(args)
    }

    /// etcdctl as root.
    pub fn root_ctl(&self) -> Etcdctl {
        Etcdctl {
            endpoints: self.endpoint(),
            ca: self.pki.ca(),
            cert: self.root.clone(),
            user: Some(format!("root:{ROOT_PASSWORD}")),
        }
    }

    /// etcdctl as root; panics unless it succeeds.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args, true);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell script (e.g. `rkt-mds cluster roles` output) with
    /// etcdctl set up as root through its environment variables.
    pub fn run_as_root(&self, script: &str, cwd: &Path) -> Output {
        self.root_ctl().script(script, cwd)
    }

    /// Keys (and values) under `prefix`, read as root.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.ctl_ok(&["get", "--prefix", "--keys-only", prefix]);
        out.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// SIGKILL and wait; `start_again` brings it back on the same data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }
}

impl Drop for SecureEtcd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "--- secure etcd log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
