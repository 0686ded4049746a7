//! The pod store: registrations by UUID, by token digest and by network
//! namespace, each with its response bodies computed once at registration
//! so that a GET is a lookup. The only place that mutates registrations.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use netns::{Lease, NetnsCookie};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::appc::{self, ImageManifest, PodManifest, PodUuid};

/// SHA-256 of a token: the only form in which tokens are kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 32]);

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not even the digest goes to logs.
        f.write_str("TokenDigest(..)")
    }
}

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }
}

/// Where a pod's network namespace stands.
#[derive(Clone, Debug)]
pub enum NetnsBinding {
    /// Bound to one namespace instance, for good: the lease says whether
    /// it is still live. Dropping the last registration that holds it lets
    /// the namespace go.
    Known(Arc<Lease>),
    /// The pod shares the host's network: identified by token only.
    HostNetwork,
    /// Not known yet: rkt writes `<dir>/pods/run/<uuid>/netns` after it
    /// registers; discovery retries.
    Pending,
}

/// Who registered a pod (registration socket peer credentials).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registrant {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

/// Precomputed answers for one set of annotations.
#[derive(Clone, Debug, Default)]
pub struct AnnotationBodies {
    /// The JSON array (or `null`).
    pub list: Bytes,
    /// Each value by name.
    pub values: HashMap<String, Bytes>,
}

impl AnnotationBodies {
    fn new(list: Option<&appc::Annotations>) -> Self {
        let json = list.map_or(serde_json::Value::Null, appc::annotations_json);
        Self {
            list: Bytes::from(json.to_string()),
            values: list
                .into_iter()
                .flatten()
                .map(|(n, v)| (n.clone(), Bytes::from(v.clone())))
                .collect(),
        }
    }
}

/// A registered app: the pod manifest's entry plus its image manifest.
#[derive(Clone, Debug)]
pub struct App {
    /// The image manifest, serialized once (also what is persisted).
    pub image_manifest: Bytes,
    pub image_id: Bytes,
    pub annotations: AnnotationBodies,
}

/// One registration.
#[derive(Clone, Debug)]
pub struct Pod {
    pub uuid: PodUuid,
    pub token: TokenDigest,
    pub manifest: Arc<PodManifest>,
    pub uuid_body: Bytes,
    /// The pod manifest as echoed, serialized once (also what is persisted).
    pub manifest_body: Bytes,
    pub annotations: AnnotationBodies,
    pub apps: BTreeMap<String, App>,
    pub netns: NetnsBinding,
    pub registered_at: u64,
    pub registrant: Registrant,
    /// rkt's pod directory existed when the pod registered: when it
    /// leaves `pods/run/`, the pod is over.
    pub rkt_pod: bool,
}

impl Pod {
    pub fn new(
        uuid: PodUuid,
        token: TokenDigest,
        manifest: PodManifest,
        echo: &serde_json::Value,
        netns: NetnsBinding,
        registered_at: u64,
        registrant: Registrant,
    ) -> Self {
        Self {
            uuid,
            token,
            uuid_body: Bytes::from(uuid.to_string()),
            manifest_body: Bytes::from(echo.to_string()),
            annotations: AnnotationBodies::new(manifest.annotations.as_ref()),
            manifest: Arc::new(manifest),
            apps: BTreeMap::new(),
            netns,
            registered_at,
            registrant,
            rkt_pod: false,
        }
    }

    /// Builds the app entry for `name` from its image manifest. `None` when
    /// the pod manifest has no such app.
    pub fn make_app(
        &self,
        name: &str,
        image: &ImageManifest,
        echo: &serde_json::Value,
    ) -> Option<App> {
        let entry = self.manifest.app(name)?;
        let merged = appc::merge_annotations(&image.annotations, &entry.annotations);
        Some(App {
            image_manifest: Bytes::from(echo.to_string()),
            image_id: Bytes::from(entry.image_id.clone()),
            annotations: AnnotationBodies::new(Some(&merged)),
        })
    }

    /// The namespace instance this pod is bound to, if any.
    pub fn netns_cookie(&self) -> Option<NetnsCookie> {
        self.lease().map(|l| l.cookie())
    }

    pub fn lease(&self) -> Option<&Lease> {
        match &self.netns {
            NetnsBinding::Known(l) => Some(l),
            _ => None,
        }
    }

    /// Bound to a namespace instance that is no longer live.
    pub fn netns_gone(&self) -> bool {
        self.lease().is_some_and(|l| !l.is_live())
    }
}

/// Why a registration could not be stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("pod {0} is already registered with another token")]
    TokenMismatch(PodUuid),
    #[error("this token already belongs to another pod")]
    TokenInUse,
    #[error("pod {0} is registered with another network namespace")]
    NetnsMismatch(PodUuid),
}

