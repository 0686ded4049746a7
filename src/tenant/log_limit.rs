//! Refusal `warn` lines, bounded: the first line of each (pod or source,
//! reason), then at most one summary per window with the count of the
//! refusals it stood for. A tenant cannot flood the host's journal; the
//! access log (one line per request, at `info`) is not limited here.

use std::{
    collections::HashMap,
    fmt,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use super::SourceKey;
use crate::appc::PodUuid;

/// How long one line stands for its successors.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Beyond this many distinct (subject, reason) pairs in one window, the
/// rest are only counted together.
const MAX_SUBJECTS: usize = 10_000;

/// Whom a refusal concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    Pod(PodUuid),
    Source(SourceKey),
    /// The agent as a whole (accept errors).
    Agent,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod(u) => write!(f, "pod {u}"),
            Self::Source(s) => write!(f, "source {s}"),
            Self::Agent => f.write_str("the agent"),
        }
    }
}

struct Window {
    started: Instant,
    suppressed: u64,
}

#[derive(Default)]
struct State {
    windows: HashMap<(Subject, &'static str), Window>,
    /// Refusals not logged because the table was full.
    overflow: u64,
}

#[derive(Default)]
pub struct LogLimiter {
    state: Mutex<State>,
}

impl LogLimiter {
    /// Whether this refusal gets its own line (the first of its window).
    pub fn first(&self, subject: Subject, reason: &'static str) -> bool {
        self.first_at(subject, reason, Instant::now())
    }

    fn first_at(&self, subject: Subject, reason: &'static str, now: Instant) -> bool {
        let mut state = self.state.lock();
        if let Some(w) = state.windows.get_mut(&(subject, reason)) {
            if now.duration_since(w.started) < WINDOW {
                w.suppressed += 1;
                return false;
            }
        }
        if state.windows.len() >= MAX_SUBJECTS && !state.windows.contains_key(&(subject, reason)) {
            state.overflow += 1;
            return false;
        }
        state.windows.insert(
            (subject, reason),
            Window {
                started: now,
                suppressed: 0,
            },
        );
        true
    }

    /// Closes the windows that have run out: one summary line for each that
    /// stood for suppressed refusals. Call it about once a second.
    pub fn flush(&self) {
        for (subject, reason, n) in self.expired(Instant::now()) {
            match subject {
                Subject::Agent => {
                    tracing::warn!(
                        reason,
                        count = n,
                        "{n} more refusals like the last in the past 10 s"
                    )
                }
                _ => {
                    tracing::warn!(subject = %subject, reason, count = n, "{n} more refusals like the last in the past 10 s")
                }
            }
        }
    }

    fn expired(&self, now: Instant) -> Vec<(Subject, &'static str, u64)> {
        let mut state = self.state.lock();
        let mut out = Vec::new();
        state.windows.retain(|(subject, reason), w| {
            if now.duration_since(w.started) < WINDOW {
                return true;
            }
            if w.suppressed > 0 {
                out.push((*subject, *reason, w.suppressed));
            }
            false
        });
        let overflow = std::mem::take(&mut state.overflow);
        if overflow > 0 {
            out.push((Subject::Agent, "too-many-refusing-subjects", overflow));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_then_one_summary() {
        let l = LogLimiter::default();
        let pod = Subject::Pod(PodUuid::parse("de305d54-75b4-431b-adb2-eb6b9e546013").unwrap());
        let t0 = Instant::now();
        assert!(l.first_at(pod, "rate-limit", t0));
        for i in 1..=405 {
            assert!(!l.first_at(pod, "rate-limit", t0 + Duration::from_millis(i * 10)));
        }
        // Another reason, another subject: their own first lines.
        assert!(l.first_at(pod, "not-in-netns", t0));
        let src = Subject::Source(SourceKey::of("198.18.0.2".parse().unwrap()));
        assert!(l.first_at(src, "rate-limit", t0));
        assert!(l.expired(t0 + Duration::from_secs(5)).is_empty());
        let summary = l.expired(t0 + WINDOW);
        assert_eq!(summary, vec![(pod, "rate-limit", 405)]);
        // The next refusal starts a new window with a line of its own.
        assert!(l.first_at(pod, "rate-limit", t0 + WINDOW + Duration::from_millis(1)));
    }
}
