//! The serve loop: accepts on both listeners, serves each connection with
//! hyper under a connection cap and header deadline, logs each request,
//! runs background maintenance, and drains gracefully on shutdown.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream, UnixListener},
    sync::Semaphore,
};

use crate::{
    api::{self, public, registration, Handled},
    deadline::{DeadlineIo, Timeouts},
    listen::Listeners,
    state::AppState,
};

/// Connection handling limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A request head must arrive within this of its first byte (or of
    /// the accept): slow-client defence.
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout: Duration,
    /// Concurrent public connections; beyond it, 503 and close.
    pub max_connections: usize,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain_timeout: Duration,
    /// How often background maintenance (namespace discovery) runs.
    pub maintenance_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            drain_timeout: Duration::from_secs(10),
            maintenance_interval: Duration::from_secs(1),
        }
    }
}

/// Serves until `shutdown` resolves, then stops accepting, drains
/// in-flight requests (bounded) and removes the owned socket file.
pub async fn run(
    state: Arc<AppState>,
    listeners: Listeners,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let registration_listener = UnixListener::from_std(listeners.registration)?;
    let public_listeners = listeners
        .public
        .into_iter()
        .map(TcpListener::from_std)
        .collect::<std::io::Result<Vec<_>>>()?;
    for l in &public_listeners {
        tracing::info!(addr = %l.local_addr()?, "public API listening");
    }
    let graceful = GracefulShutdown::new();
    let cap = Arc::new(Semaphore::new(limits.max_connections));
    let maintenance = tokio::spawn(maintain(state.clone(), limits.maintenance_interval));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = registration_listener.accept() => match accepted {
                Ok((stream, _)) => serve_registration(&state, &graceful, &limits, stream),
                Err(e) => accept_error("registration", e).await,
            },
            accepted = accept_any(&public_listeners) => match accepted {
                Ok((stream, peer)) => serve_public(&state, &graceful, &limits, &cap, stream, peer),
                Err(e) => accept_error("public", e).await,
            },
            () = &mut shutdown => break,
        }
    }
    tracing::info!(
        in_flight = graceful.count(),
        "shutting down: no longer accepting"
    );
    drop(registration_listener);
    drop(public_listeners);
    maintenance.abort();
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    if let Some(path) = listeners.owned_socket {
        remove_socket(path);
    }
    Ok(())
}

fn remove_socket(path: PathBuf) {
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the registration socket");
    }
}

/// Accepting can fail transiently (EMFILE, ECONNABORTED): log and back
/// off briefly instead of spinning or dying.
async fn accept_error(api: &str, e: std::io::Error) {
    tracing::warn!(api, error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn accept_any(listeners: &[TcpListener]) -> std::io::Result<(TcpStream, SocketAddr)> {
    if listeners.is_empty() {
        return std::future::pending().await;
    }
    let accepts = listeners.iter().map(|l| Box::pin(l.accept()));
    futures::future::select_all(accepts).await.0
}

fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    // Head and idle deadlines are `DeadlineIo`'s: hyper's own head timer
    // would also cut idle keep-alive connections at the head timeout.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    builder
}

/// What differs between the two APIs' connections.
struct Api {
    name: &'static str,
    /// Whether the path's first segment is a token to hide in the log.
    /// (Queries are never logged: the registration token and signatures
    /// travel there.)
    token_in_path: bool,
    /// The metrics label.
    endpoint: fn(&str) -> &'static str,
}

const PUBLIC: Api = Api {
    name: "public",
    token_in_path: true,
    endpoint: public::endpoint,
};

const REGISTRATION: Api = Api {
    name: "registration",
    token_in_path: false,
    endpoint: registration::endpoint,
};

fn serve_public(
    state: &Arc<AppState>,
    graceful: &GracefulShutdown,
    limits: &Limits,
    cap: &Arc<Semaphore>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Ok(permit) = cap.clone().try_acquire_owned() else {
        tracing::warn!(peer = %peer, "connection cap reached; answering 503");
        tokio::spawn(refuse_busy(stream));
        return;
    };
    let _ = stream.set_nodelay(true);
    let handler = move |state, req| public::handle(state, req, peer);
    serve_connection(state, graceful, limits, stream, PUBLIC, permit, handler);
}

fn serve_registration(
    state: &Arc<AppState>,
    graceful: &GracefulShutdown,
    limits: &Limits,
    stream: tokio::net::UnixStream,
) {
    let peer = match stream.peer_cred() {
        Ok(c) => registration::Peer {
            uid: Some(c.uid()),
            gid: Some(c.gid()),
            pid: c.pid(),
        },
        Err(_) => registration::Peer::default(),
    };
    let handler = move |state, req| registration::handle(state, req, peer);
    serve_connection(state, graceful, limits, stream, REGISTRATION, (), handler);
}

/// Serves one connection on its own task: deadlines, access log, metrics.
/// `guard` (a connection-cap permit) is held until the connection ends.
fn serve_connection<S, H, F>(
    state: &Arc<AppState>,
    graceful: &GracefulShutdown,
    limits: &Limits,
    stream: S,
    api: Api,
    guard: impl Send + 'static,
    handler: H,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Arc<AppState>, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Handled> + Send + 'static,
{
    let (io, phase) = DeadlineIo::new(
        stream,
        Timeouts {
            header: limits.header_timeout,
            idle: limits.idle_timeout,
        },
    );
    let state = state.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let (state, phase, handler) = (state.clone(), phase.clone(), handler.clone());
        async move {
            phase.request_started();
            let start = Instant::now();
            let method = req.method().clone();
            // A cheap clone (shared bytes): the request moves into the handler.
            let uri = req.uri().clone();
            let endpoint = (api.endpoint)(uri.path());
            let handled = handler(state.clone(), req).await;
            let response = if api.token_in_path {
                let path = public::Redacted(uri.path());
                finish(&state, (api.name, endpoint), &method, &path, start, handled)
            } else {
                finish(
                    &state,
                    (api.name, endpoint),
                    &method,
                    &uri.path(),
                    start,
                    handled,
                )
            };
            phase.request_finished();
            Ok::<_, Infallible>(response)
        }
    });
    let conn = graceful.watch(http1_builder().serve_connection(TokioIo::new(io), svc));
    tokio::spawn(async move {
        // rkt's availability probe connects and closes at once: not an error.
        if let Err(e) = conn.await {
            tracing::debug!(api = api.name, error = %e, "connection ended with an error");
        }
        drop(guard);
    });
}

fn finish(
    state: &AppState,
    (api, endpoint): (&'static str, &'static str),
    method: &hyper::Method,
    path: &dyn std::fmt::Display,
    start: Instant,
    handled: Handled,
) -> hyper::Response<api::Body> {
    let latency = start.elapsed();
    let status = handled.response.status();
    api::log_access(api, method, path, status, latency, handled.pod);
    state
        .metrics
        .request(api, endpoint, status.as_u16(), latency);
    handled.response
}

async fn refuse_busy(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Length: 27\r\nConnection: close\r\n\r\ntoo many connections, later")
        .await;
    let _ = stream.shutdown().await;
}

/// Background work off the request path: binding pods whose namespace rkt
/// has written since they registered, collecting dead registrations.
async fn maintain(state: Arc<AppState>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.pods.discover_pending().await;
        state.pods.collect_garbage().await;
    }
}
