//! The pod service: the registration flow (validate, find the network
//! namespace, watch it, store, persist); identity resolution of public
//! requests (`resolve`); reload and garbage collection (`lifecycle`). The
//! HTTP layers only parse and render around it.

mod find;
mod lifecycle;
mod locks;
mod resolve;
mod rkt_dir;
mod view;

pub use resolve::Refused;
pub use view::{AttributionView, NetnsView, PodView};

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use netns::{Lease, NetnsFile, WatchSet};
use parking_lot::Mutex;

use crate::{
    appc::{is_ac_name, ImageManifest, PodManifest, PodUuid, SchemaError},
    identity::{self, Mode},
    persist::PodStore,
    registry::{Inserted, NetnsBinding, Pod, Registrant, Registry, RegistryError, TokenDigest},
    store::StoreError,
};
use find::Found;
use locks::PodLocks;
use rkt_dir::RktDir;

/// How often a pod whose namespace is not known yet is looked up again.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// How long a registration waits for a namespace's first address dump.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

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
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegisterError {
    pub fn status(&self) -> u16 {
        match self {
            RegisterError::NetnsConflict(_) | RegisterError::Conflict(_) => 409,
            RegisterError::PodNotFound | RegisterError::AppNotInManifest(_) => 404,
            RegisterError::Store(_) | RegisterError::Internal(_) => 500,
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
    pub options: identity::Options,
    /// rkt's data directory (`--dir`).
    pub rkt_dir: PathBuf,
    /// How long a pod may look dead (namespace gone, rkt pod directory
    /// gone) before its registration is collected.
    pub gc_grace: Duration,
}

/// Registrations, their namespaces and the identity policy.
pub struct Pods {
    mode: Mode,
    options: identity::Options,
    gc_grace: Duration,
    rkt: RktDir,
    registry: Registry,
    watches: WatchSet,
    /// The agent's own namespace, watched like a pod's: its addresses are
    /// the host's.
    host: Lease,
    store: Option<PodStore>,
    locks: PodLocks,
    last_discovery: Mutex<HashMap<PodUuid, Instant>>,
    /// Since when each pod has looked dead, for the GC grace period.
    dead_since: Mutex<HashMap<PodUuid, Instant>>,
}

impl Pods {
    /// Starts watching the agent's own namespace. Fails where namespace
    /// instances cannot be told apart (no netns cookies: Linux < 5.14).
    pub async fn new(
        config: Config,
        watches: WatchSet,
        store: Option<PodStore>,
    ) -> Result<Self, netns::Error> {
        let own = NetnsFile::current()?;
        let host = watches.acquire(&own).await?;
        Ok(Self {
            mode: config.mode,
            options: config.options,
            gc_grace: config.gc_grace,
            rkt: RktDir::new(config.rkt_dir),
            registry: Registry::default(),
            watches,
            host,
            store,
            locks: PodLocks::default(),
            last_discovery: Mutex::default(),
            dead_since: Mutex::default(),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn watches(&self) -> &WatchSet {
        &self.watches
    }

    /// The agent's own namespace.
    pub fn host(&self) -> &Lease {
        &self.host
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Changes whenever a resolution may answer differently: a
    /// registration, an address, a namespace's liveness, the host's view.
    pub fn generation(&self) -> u64 {
        self.registry.generation() + self.watches.generation()
    }

    pub fn gc_grace(&self) -> Duration {
        self.gc_grace
    }

    /// `PUT /pods/{uuid}?token=...`
    pub async fn register_pod(&self, req: PodRequest<'_>) -> Result<Arc<Pod>, RegisterError> {
        let uuid = parse_uuid(req.uuid)?;
        let token = check_token(req.token, &uuid)?;
        let (manifest, echo) = PodManifest::from_value(parse_json(&req.body)?)?;
        let _guard = self.locks.lock(&uuid).await;
        if let Some(existing) = self.registry.get(&uuid) {
            if existing.token != token {
                return Err(RegistryError::TokenMismatch(uuid).into());
            }
        }
        let (rkt, netns, pid) = (
            self.rkt.clone(),
            req.netns.map(str::to_owned),
            req.pid.map(str::to_owned),
        );
        let found =
            blocking(move || find::find_netns(&rkt, &uuid, netns.as_deref(), pid.as_deref()))
                .await??;
        let binding = match found {
            Found::Netns(file) => NetnsBinding::Known(Arc::new(self.acquire(&file).await?)),
            Found::Pending => NetnsBinding::Pending,
            Found::HostNetwork => NetnsBinding::HostNetwork,
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
        let rkt = self.rkt.clone();
        pod.rkt_pod = blocking(move || rkt.has_pod(&uuid)).await?;
        let inserted = self.registry.insert(pod)?;
        let stored = self.registry.get(&uuid).ok_or(RegisterError::PodNotFound)?;
        if let Err(e) = self.persist(&stored).await {
            // Not durable, so not acknowledged: undo.
            match inserted {
                Inserted::Replaced(prev) => self.registry.restore(prev),
                Inserted::New => {
                    self.registry.remove(&uuid);
                }
            }
            return Err(e);
        }
        tracing::info!(pod = %uuid, netns = %describe(&stored.netns), uid = stored.registrant.uid, "pod registered");
        Ok(stored)
    }

    /// Watches the namespace `file` names, bounded in time.
    async fn acquire(&self, file: &NetnsFile) -> Result<Lease, RegisterError> {
        match tokio::time::timeout(ACQUIRE_TIMEOUT, self.watches.acquire(file)).await {
            Ok(Ok(lease)) => Ok(lease),
            Ok(Err(e)) => Err(RegisterError::BadNetns(format!(
                "cannot watch network namespace: {e}"
            ))),
            Err(_) => Err(RegisterError::BadNetns(format!(
                "cannot watch network namespace {}: no address dump within {ACQUIRE_TIMEOUT:?}",
                file.path().display()
            ))),
        }
    }

    /// `PUT /pods/{uuid}/{app}`
    pub async fn register_app(
        &self,
        uuid: &str,
        app: &str,
        body: &[u8],
    ) -> Result<(), RegisterError> {
        let uuid = parse_uuid(uuid)?;
        if !is_ac_name(app) {
            return Err(RegisterError::BadAppName(app.to_owned()));
        }
        let (image, echo) = ImageManifest::from_value(parse_json(body)?)?;
        let _guard = self.locks.lock(&uuid).await;
        let pod = self.registry.get(&uuid).ok_or(RegisterError::PodNotFound)?;
        let entry = pod
            .make_app(app, &image, &echo)
            .ok_or_else(|| RegisterError::AppNotInManifest(app.to_owned()))?;
        let updated = self
            .registry
            .update(&uuid, |p| {
                p.apps.insert(app.to_owned(), entry);
            })
            .ok_or(RegisterError::PodNotFound)?;
        if let Err(e) = self.persist(&updated).await {
            self.registry.restore(pod);
            return Err(e);
        }
        tracing::info!(pod = %uuid, app, "app registered");
        Ok(())
    }

    /// `DELETE /pods/{uuid}`
    pub async fn unregister(&self, uuid: &str) -> Result<(), RegisterError> {
        let uuid = parse_uuid(uuid)?;
        self.remove(&uuid, "unregistered").await
    }

    /// Removes a registration durably; dropping it lets go of its
    /// namespace once no request holds it any more.
    pub async fn remove(&self, uuid: &PodUuid, reason: &str) -> Result<(), RegisterError> {
        self.remove_if(uuid, reason, None).await
    }

    /// Like [`Pods::remove`], but only while the registration is still
    /// `expected` (when given).
    async fn remove_if(
        &self,
        uuid: &PodUuid,
        reason: &str,
        expected: Option<&Arc<Pod>>,
    ) -> Result<(), RegisterError> {
        let _guard = self.locks.lock(uuid).await;
        match (self.registry.get(uuid), expected) {
            (None, _) => return Err(RegisterError::PodNotFound),
            (Some(current), Some(expected)) if !Arc::ptr_eq(&current, expected) => return Ok(()),
            _ => {}
        }
        // Durable first: a crash after this must not resurrect the pod.
        if let Some(store) = self.store.clone() {
            let uuid = *uuid;
            blocking(move || store.remove(&uuid)).await??;
        }
        self.registry.remove(uuid);
        self.last_discovery.lock().remove(uuid);
        tracing::info!(pod = %uuid, reason, "pod removed");
        Ok(())
    }

    async fn persist(&self, pod: &Arc<Pod>) -> Result<(), RegisterError> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let pod = pod.clone();
        Ok(blocking(move || store.save(&pod)).await??)
    }
}

/// Runs blocking file I/O off the runtime's workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RegisterError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegisterError::Internal(e.to_string()))
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
        NetnsBinding::Known(l) => format!(
            "{} ({})",
            l.instance().path().display(),
            l.instance().cookie()
        ),
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
