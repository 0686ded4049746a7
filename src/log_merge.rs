//! One stream out of the log writer's per-thread buffers, in time order:
//! a connection's requests may be served by different worker threads, and
//! their access lines must still come out in the order they happened.
//!
//! Each buffer is split into records (a line that starts with a timestamp,
//! with any lines after it that have none). Each batch, records stamped
//! before the moment collection began are written in timestamp order (a
//! stable sort: one thread's records keep their order); later ones wait
//! for the next batch, so a line appended to a buffer already visited can
//! never be overtaken by a later line from a buffer visited after it.

/// Bytes of a timestamp (`YYYY-MM-DDTHH:MM:SS.uuuuuuZ`).
const STAMP: usize = 27;
/// How a JSON line (tracing-subscriber's) begins.
const JSON_START: &[u8] = b"{\"timestamp\":\"";

/// A record: its timestamp (`None` for a line that has none) and where its
/// bytes are in the arena. No allocation per line: the writer thread sees
/// every access line.
struct Record {
    key: Option<[u8; STAMP]>,
    start: usize,
    end: usize,
}

/// Records collected but not written yet.
#[derive(Default)]
pub struct Merger {
    arena: Vec<u8>,
    pending: Vec<Record>,
}

/// The timestamp a log line starts with, if any.
fn stamp(line: &[u8]) -> Option<[u8; STAMP]> {
    let rest = line.strip_prefix(JSON_START).unwrap_or(line);
    let stamp: [u8; STAMP] = rest.get(..STAMP)?.try_into().ok()?;
    (stamp[0].is_ascii_digit() && stamp[4] == b'-' && stamp[10] == b'T').then_some(stamp)
}

impl Merger {
    /// Adds one thread's buffer (its lines in their order).
    pub fn push(&mut self, buffer: &[u8]) {
        let base = self.arena.len();
        self.arena.extend_from_slice(buffer);
        let mut at = base;
        let mut first = true;
        for line in buffer.split_inclusive(|b| *b == b'\n') {
            let (start, end) = (at, at + line.len());
            at = end;
            match stamp(line) {
                Some(key) => self.pending.push(Record {
                    key: Some(key),
                    start,
                    end,
                }),
                // A continuation of this buffer's previous record (its
                // bytes follow it in the arena).
                None if !first => {
                    if let Some(last) = self.pending.last_mut() {
                        last.end = end;
                    }
                }
                None => self.pending.push(Record {
                    key: None,
                    start,
                    end,
                }),
            }
            first = false;
        }
    }

    /// Appends to `out`, in time order, every record stamped before `cut`
    /// (all of them when `cut` is `None`), and keeps the others.
    pub fn drain(&mut self, cut: Option<&[u8]>, out: &mut Vec<u8>) {
        self.pending.sort_by_key(|r| r.key);
        let ready = match cut {
            None => self.pending.len(),
            Some(cut) => self
                .pending
                .partition_point(|r| r.key.is_none_or(|k| k.as_slice() < cut)),
        };
        for r in &self.pending[..ready] {
            out.extend_from_slice(&self.arena[r.start..r.end]);
        }
        // What waits is copied to the front of a fresh arena.
        let mut arena = Vec::new();
        let mut kept = Vec::with_capacity(self.pending.len() - ready);
        for r in &self.pending[ready..] {
            let start = arena.len();
            arena.extend_from_slice(&self.arena[r.start..r.end]);
            kept.push(Record {
                key: r.key,
                start,
                end: arena.len(),
            });
        }
        if kept.is_empty() {
            // Keep the allocation for the next batch.
            self.arena.clear();
        } else {
            self.arena = arena;
        }
        self.pending = kept;
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(time: &str, text: &str) -> String {
        format!("2026-12-03T09:00:{time}Z  INFO access: {text}\n")
    }

    #[test]
    fn lines_of_two_threads_come_out_in_time_order_and_later_ones_wait() {
        let mut m = Merger::default();
        // Thread B's buffer is visited first; thread A's line is earlier.
        m.push(line("00.000002", "request 2").as_bytes());
        m.push(format!("{}  second line of a\n", line("00.000001", "request 1")).as_bytes());
        m.push(line("00.000009", "after the cut").as_bytes());
        let mut out = Vec::new();
        m.drain(Some(b"2026-12-03T09:00:00.000005Z"), &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].ends_with("request 1"));
        assert_eq!(lines[1], "  second line of a");
        assert!(lines[2].ends_with("request 2"));
        assert!(!m.is_empty());
        let mut rest = Vec::new();
        m.drain(None, &mut rest);
        assert!(String::from_utf8(rest).unwrap().contains("after the cut"));
        // JSON lines and lines without a time.
        let mut m = Merger::default();
        m.push(b"{\"timestamp\":\"2026-12-03T09:00:00.000002Z\",\"message\":\"b\"}\n");
        m.push(b"{\"timestamp\":\"2026-12-03T09:00:00.000001Z\",\"message\":\"a\"}\n");
        m.push(b"no time here\n");
        let mut out = Vec::new();
        m.drain(Some(b"2026-12-03T09:00:01.000000Z"), &mut out);
        let text = String::from_utf8(out).unwrap();
        let order: Vec<&str> = text.lines().collect();
        assert_eq!(order[0], "no time here");
        assert!(
            order[1].contains("\"a\"") && order[2].contains("\"b\""),
            "{text}"
        );
    }
}
