//! Serving one connection: hyper over the deadline wrapper, requests that
//! HTTP itself calls malformed refused before any handler, then one
//! access-log line and the metrics for each request.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc};

use hyper::{
    body::Incoming,
    header::{HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING},
    server::conn::http1,
    service::service_fn,
    Request, StatusCode, Version,
};
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use tokio::{
    net::{TcpStream, UnixStream},
    time::Instant,
};

use super::Limits;
use crate::{
    access_log,
    api::{self, public, registration, Handled},
    deadline::{DeadlineIo, Phase, Timeouts},
    state::AppState,
};

/// The largest request head accepted on the public API. Its requests are
/// small (a path with a token of at most 256 characters, a few headers);
/// bounding the head bounds the memory a connection can make the agent
/// buffer: at most this times the connection cap, this times the
/// per-source share for one source.
pub const PUBLIC_MAX_HEAD: usize = 16 * 1024;

/// The registration socket's limit (root's runtime; bodies stream apart).
const REGISTRATION_MAX_HEAD: usize = 64 * 1024;

/// What differs between the two APIs' connections.
#[derive(Clone, Copy)]
struct Api {
    name: &'static str,
    /// The public API refuses absolute-form targets (a request relayed by
    /// a forward proxy is not a pod's), and its paths carry tokens, hidden
    /// in the log.
    public: bool,
    max_head: usize,
    /// The metrics label.
    endpoint: fn(&str) -> &'static str,
}

const PUBLIC: Api = Api {
    name: "public",
    public: true,
    max_head: PUBLIC_MAX_HEAD,
    endpoint: public::endpoint,
};

const REGISTRATION: Api = Api {
    name: "registration",
    public: false,
    max_head: REGISTRATION_MAX_HEAD,
    endpoint: registration::endpoint,
};

pub(super) fn serve_public(
    state: &Arc<AppState>,
    graceful: &GracefulShutdown,
    limits: &Limits,
    stream: TcpStream,
    peer: SocketAddr,
    source: crate::tenant::SourceKey,
    guard: impl Send + 'static,
) {
    let conn = Arc::new(public::Conn::new(state.clone(), peer, source));
    let handler = move |req| public::handle(conn.clone(), req);
    serve(state, graceful, limits, stream, PUBLIC, guard, handler);
}

pub(super) fn serve_registration(
    state: &Arc<AppState>,
    graceful: &GracefulShutdown,
    limits: &Limits,
    stream: UnixStream,
    peer: registration::Peer,
) {
    let root = state.clone();
    let handler = move |req| registration::handle(root.clone(), req, peer);
    serve(state, graceful, limits, stream, REGISTRATION, (), handler);
}

/// Serves one connection on its own task: deadlines, access log, metrics.
/// `guard` (connection-cap permit, source slot) is held until it ends.
fn serve<S, H, F>(
    state: &Arc<AppState>,
    graceful: &GracefulShutdown,
    limits: &Limits,
    stream: S,
    api: Api,
    guard: impl Send + 'static,
    handler: H,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Handled> + Send + 'static,
{
    let (io, phase) = DeadlineIo::new(
        stream,
        Timeouts {
            header: limits.header_timeout,
            idle: limits.idle_timeout,
        },
    );
    // What every request of the connection uses, behind one reference
    // count of the connection's own: a request clones that, not the
    // shared state's (a cache line every worker would write).
    let served = Arc::new(Served {
        state: state.clone(),
        phase,
        handler,
    });
    let svc = service_fn(move |req: Request<Incoming>| {
        let served = served.clone();
        async move {
            let start = served.phase.request_started();
            let method = req.method().clone();
            // A cheap clone (shared bytes): the request moves into the handler.
            let uri = req.uri().clone();
            let endpoint = (api.endpoint)(uri.path());
            let handled = match malformed(&req, api.public) {
                Some(refusal) => refusal,
                None => (served.handler)(req).await,
            };
            let end = Instant::now();
            let latency = end.saturating_duration_since(start);
            let status = handled.response.status();
            // Queries are never logged: tokens and signatures travel there.
            let path: &dyn access_log::LogPath = if api.public {
                &public::Redacted(uri.path())
            } else {
                &uri.path()
            };
            access_log::record(api.name, &method, path, status, latency, handled.pod);
            served
                .state
                .metrics
                .request(api.name, endpoint, status.as_u16(), latency);
            served.phase.request_finished(end);
            Ok::<_, Infallible>(handled.response)
        }
    });
    let mut builder = http1::Builder::new();
    // Head and idle deadlines are `DeadlineIo`'s: hyper's own head timer
    // would also cut idle keep-alive connections at the head timeout.
    builder
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(api.max_head);
    let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), svc));
    tokio::spawn(async move {
        // rkt's availability probe connects and closes at once: not an error.
        if let Err(e) = conn.await {
            tracing::debug!(api = api.name, error = %e, "connection ended with an error");
        }
        drop(guard);
    });
}

/// One connection's share of what its requests use.
struct Served<H> {
    state: Arc<AppState>,
    phase: Arc<Phase>,
    handler: H,
}

/// What HTTP/1.1 itself forbids, answered 400 before any handler, with the
/// connection closed: both `Transfer-Encoding` and `Content-Length` (the
/// classic request smuggling shape), an HTTP/1.1 request without `Host`,
/// and on the public API an absolute-form target.
fn malformed(req: &Request<Incoming>, public: bool) -> Option<Handled> {
    let h = req.headers();
    let why = if h.contains_key(TRANSFER_ENCODING) && h.contains_key(CONTENT_LENGTH) {
        "a request may not carry both Transfer-Encoding and Content-Length"
    } else if req.version() == Version::HTTP_11 && !h.contains_key(HOST) {
        "an HTTP/1.1 request needs a Host header"
    } else if public && (req.uri().scheme().is_some() || req.uri().authority().is_some()) {
        "absolute-form request targets are not accepted"
    } else {
        return None;
    };
    let mut response = api::text(StatusCode::BAD_REQUEST, why);
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    Some(response.into())
}