#[derive(Default)]
struct Inner {
    by_uuid: HashMap<PodUuid, Arc<Pod>>,
    by_token: HashMap<TokenDigest, PodUuid>,
    by_netns: HashMap<NetnsCookie, Vec<PodUuid>>,
    /// The instances whose namespace file is (dev, inode), while a pod is
    /// bound to them: how a Unix socket peer, known by the namespace file of
    /// its process, finds its pod without a scan of every pod. More than
    /// one when a dead instance's inode has been given to a new one.
    by_file: HashMap<(u64, u64), Vec<NetnsCookie>>,
}

/// All registrations. Reads share a lock held for a hash lookup.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Inner>,
    /// Bumped by every change (what a cached identity depends on).
    generation: AtomicU64,
}

/// What [`Registry::insert`] did.
#[derive(Debug)]
pub enum Inserted {
    New,
    /// Same UUID and token: the registration was refreshed in place; the
    /// previous one is returned.
    Replaced(Arc<Pod>),
}

impl Registry {
    pub fn by_token(&self, token: &TokenDigest) -> Option<Arc<Pod>> {
        let inner = self.read();
        let uuid = inner.by_token.get(token)?;
        inner.by_uuid.get(uuid).cloned()
    }

    pub fn get(&self, uuid: &PodUuid) -> Option<Arc<Pod>> {
        self.read().by_uuid.get(uuid).cloned()
    }

    /// UUIDs of the pods bound to namespace instance `cookie`.
    pub fn pods_in(&self, cookie: NetnsCookie) -> Vec<PodUuid> {
        self.read()
            .by_netns
            .get(&cookie)
            .cloned()
            .unwrap_or_default()
    }

    /// UUIDs of the pods bound to the namespace instance whose file is
    /// `(dev, ino)`.
    pub fn pods_in_file(&self, dev: u64, ino: u64) -> Vec<PodUuid> {
        let inner = self.read();
        inner
            .by_file
            .get(&(dev, ino))
            .into_iter()
            .flatten()
            .filter_map(|c| inner.by_netns.get(c))
            .flatten()
            .copied()
            .collect()
    }

    /// Every registration, sorted by UUID (for listings).
    pub fn all(&self) -> Vec<Arc<Pod>> {
        let mut pods = self.snapshot();
        pods.sort_by_key(|p| p.uuid);
        pods
    }

    /// Every registration, in no particular order (for background sweeps).
    pub fn snapshot(&self) -> Vec<Arc<Pod>> {
        self.read().by_uuid.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().by_uuid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `pod`, or refreshes it when the same UUID is registered with the
    /// same token (keeping registered apps the new manifest still has).
    pub fn insert(&self, mut pod: Pod) -> Result<Inserted, RegistryError> {
        let mut inner = self.write();
        if let Some(owner) = inner.by_token.get(&pod.token) {
            if *owner != pod.uuid {
                return Err(RegistryError::TokenInUse);
            }
        }
        let previous = inner.by_uuid.get(&pod.uuid).cloned();
        if let Some(prev) = &previous {
            if prev.token != pod.token {
                return Err(RegistryError::TokenMismatch(pod.uuid));
            }
            // A binding is for good: a pod never moves to another
            // instance, even when its own has died.
            if prev.netns_cookie().is_some()
                && pod.netns_cookie().is_some()
                && prev.netns_cookie() != pod.netns_cookie()
            {
                return Err(RegistryError::NetnsMismatch(pod.uuid));
            }
            if matches!(pod.netns, NetnsBinding::Pending) {
                pod.netns = prev.netns.clone();
            }
            for (name, app) in &prev.apps {
                if pod.manifest.app(name).is_some() {
                    pod.apps.insert(name.clone(), app.clone());
                }
            }
            unlink_netns(&mut inner, prev);
        }
        inner.by_token.insert(pod.token, pod.uuid);
        link_netns(&mut inner, &pod);
        inner.by_uuid.insert(pod.uuid, Arc::new(pod));
        Ok(match previous {
            Some(prev) => Inserted::Replaced(prev),
            None => Inserted::New,
        })
    }

    /// Replaces the registration of `uuid` with `f(old)`; returns the new
    /// one, or `None` when `uuid` is not registered.
    pub fn update(&self, uuid: &PodUuid, f: impl FnOnce(&mut Pod)) -> Option<Arc<Pod>> {
        let mut inner = self.write();
        let old = inner.by_uuid.get(uuid)?.clone();
        let mut pod = (*old).clone();
        f(&mut pod);
        unlink_netns(&mut inner, &old);
        link_netns(&mut inner, &pod);
        let pod = Arc::new(pod);
        inner.by_uuid.insert(*uuid, pod.clone());
        Some(pod)
    }

    /// Puts back a registration exactly as it was (undoing a change that
    /// could not be made durable).
    pub fn restore(&self, pod: Arc<Pod>) {
        let mut inner = self.write();
        if let Some(current) = inner.by_uuid.remove(&pod.uuid) {
            inner.by_token.remove(&current.token);
            unlink_netns(&mut inner, &current);
        }
        inner.by_token.insert(pod.token, pod.uuid);
        link_netns(&mut inner, &pod);
        inner.by_uuid.insert(pod.uuid, pod);
    }

    pub fn remove(&self, uuid: &PodUuid) -> Option<Arc<Pod>> {
        let mut inner = self.write();
        let pod = inner.by_uuid.remove(uuid)?;
        inner.by_token.remove(&pod.token);
        unlink_netns(&mut inner, &pod);
        Some(pod)
    }

    fn read(&self) -> parking_lot::RwLockReadGuard<'_, Inner> {
        self.inner.read()
    }

