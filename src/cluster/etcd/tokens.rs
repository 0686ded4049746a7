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
    time::Duration,
};

use tokio::{task::JoinHandle, time::Instant};

use super::gateway::Attempt;

/// An authentication under way, on a task of its own.
pub(super) type Authentication = JoinHandle<Result<String, Attempt>>;

/// A token, and whether it was made for this call or the callers waiting
/// with it (`new`), rather than known from before: a member that refuses
/// a new token is restarting, not expiring old ones.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Token {
    pub value: String,
    pub new: bool,
}

#[derive(Default)]
pub struct Tokens {
    members: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

#[derive(Default)]
struct Slot {
    token: Option<String>,
    /// The authentication under way and when it started.
    pending: Option<(Instant, Authentication)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((_, task)) = self.pending.take() {
            task.abort();
        }
    }
}

impl Tokens {
    /// A token for `member`: the one known, unless it is `refused`; else
    /// the authentication under way, or one `start`ed now. Safe to give up
    /// on: the authentication goes on, and the next caller takes its
    /// result instead of asking for another, unless it was left uncollected
    /// for longer than `fresh_for` (its answer, token or error, is then
    /// stale: another is started).
    pub(super) async fn get(
        &self,
        member: &str,
        refused: Option<&str>,
        fresh_for: Duration,
        start: impl FnOnce() -> Authentication,
    ) -> Result<Token, Attempt> {
        let slot = {
            let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
            members.entry(member.to_owned()).or_default().clone()
        };
        // One caller at a time per member: the others wait for its token.
        let mut slot = slot.lock().await;
        match &slot.token {
            Some(token) if Some(token.as_str()) != refused => {
                return Ok(Token {
                    value: token.clone(),
                    new: false,
                });
            }
            _ => slot.token = None,
        }
        if slot
            .pending
            .as_ref()
            .is_some_and(|(started, _)| started.elapsed() > fresh_for)
        {
            if let Some((_, task)) = slot.pending.take() {
                task.abort();
            }
        }
        let (_, task) = slot
            .pending
            .get_or_insert_with(|| (Instant::now(), start()));
        let done = task.await;
        slot.pending = None;
        let value =
            done.unwrap_or_else(|e| Err(Attempt::Elsewhere(format!("authentication: {e}"))))?;
        slot.token = Some(value.clone());
        Ok(Token { value, new: true })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const FRESH: Duration = Duration::from_secs(30);

    fn gives(token: &'static str) -> impl FnOnce() -> Authentication {
        move || tokio::spawn(async move { Ok(token.to_owned()) })
    }

    fn never() -> Authentication {
        panic!("a second authentication")
    }

    fn value(got: Result<Token, Attempt>) -> Option<(String, bool)> {
        got.ok().map(|t| (t.value, t.new))
    }

    #[tokio::test]
    async fn a_known_token_is_shared_until_it_is_refused() {
        let tokens = Tokens::default();
        let got = tokens.get("m", None, FRESH, gives("t1")).await;
        assert_eq!(value(got), Some(("t1".into(), true)));
        let got = tokens.get("m", None, FRESH, never).await;
        assert_eq!(value(got), Some(("t1".into(), false)));
        // A refusal of an older token leaves the newer one.
        let got = tokens.get("m", Some("t0"), FRESH, never).await;
        assert_eq!(value(got), Some(("t1".into(), false)));
        let got = tokens.get("m", Some("t1"), FRESH, gives("t2")).await;
        assert_eq!(value(got), Some(("t2".into(), true)));
    }

    #[tokio::test]
    async fn two_refusals_at_once_cost_one_authentication() {
        let tokens = Tokens::default();
        tokens.get("m", None, FRESH, gives("t1")).await.ok();
        let asked = Arc::new(AtomicUsize::new(0));
        let slow = |asked: Arc<AtomicUsize>| {
            move || {
                tokio::spawn(async move {
                    let n = asked.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(format!("t{}", n + 2))
                })
            }
        };
        let (a, b) = tokio::join!(
            tokens.get("m", Some("t1"), FRESH, slow(asked.clone())),
            tokens.get("m", Some("t1"), FRESH, slow(asked.clone()))
        );
        assert_eq!(value(a), Some(("t2".into(), true)));
        assert_eq!(value(b), Some(("t2".into(), false)));
        assert_eq!(asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_its_authentication_to_the_next() {
        let tokens = Tokens::default();
        let slow = || {
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok("t1".to_owned())
            })
        };
        let gave_up = tokio::time::timeout(
            Duration::from_millis(20),
            tokens.get("m", None, FRESH, slow),
        )
        .await;
        assert!(gave_up.is_err());
        let got = tokens.get("m", None, FRESH, never).await;
        assert_eq!(value(got), Some(("t1".into(), true)));
    }

    #[tokio::test]
    async fn a_panicked_authentication_is_an_error_once() {
        let tokens = Tokens::default();
        let got = tokens
            .get("m", None, FRESH, || tokio::spawn(async { panic!("boom") }))
            .await;
        assert!(matches!(got, Err(Attempt::Elsewhere(_))));
        let got = tokens.get("m", None, FRESH, gives("t1")).await;
        assert_eq!(value(got), Some(("t1".into(), true)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_left_uncollected_too_long_is_not_taken() {
        let tokens = Tokens::default();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(20),
            tokens.get("m", None, FRESH, || {
                tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(Attempt::Elsewhere("connect: refused".into()))
                })
            }),
        )
        .await;
        assert!(gave_up.is_err());
        // Within the bound the old answer is taken, error or not...
        tokio::time::advance(Duration::from_secs(1)).await;
        let got = tokens.get("m", None, FRESH, never).await;
        assert!(matches!(got, Err(Attempt::Elsewhere(_))));
        // ...beyond it, another authentication is made.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(20),
            tokens.get("m", None, FRESH, || {
                tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok("old".to_owned())
                })
            }),
        )
        .await;
        assert!(gave_up.is_err());
        tokio::time::advance(FRESH + Duration::from_secs(1)).await;
        let got = tokens.get("m", None, FRESH, gives("t2")).await;
        assert_eq!(value(got), Some(("t2".into(), true)));
    }
}
