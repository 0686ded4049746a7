//! Connection deadlines that hyper does not offer together: a request head
//! must arrive within the header timeout of its first byte (or of the
//! accept), and an idle keep-alive connection is closed after the idle
//! timeout. (hyper's own `header_read_timeout` starts as soon as it waits
//! for a head, so it would also cut idle keep-alive connections short.)

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

/// Where a connection is: waiting for a head, serving a request, or idle
/// between requests. The service moves it; the I/O wrapper enforces it.
/// One atomic: the low two bits are the phase, the rest a generation that
/// changes with every move, so the wrapper notices each one.
#[derive(Debug, Default)]
pub struct Phase(AtomicU64);

impl Phase {
    fn set(&self, phase: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(((v >> 2) + 1) << 2 | phase)
            });
    }

    /// A request head was parsed: no head deadline while it is served.
    pub fn request_started(&self) {
        self.set(BUSY);
    }

    /// The response is ready: the connection is idle until the next byte.
    pub fn request_finished(&self) {
        self.set(IDLE);
    }

    fn load(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Timeouts of one connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

/// An I/O object that fails reads with `TimedOut` once the current phase's
/// deadline passes, which makes hyper close the connection.
pub struct DeadlineIo<S> {
    inner: S,
    phase: Arc<Phase>,
    timeouts: Timeouts,
    armed: u64,
    sleep: Pin<Box<Sleep>>,
}

impl<S> DeadlineIo<S> {
    /// Wraps a freshly accepted connection: its first head is due within
    /// the header timeout.
    pub fn new(inner: S, timeouts: Timeouts) -> (Self, Arc<Phase>) {
        let phase = Arc::new(Phase::default());
        let io = Self {
            inner,
            armed: phase.load(),
            phase: phase.clone(),
            timeouts,
            sleep: Box::pin(tokio::time::sleep(timeouts.header)),
        };
        (io, phase)
    }

    fn timeout_of(&self, state: u64) -> Duration {
        match state & 3 {
            HEAD => self.timeouts.header,
            // A request being served (its body being read) is bounded by
            // the idle timeout too, so a trickled body cannot hold a slot.
            _ => self.timeouts.idle,
        }
    }

    fn arm(&mut self, state: u64) {
        self.armed = state;
        let deadline = Instant::now() + self.timeout_of(state);
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
        let state = this.phase.load();
        if state != this.armed {
            this.arm(state);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.armed & 3 == IDLE {
                    // The first byte of the next request: its head is due.
                    this.phase.set(HEAD);
                    let state = this.phase.load();
                    this.arm(state);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    match this.armed & 3 {
                        HEAD => "request head not received in time",
                        BUSY => "request not received in time",
                        _ => "idle keep-alive connection timed out",
                    },
                ))),
                Poll::Pending => Poll::Pending,
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
        phase.request_finished();

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
        phase.request_finished();
        let start = Instant::now();
        assert_eq!(
            read_some(&mut io).await.unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        assert_eq!(start.elapsed(), T.idle);
    }
}
