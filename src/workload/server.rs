//! Serving the Workload API: HTTP/2 (cleartext) connections on the
//! Workload API listeners, each counted in its tenant's connection share
//! and in the agent's connection cap like a public connection, each call
//! attested by the connection's peer.
//!
//! Before a call is attested its request is read, so what an unattested
//! client can make the agent hold is bounded here: messages of at most
//! [`MAX_MESSAGE`], small HTTP/2 windows, and a connection that has made no
//! call within [`FIRST_CALL`] is closed.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
};
use tonic::codegen::Service;

use super::{
    api::spiffe_workload_a_p_i_server::SpiffeWorkloadAPIServer,
    service::{peer_namespace, Caller, UnixPeer, WorkloadApi},
};
use crate::{
    server::{accept_error, open_share, warn_refusal},
    state::AppState,
    tenant::{SourceKey, Subject},
};

/// Streams one connection may carry at once (HTTP/2's own bound; with a
/// tenant's connection share, what one pod can hold).
const STREAMS_PER_CONNECTION: u32 = 16;

/// The largest request message (real ones are a few bytes: an audience, a
/// JWT-SVID to validate).
const MAX_MESSAGE: usize = 64 * 1024;

/// HTTP/2 flow-control windows: what a client may send ahead.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;

/// A connection that has made no call by then is closed (a client that
/// never sends the HTTP/2 preface holds nothing for long).
const FIRST_CALL: Duration = Duration::from_secs(10);

/// Connections of Unix peers that are no pod's (the host's processes,
/// namespaces nobody registered): all of them together, at most.
const UNATTRIBUTED_UNIX: usize = 8;

/// Accepts on `listener` until `stop`; `cap` is the agent's connection
/// cap, shared with the public listeners.
pub async fn accept(
    listener: TcpListener,
    state: Arc<AppState>,
    cap: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_error(&state, "workload-accept-failed", "Workload API listener", e).await;
                continue;
            }
        };
        let source = SourceKey::attributed(peer.ip(), state.pods.watches());
        let Some(slot) = open_share(&state, source, peer.ip(), "Workload API ") else {
            continue;
        };
        let Some(permit) = capped(&state, &cap) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(
            stream,
            Caller::Tcp(peer),
            state.clone(),
            stop.clone(),
            (slot, permit),
        ));
    }
}

/// A permit of the agent's connection cap, or `None` (counted, logged).
fn capped(state: &AppState, cap: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    let permit = cap.clone().try_acquire_owned().ok();
    if permit.is_none() {
        state.metrics.refused("connection", "cap");
        warn_refusal(
            state,
            Subject::Agent,
            "connection-cap",
            "connection cap reached; a Workload API connection is closed",
        );
    }
    permit
}

/// Accepts on the Unix socket until `stop`. A peer is counted in its
/// pod's connection share; peers that are no pod's (the host's processes,
/// unregistered namespaces) share one share between them, and every call
/// of theirs is refused.
pub async fn accept_unix(
    listener: UnixListener,
    state: Arc<AppState>,
    cap: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let unattributed = Arc::new(Semaphore::new(UNATTRIBUTED_UNIX));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                accept_error(&state, "workload-accept-failed", "Workload API socket", e).await;
                continue;
            }
        };
        // The cap before any work (a task, a /proc read) for the peer.
        let Some(permit) = capped(&state, &cap) else {
            continue;
        };
        let (state, stop, unattributed) = (state.clone(), stop.clone(), unattributed.clone());
        tokio::spawn(async move {
            let Ok(socket) = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned() else {
                return;
            };
            let at_connect = match peer_namespace(&socket).await {
                Ok(ns) => ns,
                Err(e) => {
                    warn_refusal(
                        &state,
                        Subject::Agent,
                        "workload-peer-unknown",
                        &format!("Workload API connection refused: cannot tell the peer's namespace: {e}"),
                    );
                    return;
                }
            };
            // The pod's share; everyone else (who will be refused) shares
            // a few connections.
            let pod = state
                .pods
                .pods_in_namespace(at_connect.0, at_connect.1)
                .and_then(|p| p.first().and_then(|p| p.lease().map(|l| l.cookie().0)));
            let (slot, _few) = match pod {
                Some(cookie) => {
                    // No address: loopback stands in (never filtered).
                    let addr = std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
                    let Some(slot) =
                        open_share(&state, SourceKey::Netns(cookie), addr, "Workload API ")
                    else {
                        return;
                    };
                    (Some(slot), None)
                }
                None => match unattributed.try_acquire_owned() {
                    Ok(p) => (None, Some(p)),
                    Err(_) => return,
                },
            };
            let caller = Caller::Unix(Arc::new(UnixPeer { socket, at_connect }));
            serve(stream, caller, state, stop, (slot, permit)).await;
        });
    }
}

async fn serve<S, H>(
    stream: S,
    caller: Caller,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
    _held: H,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Send + 'static,
{
    let service = SpiffeWorkloadAPIServer::new(WorkloadApi::new(state, caller))
        .max_decoding_message_size(MAX_MESSAGE);
    let called = Arc::new(AtomicBool::new(false));
    let seen = called.clone();
    let service = hyper::service::service_fn(move |req| {
        seen.store(true, Ordering::Relaxed);
        let mut service = service.clone();
        async move { service.call(req).await }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(16 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopping = async move {
        // The guard `wait_for` returns is not `Send`: drop it at once.
        let _ = stop.wait_for(|s| *s).await.map(|_| ());
    };
    let first_call = async move {
        tokio::time::sleep(FIRST_CALL).await;
        if called.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        () = first_call => {}
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}
