//! The pod service: the registration flow (validate, find the network
//! namespace, watch it, store, persist); identity resolution of public
//! requests (`resolve`); reload and garbage collection (`lifecycle`). The
//! HTTP layers only parse and render around it.

mod lifecycle;
mod resolve;

pub use resolve::Refused;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use netns::{NetnsRef, WatchSet};

use crate::{
    appc::{is_ac_name, ImageManifest, PodManifest, PodUuid, SchemaError},
    identity::Mode,
    persist::PodStore,
    registry::{Inserted, NetnsBinding, Pod, Registrant, Registry, RegistryError, TokenDigest},
    store::StoreError,
};

/// How often a pod whose namespace is not known yet is looked up again.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// Why a registration request failed; the text is safe to send back.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("UUID is missing or malformed: {0}")]
    BadUuid(String),
    #[error("token missing")]
    TokenMissing,
    #[error("token is not acceptable: {0}")]
    WeakToken(&'static str),
    #[error("JSON-decoding failed: {0}")]
    Json(String),
    #[error("invalid manifest: {0}")]
    Schema(#[from] SchemaError),
    #[error("invalid app name {0:?}: not an AC name")]
    BadAppName(String),
    #[error("{0}")]
    BadNetns(String),
    #[error("{0}")]
    NetnsConflict(String),
    #[error(transparent)]
    Conflict(#[from] RegistryError),
    #[error("Pod with given UUID not found")]
    PodNotFound,
    #[error("app {0:?} is not in the pod manifest")]
    AppNotInManifest(String),
    #[error("could not store the registration: {0}")]
    Store(#[from] StoreError),
}

impl RegisterError {
    pub fn status(&self) -> u16 {
        match self {
            RegisterError::NetnsConflict(_) | RegisterError::Conflict(_) => 409,
            RegisterError::PodNotFound | RegisterError::AppNotInManifest(_) => 404,
            RegisterError::Store(_) => 500,
            _ => 400,
        }
    }
}

/// The pod registration request, as parsed from the socket.
pub struct PodRequest<'a> {
    pub uuid: &'a str,
    pub token: Option<&'a str>,
    pub netns: Option<&'a str>,
    pub pid: Option<&'a str>,
    pub body: Bytes,
    pub registrant: Registrant,
}

pub struct Config {
    pub mode: Mode,
    /// rkt's data directory (`--dir`).
    pub rkt_dir: PathBuf,
    /// How long a pod may look dead (namespace gone, rkt pod directory
    /// gone) before its registration is collected.
    pub gc_grace: Duration,
}

/// Registrations, their namespaces and the identity policy.
pub struct Pods {
    config: Config,
    registry: Registry,
    watches: WatchSet,
    store: Option<PodStore>,
    last_discovery: Mutex<HashMap<PodUuid, Instant>>,
    /// Since when each pod has looked dead, for the GC grace period.
    dead_since: Mutex<HashMap<PodUuid, Instant>>,
}

impl Pods {
    pub fn new(config: Config, watches: WatchSet, store: Option<PodStore>) -> Self {
        Self {
            config,
            registry: Registry::default(),
            watches,
            store,
            last_discovery: Mutex::default(),
            dead_since: Mutex::default(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn watches(&self) -> &WatchSet {
        &self.watches
    }

    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    pub fn gc_grace(&self) -> Duration {
        self.config.gc_grace
    }

    /// `PUT /pods/{uuid}?token=...`
    pub async fn register_pod(&self, req: PodRequest<'_>) -> Result<Arc<Pod>, RegisterError> {
        let uuid = parse_uuid(req.uuid)?;
        let token = check_token(req.token, &uuid)?;
        let (manifest, echo) = PodManifest::from_value(parse_json(&req.body)?)?;
        if let Some(existing) = self.registry.get(&uuid) {
            if existing.token != token {
                return Err(RegistryError::TokenMismatch(uuid).into());
            }
        }
        let binding = self.find_netns(&uuid, req.netns, req.pid)?;
        let acquired = match &binding {
            NetnsBinding::Known(ns) => {
                self.watches.acquire(ns).await.map_err(|e| {
                    RegisterError::BadNetns(format!("cannot watch network namespace: {e}"))
                })?;
                Some(ns.id())
            }
            _ => None,
        };
        let mut pod = Pod::new(
            uuid,
            token,
            manifest,
            &echo,
            binding,
            unix_now(),
            req.registrant,
        );
        pod.rkt_pod = self.rkt_pod_dir(&uuid).is_dir();
        let inserted = match self.registry.insert(pod) {
            Ok(i) => i,
            Err(e) => {
                if let Some(id) = acquired {
                    self.watches.release(id);
                }
                return Err(e.into());
            }
        };
        let stored = self.registry.get(&uuid).ok_or(RegisterError::PodNotFound)?;
        if let Inserted::Replaced(prev) = &inserted {
            if let Some(prev_id) = prev.netns_id() {
                if acquired.is_some() || stored.netns_id() != Some(prev_id) {
                    self.watches.release(prev_id);
                }
            }
        }
        if let Err(e) = self.persist(&stored) {
            // Not durable, so not acknowledged: undo.
            if let Some(p) = self.registry.remove(&uuid) {
                self.release(&p);
            }
            return Err(e.into());
        }
        tracing::info!(pod = %uuid, netns = %describe(&stored.netns), uid = ?stored.registrant.uid, "pod registered");
        Ok(stored)
    }

    /// `PUT /pods/{uuid}/{app}`
    pub fn register_app(&self, uuid: &str, app: &str, body: &[u8]) -> Result<(), RegisterError> {
        let uuid = parse_uuid(uuid)?;
        if !is_ac_name(app) {
            return Err(RegisterError::BadAppName(app.to_owned()));
        }
        let pod = self.registry.get(&uuid).ok_or(RegisterError::PodNotFound)?;
        let (image, echo) = ImageManifest::from_value(parse_json(body)?)?;
        let entry = pod
            .make_app(app, &image, &echo)
            .ok_or_else(|| RegisterError::AppNotInManifest(app.to_owned()))?;
        let previous = pod.apps.get(app).cloned();
        let updated = self
            .registry
            .update(&uuid, |p| {
                p.apps.insert(app.to_owned(), entry);
            })
            .ok_or(RegisterError::PodNotFound)?;
        if let Err(e) = self.persist(&updated) {
            self.registry.update(&uuid, |p| match previous {
                Some(prev) => {
                    p.apps.insert(app.to_owned(), prev);
                }
                None => {
                    p.apps.remove(app);
                }
            });
            return Err(e.into());
        }
        tracing::info!(pod = %uuid, app, "app registered");
        Ok(())
    }

    /// `DELETE /pods/{uuid}`
    pub fn unregister(&self, uuid: &str) -> Result<(), RegisterError> {
        let uuid = parse_uuid(uuid)?;
        self.remove(&uuid, "unregistered")
            .ok_or(RegisterError::PodNotFound)?
    }

    /// Removes a registration durably and lets go of its namespace.
    pub fn remove(&self, uuid: &PodUuid, reason: &str) -> Option<Result<(), RegisterError>> {
        // Durable first: a crash after this must not resurrect the pod.
        if let Some(store) = &self.store {
            if self.registry.get(uuid).is_some() {
                if let Err(e) = store.remove(uuid) {
                    return Some(Err(e.into()));
                }
            }
        }
        let pod = self.registry.remove(uuid)?;
        self.release(&pod);
        self.lock_discovery().remove(uuid);
        tracing::info!(pod = %uuid, reason, "pod removed");
        Some(Ok(()))
    }

    fn release(&self, pod: &Pod) {
        if let Some(id) = pod.netns_id() {
            self.watches.release(id);
        }
    }

    fn persist(&self, pod: &Pod) -> Result<(), StoreError> {
        match &self.store {
            Some(store) => store.save(pod),
            None => Ok(()),
        }
    }

    /// The namespace a registration names, from every source it has:
    /// `netns=`, `pid=`, rkt's pod directory. Sources must agree.
    fn find_netns(
        &self,
        uuid: &PodUuid,
        netns: Option<&str>,
        pid: Option<&str>,
    ) -> Result<NetnsBinding, RegisterError> {
        let mut found: Vec<(&str, NetnsRef)> = Vec::new();
        if let Some(path) = netns.filter(|p| !p.is_empty()) {
            if !path.starts_with('/') {
                return Err(RegisterError::BadNetns(format!(
                    "netns must be an absolute path, got {path:?}"
                )));
            }
            let r = NetnsRef::open(path).map_err(|e| RegisterError::BadNetns(e.to_string()))?;
            found.push(("netns", r));
        }
        if let Some(pid) = pid.filter(|p| !p.is_empty()) {
            let pid: u32 = pid.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                RegisterError::BadNetns(format!("pid {pid:?} is not a process id"))
            })?;
            let r = NetnsRef::of_pid(pid).map_err(|e| RegisterError::BadNetns(e.to_string()))?;
            found.push(("pid", r));
        }
        if let Some(r) = self.rkt_netns(uuid) {
            found.push(("rkt pod directory", r));
        }
        if let Some(((first_src, first), rest)) = found.split_first() {
            if let Some((src, other)) = rest.iter().find(|(_, r)| r.id() != first.id()) {
                return Err(RegisterError::NetnsConflict(format!(
                    "{first_src} names network namespace {} but {src} names {}",
                    first.id(),
                    other.id()
                )));
            }
            return Ok(NetnsBinding::Known(first.clone()));
        }
        Ok(if self.rkt_pod_dir(uuid).is_dir() {
            NetnsBinding::Pending
        } else {
            NetnsBinding::HostNetwork
        })
    }

    fn rkt_pod_dir(&self, uuid: &PodUuid) -> PathBuf {
        self.config.rkt_dir.join("pods/run").join(uuid.to_string())
    }

    /// The namespace rkt recorded for the pod, if it has yet.
    fn rkt_netns(&self, uuid: &PodUuid) -> Option<NetnsRef> {
        let text = std::fs::read_to_string(self.rkt_pod_dir(uuid).join("netns")).ok()?;
        let path = text.trim();
        if !Path::new(path).is_absolute() {
            return None;
        }
        NetnsRef::open(path).ok()
    }

    fn lock_discovery(&self) -> std::sync::MutexGuard<'_, HashMap<PodUuid, Instant>> {
        self.last_discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

fn parse_uuid(uuid: &str) -> Result<PodUuid, RegisterError> {
    PodUuid::parse(uuid).map_err(|e| RegisterError::BadUuid(e.to_string()))
}

fn parse_json(body: &[u8]) -> Result<serde_json::Value, RegisterError> {
    serde_json::from_slice(body).map_err(|e| RegisterError::Json(e.to_string()))
}

/// SPEC §4: 22 to 256 characters of `[A-Za-z0-9._~-]`, never the UUID.
fn check_token(token: Option<&str>, uuid: &PodUuid) -> Result<TokenDigest, RegisterError> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(RegisterError::TokenMissing)?;
    if !(22..=256).contains(&token.len()) {
        return Err(RegisterError::WeakToken(
            "it must be 22 to 256 characters long",
        ));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
    {
        return Err(RegisterError::WeakToken(
            "it may only contain A-Z a-z 0-9 . _ ~ -",
        ));
    }
    if PodUuid::parse(token).is_ok_and(|t| t == *uuid) {
        return Err(RegisterError::WeakToken("it must not be the pod UUID"));
    }
    Ok(TokenDigest::of(token))
}

fn describe(b: &NetnsBinding) -> String {
    match b {
        NetnsBinding::Known(r) => r.path().display().to_string(),
        NetnsBinding::HostNetwork => "host-network".into(),
        NetnsBinding::Pending => "pending".into(),
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules() {
        let u = PodUuid::parse("de305d54-75b4-431b-adb2-eb6b9e546013").unwrap();
        assert!(matches!(
            check_token(None, &u),
            Err(RegisterError::TokenMissing)
        ));
        assert!(matches!(
            check_token(Some(""), &u),
            Err(RegisterError::TokenMissing)
        ));
        assert!(check_token(Some("short"), &u).is_err());
        assert!(check_token(Some(&"a".repeat(257)), &u).is_err());
        assert!(check_token(Some("0123456789abcdef0123456789abcdef"), &u).is_ok());
        assert!(check_token(Some("has space in it 0123456789"), &u).is_err());
        assert!(check_token(Some("de305d54-75b4-431b-adb2-eb6b9e546013"), &u).is_err());
        assert!(check_token(Some("DE305D5475B4431BADB2EB6B9E546013"), &u).is_err());
    }
}
