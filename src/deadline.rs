//! Connection deadlines that hyper does not offer together: a request head
//! must arrive within the header timeout of its first byte (or of the
//! accept), and an idle keep-alive connection is closed after the idle
//! timeout. (hyper's own `header_read_timeout` starts as soon as it waits
//! for a head, so it would also cut idle keep-alive connections short.)
//!
//! Cheap on the request path: a phase change stores a timestamp in one
//! atomic; the connection's timer is not re-armed per request. It fires at
//! the deadline it was armed with, looks at the current phase and either
//! ends the connection or re-arms itself for the real deadline, so it
//! moves at most once per timeout period. Only a change that brings the
//! deadline closer (an idle connection starting a head) re-arms it at once.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

const HEAD: u64 = 0;
const BUSY: u64 = 1;
const IDLE: u64 = 2;
const PHASE_BITS: u64 = 2;

/// Where a connection is, and since when: waiting for a head, serving a
/// request, or idle between requests. The service moves it; the I/O
/// wrapper enforces it. One atomic: the low two bits are the phase, the
/// rest microseconds since the connection was accepted.
#[derive(Debug)]
pub struct Phase {
    state: AtomicU64,
    origin: Instant,
}

impl Phase {
    fn new(origin: Instant) -> Self {
        Self {
            state: AtomicU64::new(HEAD),
            origin,
        }
    }

    fn set(&self, phase: u64, at: Instant) {
        let micros = at.saturating_duration_since(self.origin).as_micros() as u64;
        self.state
            .store(micros << PHASE_BITS | phase, Ordering::Release);
    }

    fn load(&self) -> (u64, Instant) {
        let v = self.state.load(Ordering::Acquire);
        (
            v & ((1 << PHASE_BITS) - 1),
            self.origin + Duration::from_micros(v >> PHASE_BITS),
        )
    }

    /// A request head was parsed: no head deadline while it is served (its
    /// body, if any, is due within the idle timeout of the head's start).
    /// Returns when its head started: its first byte, or the accept for a
    /// connection's first request. Reads no clock.
    pub fn request_started(&self) -> Instant {
        let (_, head_started) = self.load();
        self.set(BUSY, head_started);
        head_started
    }

    /// The response is ready (at `now`): the connection is idle until the
    /// next byte.
    pub fn request_finished(&self, now: Instant) {
        self.set(IDLE, now);
    }
}

/// Timeouts of one connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

impl Timeouts {
    fn of(&self, phase: u64) -> Duration {
        match phase {
            HEAD => self.header,
            // A request being served (its body being read) is bounded by
            // the idle timeout too, so a trickled body cannot hold a slot.
            _ => self.idle,
        }
    }
}

/// An I/O object that fails reads with `TimedOut` once the current phase's
/// deadline passes, which makes hyper close the connection.
pub struct DeadlineIo<S> {
    inner: S,
    phase: Arc<Phase>,
    timeouts: Timeouts,
    /// When the timer is set to fire (never later than the real deadline).
    armed: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl<S> DeadlineIo<S> {
    /// Wraps a freshly accepted connection: its first head is due within
    /// the header timeout.
    pub fn new(inner: S, timeouts: Timeouts) -> (Self, Arc<Phase>) {
        let now = Instant::now();
        let phase = Arc::new(Phase::new(now));
        let armed = now + timeouts.header;
        let io = Self {
            inner,
            phase: phase.clone(),
            timeouts,
            armed,
            sleep: Box::pin(tokio::time::sleep_until(armed)),
        };
        (io, phase)
    }

    fn arm(&mut self, deadline: Instant) {
        self.armed = deadline;
        self.sleep.as_mut().reset(deadline);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DeadlineIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.phase.load().0 == IDLE {
                    // The first byte of the next request: its head is due,
                    // sooner than the idle deadline the timer may hold.
                    let now = Instant::now();
                    this.phase.set(HEAD, now);
                    let due = now + this.timeouts.header;
                    if due < this.armed {
                        this.arm(due);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => loop {
                if this.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let (phase, since) = this.phase.load();
                let deadline = since + this.timeouts.of(phase);
                if Instant::now() >= deadline {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        match phase {
                            HEAD => "request head not received in time",
                            BUSY => "request not received in time",
                            _ => "idle keep-alive connection timed out",
                        },
                    )));
                }
                // Fired early (the connection moved since it was armed):
                // re-arm for the real deadline and poll it once more, so
                // that the waker is registered.
                this.arm(deadline);
            },
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    async fn read_some(io: &mut DeadlineIo<tokio::io::DuplexStream>) -> io::Result<usize> {
        let mut buf = [0u8; 64];
        io.read(&mut buf).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_new_connection_times_out_after_the_header_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let (mut io, _phase) = DeadlineIo::new(server, T);
        let start = Instant::now();
        let err = read_some(&mut io).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), T.header);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keep_alive_lasts_the_idle_timeout_then_heads_get_the_header_timeout() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut io, phase) = DeadlineIo::new(server, T);
        client.write_all(b"GET").await.unwrap();
        assert_eq!(read_some(&mut io).await.unwrap(), 3);
        phase.request_started();
        phase.request_finished(Instant::now());

        // Idle: still open after the header timeout, closed at idle timeout.
        let start = Instant::now();
        tokio::time::sleep(T.header * 2).await;
        client.write_all(b"G").await.unwrap();
        assert_eq!(
            read_some(&mut io).await.unwrap(),
            1,
            "alive after 20 s idle"
        );
        // The first byte of a head starts the header deadline.
        let head_start = Instant::now();
        let err = read_some(&mut io).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(head_start.elapsed(), T.header);
        assert!(start.elapsed() < T.idle);

        // And a plain idle connection closes at the idle timeout.
        let (_client, server) = tokio::io::duplex(64);
        let (mut io, phase) = DeadlineIo::new(server, T);
        phase.request_started();
        phase.request_finished(Instant::now());
        let start = Instant::now();
        assert_eq!(
            read_some(&mut io).await.unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        assert_eq!(start.elapsed(), T.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_keep_a_connection_alive_without_re_arming_each_time() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut io, phase) = DeadlineIo::new(server, T);
        // Requests every 5 s for 2 minutes: never idle or head-bound long.
        for _ in 0..24 {
            client.write_all(b"G").await.unwrap();
            assert_eq!(read_some(&mut io).await.unwrap(), 1);
            let started = phase.request_started();
            assert_eq!(started, Instant::now(), "the head's first byte, just read");
            phase.request_finished(Instant::now());
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        // Then silence: closed one idle timeout after the last response.
        let last = Instant::now() - Duration::from_secs(5);
        let err = read_some(&mut io).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - last, T.idle);
    }
}
