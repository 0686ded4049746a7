//! Where log lines go: each thread appends its lines to a buffer of its own
//! (an uncontended lock, no syscall), and a background thread collects
//! every buffer and writes them to stderr. The writer wakes once per batch
//! (woken by the first line a thread writes into an empty buffer, then it
//! waits 20 ms for more), so a busy agent writes many lines per
//! `write(2)`, no two workers contend for one buffer, and an idle agent
//! sleeps. Lines come out in time order (`log_merge`), so two requests of
//! one connection served by two threads are logged in the order they
//! happened.

use std::{
    io::{self, Write},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use parking_lot::{Condvar, Mutex};
use tracing_subscriber::fmt::MakeWriter;

use crate::per_thread::PerThread;

/// How long the writer thread lets a batch grow after its first line.
/// Each wake-up of the writer takes a CPU from a worker or a client for a
/// moment; at 2 ms (500 wake-ups a second under load) that cost the
/// loopback benchmark about 2 % of its throughput, at 20 ms nearly none.
/// A line reaches stderr at most this late; a clean stop flushes at once.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Beyond this many buffered bytes in one thread, lines are dropped (and
/// counted) rather than let a log flood exhaust memory.
const MAX_BUFFERED: usize = 4 * 1024 * 1024;

/// The buffers log lines are appended to (opaque).
#[derive(Default)]
pub struct Shared {
    buffers: PerThread<Vec<u8>>,
    /// Some thread has lines the writer has not collected yet.
    pending: AtomicBool,
    dropped: AtomicU64,
    closed: AtomicBool,
    wake: Mutex<()>,
    woken: Condvar,
}

/// The `MakeWriter` handed to tracing.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Flushes what is buffered and stops the thread when dropped.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A writer whose lines reach `out` through a batching thread.
pub fn batch_writer<W: Write + Send + 'static>(out: W) -> (BatchWriter, FlushGuard) {
    let shared = Arc::new(Shared::default());
    let worker = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_batches(&worker, out))
        .ok();
    (
        BatchWriter {
            shared: shared.clone(),
        },
        FlushGuard { shared, thread },
    )
}

fn write_batches<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    let mut merger = crate::log_merge::Merger::default();
    loop {
        {
            let mut guard = shared.wake.lock();
            while !shared.pending.load(Ordering::Acquire) && !shared.closed.load(Ordering::Acquire)
            {
                shared.woken.wait(&mut guard);
            }
        }
        // Let the batch fill up before writing it; a stop cuts this short.
        {
            let deadline = Instant::now() + BATCH_WINDOW;
            let mut guard = shared.wake.lock();
            while !shared.closed.load(Ordering::Acquire) {
                if shared.woken.wait_until(&mut guard, deadline).timed_out() {
                    break;
                }
            }
        }
        let closed = shared.closed.load(Ordering::Acquire);
        // Cleared before collecting: a line added meanwhile sets it again.
        shared.pending.store(false, Ordering::Release);
        // Lines stamped from now on wait for the next batch (`log_merge`).
        let cut = crate::log_format::timestamp();
        shared.buffers.for_each(|buffer| {
            merger.push(buffer);
            buffer.clear();
        });
        merger.drain((!closed).then_some(&cut[..]), &mut batch);
        if !merger.is_empty() {
            // Held back: make sure a batch comes for them.
            shared.pending.store(true, Ordering::Release);
        }
        let dropped = shared.dropped.swap(0, Ordering::AcqRel);
        if dropped > 0 {
            let _ = writeln!(
                out,
                "rkt-mds: {dropped} log lines dropped (log writer overloaded)"
            );
        }
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
        if closed {
            return;
        }
    }
}

impl Shared {
    /// Appends what `put` writes to this thread's buffer (dropped, and
    /// counted, when the buffer is full) and wakes the writer for the
    /// first line of a batch.
    fn append(&self, put: impl FnOnce(&mut Vec<u8>)) {
        let was_empty = self.buffers.with(|buffer| {
            let before = buffer.len();
            if before >= MAX_BUFFERED {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            put(buffer);
            if buffer.len() > MAX_BUFFERED {
                buffer.truncate(before);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            before == 0
        });
        // Only the first line of a thread's batch may wake the writer.
        if was_empty && !self.pending.swap(true, Ordering::AcqRel) {
            let _guard = self.wake.lock();
            self.woken.notify_one();
        }
    }
}

impl BatchWriter {
    /// Writes one whole line (with its newline) with `put`, straight into
    /// this thread's buffer: for the access log, which formats its own.
    pub fn append_line(&self, put: impl FnOnce(&mut Vec<u8>)) {
        self.shared.append(put);
    }
}

impl Write for &Shared {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.append(|buffer| buffer.extend_from_slice(line));
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = &'a Shared;

    fn make_writer(&'a self) -> Self::Writer {
        &self.shared
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        {
            let _guard = self.shared.wake.lock();
            self.shared.woken.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_format::capture::Capture;

    #[test]
    fn every_line_arrives_in_order_per_thread_and_the_guard_flushes() {
        let sink = Capture::default();
        let (writer, guard) = batch_writer(sink.clone());
        std::thread::scope(|s| {
            for t in 0..3 {
                let writer = writer.clone();
                s.spawn(move || {
                    for i in 0..1000 {
                        writer
                            .make_writer()
                            .write_all(format!("{t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                });
            }
        });
        drop(guard);
        let text = String::from_utf8(sink.bytes()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3000);
        for t in 0..3 {
            let mine: Vec<&str> = lines
                .iter()
                .filter(|l| l.starts_with(&format!("{t} ")))
                .copied()
                .collect();
            let want: Vec<String> = (0..1000).map(|i| format!("{t} line {i}")).collect();
            assert_eq!(mine, want);
        }
    }

    #[test]
    fn a_lone_line_is_written_without_more_traffic() {
        let sink = Capture::default();
        let (writer, guard) = batch_writer(sink.clone());
        writer.make_writer().write_all(b"alone\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.bytes().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the line never arrived"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.bytes(), b"alone\n");
        drop(guard);
    }
}
