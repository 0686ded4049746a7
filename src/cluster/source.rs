//! What the publisher publishes, read from the agent's state: it only
//! reads (generation counters, views); nothing in the pods service or the
//! server calls into it.

use std::{
    collections::{hash_map::Entry, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Weak,
    },
};

use parking_lot::Mutex;

use crate::{
    appc::PodUuid,
    jwt::JwkSet,
    registry::{NetnsBinding, Pod},
    state::AppState,
};

/// The local truth the directory mirrors.
pub trait Source: Send + Sync + 'static {
    /// Changes whenever any pod's entry may have changed (registrations,
    /// addresses, liveness, the host's view).
    fn generation(&self) -> u64;

    /// The JWK Set that verifies this node's identity documents now.
    fn jwks(&self) -> JwkSet;

    /// This node's X.509 authorities (CA certificates, base64 DER).
    fn x509_authorities(&self) -> Vec<String> {
        Vec::new()
    }

    /// Calls `f` with each pod's UUID and its entry (serialized as in
    /// `GET /pods`, never a token). May take a while: call it off the
    /// async workers.
    fn for_each_entry(&self, f: &mut dyn FnMut(&str, &Arc<[u8]>));
}

/// The agent's state as a [`Source`], remembering each pod's entry: a
/// pod's view depends only on its registration and, when it is bound to a
/// namespace, on the namespace watchers (`Pods::generation`'s contract),
/// so while neither moved its entry is the one computed before, and the
/// publisher sees the very same buffer: no view, no serialization, no
/// comparison. A watcher event (an address, a route, a neighbour anywhere
/// on the host) recomputes the entries of the pods bound to namespaces,
/// and only while there are some does it count as a change at all.
pub struct StateSource {
    state: Arc<AppState>,
    cache: Mutex<Cache>,
    /// Whether the last pass saw a pod bound to a namespace.
    any_bound: AtomicBool,
}

#[derive(Default)]
struct Cache {
    /// The watchers' generation the entries were computed at.
    watches: Option<u64>,
    pass: u64,
    entries: HashMap<PodUuid, Cached>,
}

struct Cached {
    /// The registration the entry was computed from. Weak: a removed pod
    /// (and its namespace lease) is freed even while publishing stalls;
    /// the allocation stays, so its address cannot be reused by another.
    pod: Weak<Pod>,
    uuid: Box<str>,
    entry: Arc<[u8]>,
    /// The last pass that saw the pod.
    pass: u64,
}

impl StateSource {
    pub fn new(state: Arc<AppState>) -> Self {
        Self {
            state,
            cache: Mutex::default(),
            any_bound: AtomicBool::new(true),
        }
    }
}

/// The pod's entry, serialized; `None` never happens (a view is plain
/// data).
fn entry_of(state: &AppState, pod: &Pod, buffer: &mut Vec<u8>) -> Option<Arc<[u8]>> {
    buffer.clear();
    serde_json::to_writer(&mut *buffer, &state.pods.view(pod)).ok()?;
    Some(Arc::from(buffer.as_slice()))
}

impl Source for StateSource {
    fn generation(&self) -> u64 {
        let pods = &self.state.pods;
        let registry = pods.registry().generation() << 32;
        if self.any_bound.load(Ordering::Acquire) {
            registry ^ pods.watches().generation()
        } else {
            registry
        }
    }

    fn jwks(&self) -> JwkSet {
        self.state.docs.keys.jwk_set(crate::jwt::now())
    }

    fn x509_authorities(&self) -> Vec<String> {
        use base64::{engine::general_purpose::STANDARD, Engine};
        self.state
            .svids
            .authority
            .authorities()
            .iter()
            .map(|der| STANDARD.encode(der))
            .collect()
    }

    fn for_each_entry(&self, f: &mut dyn FnMut(&str, &Arc<[u8]>)) {
        let state = &*self.state;
        let mut guard = self.cache.lock();
        let cache = &mut *guard;
        // Read before the views: a change during the pass moves it, and
        // the next pass recomputes.
        let watches = state.pods.watches().generation();
        let valid = cache.watches == Some(watches);
        cache.pass += 1;
        let pass = cache.pass;
        let mut any_bound = false;
        let mut buffer = Vec::with_capacity(1024);
        for pod in state.pods.registry().snapshot() {
            // A pod without a namespace has nothing a watcher could change.
            let bound = !matches!(pod.netns, NetnsBinding::HostNetwork | NetnsBinding::Pending);
            any_bound |= bound;
            let cached = match cache.entries.entry(pod.uuid) {
                Entry::Occupied(o) => {
                    let c = o.into_mut();
                    if !((valid || !bound) && std::ptr::eq(c.pod.as_ptr(), Arc::as_ptr(&pod))) {
                        let Some(entry) = entry_of(state, &pod, &mut buffer) else {
                            continue;
                        };
                        c.entry = entry;
                        c.pod = Arc::downgrade(&pod);
                    }
                    c
                }
                Entry::Vacant(v) => {
                    let Some(entry) = entry_of(state, &pod, &mut buffer) else {
                        continue;
                    };
                    v.insert(Cached {
                        uuid: pod.uuid.to_string().into_boxed_str(),
                        pod: Arc::downgrade(&pod),
                        entry,
                        pass,
                    })
                }
            };
            cached.pass = pass;
            f(&cached.uuid, &cached.entry);
        }
        cache.entries.retain(|_, c| c.pass == pass);
        cache.watches = Some(watches);
        self.any_bound.store(any_bound, Ordering::Release);
    }
}
