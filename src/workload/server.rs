//! Serving the Workload API: HTTP/2 (cleartext) connections on the
//! Workload API listeners, each counted in its tenant's connection share
//! like a public connection, each call attested by the connection's peer.

use std::{sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::watch,
};

use super::{
    api::spiffe_workload_a_p_i_server::SpiffeWorkloadAPIServer,
    service::{peer_namespace, Caller, UnixPeer, WorkloadApi},
};
use crate::{
    server::warn_refusal,
    state::AppState,
    tenant::{SourceKey, Subject},
};

/// Streams one connection may carry at once (HTTP/2's own bound; with a
/// tenant's connection share, what one pod can hold).
const STREAMS_PER_CONNECTION: u32 = 16;

/// Accepts on `listener` until `stop`.
pub async fn accept(listener: TcpListener, state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn_refusal(
                    &state,
                    Subject::Agent,
                    "workload-accept-failed",
                    &format!("accept failed on the Workload API listener: {e}"),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = SourceKey::attributed(peer.ip(), state.pods.watches());
        let Some(slot) = state.tenancy.connections.try_open(source, peer.ip()) else {
            state.metrics.refused("connection", "per-source");
            warn_refusal(
                &state,
                Subject::Source(source),
                "connections-per-source",
                "Workload API connection refused: the source holds its share of connections",
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(
            stream,
            Caller::Tcp(peer),
            state.clone(),
            stop.clone(),
            slot,
        ));
    }
}

/// Accepts on the Unix socket until `stop`. A peer is counted in its
/// pod's connection share; peers that are no pod's (the host's processes,
/// unregistered namespaces) share one share between them, and every call
/// of theirs is refused.
pub async fn accept_unix(
    listener: UnixListener,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                warn_refusal(
                    &state,
                    Subject::Agent,
                    "workload-accept-failed",
                    &format!("accept failed on the Workload API socket: {e}"),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (state, stop) = (state.clone(), stop.clone());
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
            // The pod's share, or the one share of everyone else.
            let source = state
                .pods
                .pods_in_namespace(at_connect.0, at_connect.1)
                .and_then(|p| p.first().and_then(|p| p.lease().map(|l| l.cookie().0)))
                .map_or(SourceKey::Port(0), SourceKey::Netns);
            let addr = std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
            let Some(slot) = state.tenancy.connections.try_open(source, addr) else {
                state.metrics.refused("connection", "per-source");
                warn_refusal(
                    &state,
                    Subject::Source(source),
                    "connections-per-source",
                    "Workload API connection refused: the source holds its share of connections",
                );
                return;
            };
            let caller = Caller::Unix(Arc::new(UnixPeer { socket, at_connect }));
            serve(stream, caller, state, stop, slot).await;
        });
    }
}

async fn serve<S>(
    stream: S,
    caller: Caller,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
    _slot: crate::tenant::SourceSlot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = SpiffeWorkloadAPIServer::new(WorkloadApi::new(state, caller));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let stopping = async move {
        // The guard `wait_for` returns is not `Send`: drop it at once.
        let _ = stop.wait_for(|s| *s).await.map(|_| ());
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}
