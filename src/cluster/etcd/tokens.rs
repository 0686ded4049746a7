//! etcd auth tokens of one user, per member, shared by every client of
//! the process that has the same [`super::Access`] (an agent's publisher
//! and its trust-domain follower, `audit`'s readers). Each authentication
//! is a bcrypt password check in etcd; after a member restarts, or when a
//! fleet fails over to it, these checks are what the member spends its
//! time on, so a process asks for one per member at a time, and never
//! throws one away half done.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::task::JoinHandle;

use super::gateway::Attempt;

/// An authentication under way, on a task of its own.
pub(super) type Authentication = JoinHandle<Result<String, Attempt>>;

#[derive(Default)]
pub struct Tokens {
    members: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

#[derive(Default)]
struct Slot {
    token: Option<String>,
    pending: Option<Authentication>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(task) = self.pending.take() {
            task.abort();
        }
    }
}

impl Tokens {
    /// A token for `member`: the one known, unless it is `refused`; else
    /// the authentication under way, or one `start`ed now. Safe to give up
    /// on: the authentication goes on, and the next caller takes its
    /// result instead of asking for another.
    pub(super) async fn get(
        &self,
        member: &str,
        refused: Option<&str>,
        start: impl FnOnce() -> Authentication,
    ) -> Result<String, Attempt> {
        let slot = {
            let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
            members.entry(member.to_owned()).or_default().clone()
        };
        // One caller at a time per member: the others wait for its token.
        let mut slot = slot.lock().await;
        match &slot.token {
            Some(token) if Some(token.as_str()) != refused => return Ok(token.clone()),
            _ => slot.token = None,
        }
        let task = slot.pending.get_or_insert_with(start);
        let done = task.await;
        slot.pending = None;
        let token =
            done.unwrap_or_else(|e| Err(Attempt::Elsewhere(format!("authentication: {e}"))))?;
        slot.token = Some(token.clone());
        Ok(token)
    }
}