    /// Changes whenever any registration does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn write(&self) -> WriteGuard<'_> {
        WriteGuard {
            inner: self.inner.write(),
            generation: &self.generation,
        }
    }
}

/// The registry locked for a change. The generation moves when the change
/// is complete and before readers can see it (the lock is still held), so
/// whoever read the old number may have read the old state, and whoever
/// reads the new number reads the new state.
struct WriteGuard<'a> {
    inner: parking_lot::RwLockWriteGuard<'a, Inner>,
    generation: &'a AtomicU64,
}

impl std::ops::Deref for WriteGuard<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::ops::DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

fn link_netns(inner: &mut Inner, pod: &Pod) {
    if let Some(lease) = pod.lease() {
        let cookie = lease.cookie();
        let file = (lease.instance().dev(), lease.instance().ino());
        let cookies = inner.by_file.entry(file).or_default();
        if !cookies.contains(&cookie) {
            cookies.push(cookie);
        }
        let pods = inner.by_netns.entry(cookie).or_default();
        if !pods.contains(&pod.uuid) {
            pods.push(pod.uuid);
        }
    }
}

fn unlink_netns(inner: &mut Inner, pod: &Pod) {
    if let Some(lease) = pod.lease() {
        let cookie = lease.cookie();
        if let Some(pods) = inner.by_netns.get_mut(&cookie) {
            pods.retain(|u| *u != pod.uuid);
            if pods.is_empty() {
                inner.by_netns.remove(&cookie);
                let file = (lease.instance().dev(), lease.instance().ino());
                if let Some(cookies) = inner.by_file.get_mut(&file) {
                    cookies.retain(|c| *c != cookie);
                    if cookies.is_empty() {
                        inner.by_file.remove(&file);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uuid: &str, token: &str) -> Pod {
        let (m, echo) = PodManifest::from_value(json!({
            "acKind": "PodManifest", "acVersion": "0.8.11",
            "apps": [{"name": "a", "image": {"id": "sha512-1"}}]
        }))
        .unwrap();
        Pod::new(
            PodUuid::parse(uuid).unwrap(),
            TokenDigest::of(token),
            m,
            &echo,
            NetnsBinding::HostNetwork,
            0,
            Registrant::default(),
        )
    }

    const U1: &str = "de305d54-75b4-431b-adb2-eb6b9e546013";
    const U2: &str = "fe305d54-75b4-431b-adb2-eb6b9e546013";

    #[test]
    fn tokens_bind_to_one_pod() {
        let r = Registry::default();
        assert!(matches!(r.insert(pod(U1, "t1")), Ok(Inserted::New)));
        assert!(matches!(r.insert(pod(U1, "t1")), Ok(Inserted::Replaced(_))));
        assert_eq!(
            r.insert(pod(U1, "t2")).unwrap_err(),
            RegistryError::TokenMismatch(PodUuid::parse(U1).unwrap())
        );
        assert!(r.by_token(&TokenDigest::of("t2")).is_none());
        assert_eq!(
            r.insert(pod(U2, "t1")).unwrap_err(),
            RegistryError::TokenInUse
        );
        assert_eq!(r.len(), 1);
        assert!(r.remove(&PodUuid::parse(U1).unwrap()).is_some());
        assert!(r.by_token(&TokenDigest::of("t1")).is_none());
    }

    #[test]
    fn bodies_are_precomputed() {
        let p = pod(U1, "t");
        assert_eq!(&p.uuid_body[..], U1.as_bytes());
        assert_eq!(&p.annotations.list[..], b"null");
        let v: serde_json::Value = serde_json::from_slice(&p.manifest_body).unwrap();
        assert_eq!(v["annotations"], serde_json::Value::Null);
    }
}
