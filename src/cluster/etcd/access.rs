//! How the agent and the readers reach a hardened etcd: TLS (etcdctl's
//! `--etcd-cacert`, `--etcd-cert`, `--etcd-key`) and a user
//! (`--etcd-user` with `--etcd-password-file`: a password never appears on
//! a command line or in a log). Files are read once, at start, so that a
//! mistake is a configuration error before anything is bound.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// Where the system's CA bundle is, for `https://` without `--etcd-cacert`.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The flags, as given.
#[derive(Clone, Debug, Default)]
pub struct AccessFlags {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// What was made of them.
#[derive(Clone, Default)]
pub struct Access {
    /// For `https://` endpoints.
    pub tls: Option<Arc<ClientConfig>>,
    /// The user and its password.
    pub user: Option<Credentials>,
    /// Whether a client certificate is presented. It has no common name
    /// (etcd's JSON gateway refuses one that has), so the user comes from
    /// `--etcd-user` only.
    pub client_cert: bool,
    /// The tokens etcd gave this user, shared by every clone.
    pub(crate) tokens: Arc<super::tokens::Tokens>,
}

#[derive(Clone)]
pub struct Credentials {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Credentials")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("tls", &self.tls.is_some())
            .field("user", &self.user)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// Why the flags cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{flag} {}: {why}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("{0}")]
    Flags(String),
}

impl Access {
    /// Reads the files the flags name. `https`: whether any endpoint is
    /// `https://` (TLS files without one are a mistake worth saying).
    pub fn load(flags: &AccessFlags, https: bool) -> Result<Self, AccessError> {
        let tls_files = flags.cacert.is_some() || flags.cert.is_some() || flags.key.is_some();
        if tls_files && !https {
            return Err(AccessError::Flags(
                "--etcd-cacert, --etcd-cert and --etcd-key need https:// endpoints in --etcd"
                    .into(),
            ));
        }
        let user = match (&flags.user, &flags.password_file) {
            (Some(name), Some(file)) => Some(Credentials {
                name: name.clone(),
                password: read_password(file)?,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(AccessError::Flags(
                    "--etcd-user needs --etcd-password-file (a password is never given on the command line)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(AccessError::Flags(
                    "--etcd-password-file needs --etcd-user".into(),
                ))
            }
        };
        let tls = if https {
            Some(Arc::new(client_config(flags)?))
        } else {
            None
        };
        Ok(Self {
            tls,
            user,
            client_cert: flags.cert.is_some(),
            tokens: Arc::default(),
        })
    }
}

fn client_config(flags: &AccessFlags) -> Result<ClientConfig, AccessError> {
    let (flag, ca_file) = match &flags.cacert {
        Some(file) => ("--etcd-cacert", file.clone()),
        None => ("(the system's CA bundle)", PathBuf::from(SYSTEM_CAS)),
    };
    let mut roots = RootCertStore::empty();
    let cas = certificates(flag, &ca_file)?;
    let (added, _ignored) = roots.add_parsable_certificates(cas);
    if added == 0 {
        return Err(file_error(flag, &ca_file, "holds no usable CA certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AccessError::Flags(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    match (&flags.cert, &flags.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates("--etcd-cert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                file_error("--etcd-key", key, &format!("no private key in PEM: {e}"))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| AccessError::Flags(format!("--etcd-cert and --etcd-key: {e}")))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(AccessError::Flags(
            "--etcd-cert and --etcd-key go together".into(),
        )),
    }
}

fn certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, AccessError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(flag, path, &e.to_string()))?
        .collect();
    let certs = certs.map_err(|e| file_error(flag, path, &format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn read_password(path: &Path) -> Result<String, AccessError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| file_error("--etcd-password-file", path, &e.to_string()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(file_error("--etcd-password-file", path, "is empty"));
    }
    Ok(password.to_owned())
}

fn file_error(flag: &'static str, path: &Path, why: &str) -> AccessError {
    AccessError::File {
        flag,
        path: path.to_path_buf(),
        why: why.to_owned(),
    }
}
