//! Where log lines go: an in-memory batch that a background thread writes
//! to stderr. A request appends its access-log line under a short lock and
//! makes no syscall; the thread wakes once per batch (woken by the first
//! line into an empty buffer, then waits a few milliseconds for more), so a
//! busy agent writes many lines per `write(2)` and an idle one sleeps.

use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer thread lets a batch grow after its first line.
const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Beyond this many buffered bytes, lines are dropped (and counted) rather
/// than let a log flood exhaust memory.
const MAX_BUFFERED: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: u64,
    closed: bool,
}

/// The buffer log lines are appended to (opaque).
#[derive(Default)]
pub struct Shared {
    buffer: Mutex<Buffer>,
    wake: Condvar,
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

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Buffer> {
    shared.buffer.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_batches<W: Write>(shared: &Shared, mut out: W) {
    loop {
        let mut buffer = lock(shared);
        while buffer.bytes.is_empty() && !buffer.closed {
            buffer = shared.wake.wait(buffer).unwrap_or_else(|p| p.into_inner());
        }
        if !buffer.closed {
            // Let the batch fill up a little before writing it.
            drop(buffer);
            std::thread::sleep(BATCH_WINDOW);
            buffer = lock(shared);
        }
        let batch = std::mem::take(&mut buffer.bytes);
        let dropped = std::mem::take(&mut buffer.dropped);
        let closed = buffer.closed;
        drop(buffer);
        if dropped > 0 {
            let _ = writeln!(
                out,
                "rkt-mds: {dropped} log lines dropped (log writer overloaded)"
            );
        }
        let _ = out.write_all(&batch);
        let _ = out.flush();
        if closed {
            return;
        }
    }
}

impl Write for &Shared {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut buffer = lock(self);
        if buffer.bytes.len() + line.len() > MAX_BUFFERED {
            buffer.dropped += 1;
            return Ok(line.len());
        }
        let was_empty = buffer.bytes.is_empty();
        buffer.bytes.extend_from_slice(line);
        drop(buffer);
        // Only the first line of a batch wakes the thread.
        if was_empty {
            self.wake.notify_one();
        }
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
        lock(&self.shared).closed = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_in_order_and_the_guard_flushes() {
        let sink = Sink::default();
        let (writer, guard) = batch_writer(sink.clone());
        for i in 0..1000 {
            writer
                .make_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999], "line 999");
    }
}
