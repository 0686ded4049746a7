//! What the publisher publishes, read from the agent's state: it only
//! reads (generation counters, views); nothing in the pods service or the
//! server calls into it.

use crate::{jwt::JwkSet, state::AppState};

/// The local truth the directory mirrors.
pub trait Source: Send + Sync + 'static {
    /// Changes whenever any pod's entry may have changed (registrations,
    /// addresses, liveness, the host's view).
    fn generation(&self) -> u64;

    /// The JWK Set that verifies this node's identity documents now.
    fn jwks(&self) -> JwkSet;

    /// Calls `f` with each pod's UUID and its entry (serialized as in
    /// `GET /pods`, never a token). May take a while: call it off the
    /// async workers.
    fn for_each_entry(&self, f: &mut dyn FnMut(&str, &[u8]));
}

impl Source for AppState {
    fn generation(&self) -> u64 {
        self.pods.generation()
    }

    fn jwks(&self) -> JwkSet {
        self.docs.keys.jwk_set(crate::jwt::now())
    }

    fn for_each_entry(&self, f: &mut dyn FnMut(&str, &[u8])) {
        let mut entry = Vec::with_capacity(1024);
        let mut uuid = String::with_capacity(36);
        for pod in self.pods.registry().snapshot() {
            entry.clear();
            uuid.clear();
            // A view always serializes (plain data); the UUID's Display
            // is its canonical form.
            if serde_json::to_writer(&mut entry, &self.pods.view(&pod)).is_ok()
                && std::fmt::Write::write_fmt(&mut uuid, format_args!("{}", pod.uuid)).is_ok()
            {
                f(&uuid, &entry);
            }
        }
    }
}
