//! Serving the Workload API: HTTP/2 (cleartext) connections on the
//! Workload API listeners, each counted in its tenant's connection share
//! like a public connection, each call attested by the connection's peer.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch};

use super::{api::spiffe_workload_a_p_i_server::SpiffeWorkloadAPIServer, service::WorkloadApi};
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
        tokio::spawn(serve(stream, peer, state.clone(), stop.clone(), slot));
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
    _slot: crate::tenant::SourceSlot,
) {
    let service = SpiffeWorkloadAPIServer::new(WorkloadApi::new(state, peer));
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
