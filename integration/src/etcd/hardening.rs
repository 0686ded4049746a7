//! A cluster's TLS and authentication (`Etcd::secure_cluster`): its CA and
//! the members' server certificate (also their peer certificate), and the
//! harness's own way in: TLS with a client certificate without a common
//! name (etcd's JSON gateway refuses one) and root's token, one per
//! member (etcd's simple tokens are member-local and die with it), asked
//! for again when a member says it is no longer valid.

use std::{
    ffi::OsString,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ClientConfig, RootCertStore,
};
use serde_json::json;

use super::{
    ctl::Etcdctl,
    gateway::{self, Target},
    secure::{tls_args, CertFiles, Pki, ROOT_PASSWORD},
};

pub struct Hardening {
    pub pki: Pki,
    server: CertFiles,
    /// etcdctl's certificate as root (its common name is `root`).
    root: CertFiles,
    tls: Arc<ClientConfig>,
    /// Root's token at each member, once authentication is on.
    tokens: Mutex<Vec<Option<String>>>,
    auth: AtomicBool,
}

impl Hardening {
    /// A CA and certificates in `dir`, for `members` members.
    pub(super) fn new(dir: &Path, members: usize) -> Self {
        let pki = Pki::new(dir, "cluster-ca");
        let server = pki.issue("etcd-server", false);
        let root = pki.issue("root", false);
        let harness = pki.issue_client("harness", false);
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(pki.ca()).expect("read the CA"))
            .expect("the CA");
        let chain = vec![CertificateDer::from_pem_file(&harness.cert).expect("read the cert")];
        let key = PrivateKeyDer::from_pem_file(&harness.key).expect("read the key");
        let tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .expect("the harness's client certificate");
        Self {
            pki,
            server,
            root,
            tls: Arc::new(tls),
            tokens: Mutex::new(vec![None; members]),
            auth: AtomicBool::new(false),
        }
    }

    /// A member's TLS flags, client and peer URLs, and a simple token's
    /// life: the bench watches through one root token for the whole run
    /// and uses it for nothing else, and etcd's default (5 min after the
    /// last use) cut the watch of a 100,000-pod run short. The agents
    /// fetch a new token themselves when etcd says theirs expired.
    pub(super) fn member_args(&self) -> Vec<OsString> {
        let mut args = tls_args(&self.server, &self.pki.ca(), true);
        args.extend(["--auth-token".into(), "simple".into()]);
        args.extend(["--auth-token-ttl".into(), "3600".into()]);
        args
    }

    /// etcdctl as root at `endpoints`.
    pub fn root_ctl(&self, endpoints: &str) -> Etcdctl {
        Etcdctl {
            endpoints: endpoints.to_owned(),
            ca: self.pki.ca(),
            cert: self.root.clone(),
            user: Some(format!("root:{ROOT_PASSWORD}")),
        }
    }

    /// Adds the root user and turns authentication on.
    pub(super) fn enable_auth(&self, endpoints: &str) {
        let ctl = self.root_ctl(endpoints);
        for args in [
            &[
                "user",
                "add",
                "root",
                &format!("--new-user-password={ROOT_PASSWORD}"),
            ][..],
            &["auth", "enable"],
        ] {
            let out = ctl.run(args);
            assert!(
                out.status.success(),
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.auth.store(true, Ordering::SeqCst);
    }

    /// Member `i` was (re)started: its token is gone.
    pub(super) fn forget(&self, i: usize) {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())[i] = None;
    }

    /// Root's token at member `i` (none before authentication is on).
    fn token(
        &self,
        i: usize,
        authority: &str,
        timeout: Duration,
    ) -> Result<Option<String>, String> {
        if !self.auth.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if let Some(t) = &self.tokens.lock().unwrap_or_else(|p| p.into_inner())[i] {
            return Ok(Some(t.clone()));
        }
        let answer = gateway::call(
            self.target(authority, None),
            "/v3/auth/authenticate",
            &json!({"name": "root", "password": ROOT_PASSWORD}),
            timeout,
        )?;
        let token = answer["token"]
            .as_str()
            .ok_or_else(|| format!("{authority}: no token in {answer}"))?
            .to_owned();
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(token.clone());
        Ok(Some(token))
    }

    fn target<'a>(&'a self, authority: &'a str, token: Option<&'a str>) -> Target<'a> {
        Target {
            authority,
            tls: Some(&self.tls),
            token,
        }
    }

    /// `call` to member `i` at `authority` as root; when the member says
    /// root's token is no longer valid, once more with a new one.
    pub(super) fn as_root<T>(
        &self,
        i: usize,
        authority: &str,
        timeout: Duration,
        call: impl Fn(Target) -> Result<T, String>,
    ) -> Result<T, String> {
        let token = self.token(i, authority, timeout)?;
        match call(self.target(authority, token.as_deref())) {
            Err(e) if e.contains("invalid auth token") => {
                self.forget(i);
                let token = self.token(i, authority, timeout)?;
                call(self.target(authority, token.as_deref()))
            }
            answer => answer,
        }
    }
}
