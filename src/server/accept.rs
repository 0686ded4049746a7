//! Accepting connections: the registration socket (root's, never limited)
//! and the public listeners, where each source gets a bounded share of the
//! connection cap.

use std::{sync::Arc, time::Duration};

use hyper_util::server::graceful::GracefulShutdown;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream, UnixListener},
    sync::{watch, Semaphore},
};

use super::{connection, syn_filter, warn_refusal, warn_refusal_with, Limits};
use crate::{
    api::registration::Peer,
    state::AppState,
    tenant::{SourceKey, SourceSlot, Subject},
};

pub(super) async fn registration(
    listener: UnixListener,
    state: Arc<AppState>,
    graceful: Arc<GracefulShutdown>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let peer = match stream.peer_cred() {
                    Ok(c) => Peer {
                        uid: Some(c.uid()),
                        gid: Some(c.gid()),
                        pid: c.pid(),
                    },
                    Err(_) => Peer::default(),
                };
                connection::serve_registration(&state, &graceful, &limits, stream, peer);
            }
            Err(e) => {
                accept_error(
                    &state,
                    "registration-accept-failed",
                    "registration listener",
                    e,
                )
                .await
            }
        }
    }
}

pub(super) async fn public(
    listener: TcpListener,
    state: Arc<AppState>,
    graceful: Arc<GracefulShutdown>,
    limits: Limits,
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
                accept_error(&state, "public-accept-failed", "public listener", e).await;
                continue;
            }
        };
        // The tenant's share first: one pod (all its addresses), or one
        // address the host gives to no pod, cannot fill the cap.
        let source = SourceKey::attributed(peer.ip(), state.pods.watches());
        let Some(slot) = open_share(&state, source, peer.ip(), "") else {
            // Closed at once, no body: nothing to parse, nothing to hold.
            // If this address holds the whole share itself, its next
            // connections are dropped in the kernel (`syn_filter`) until
            // its source is below its share again.
            drop(stream);
            continue;
        };
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            state.metrics.refused("connection", "cap");
            warn_refusal(
                &state,
                Subject::Agent,
                "connection-cap",
                "connection cap reached; answering 503",
            );
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        if state.tenancy.connections.may_inherit() {
            // An accepted socket inherits the listener's filter: each would
            // keep a version of the program alive for its lifetime.
            let _ = syn_filter::detach(&socket2::SockRef::from(&stream));
        }
        let source = slot.key();
        connection::serve_public(
            &state,
            &graceful,
            &limits,
            stream,
            peer,
            source,
            (slot, permit),
        );
    }
}

/// A slot of tenant `source`'s connection share for a connection from
/// `peer`, or `None`, counted and logged (`api`: what the line says the
/// connection was for, `""` for the public API).
pub(crate) fn open_share(
    state: &AppState,
    source: SourceKey,
    peer: std::net::IpAddr,
    api: &'static str,
) -> Option<SourceSlot> {
    let slot = state.tenancy.connections.try_open(source, peer);
    if slot.is_none() {
        state.metrics.refused("connection", "per-source");
        warn_refusal_with(
            state,
            Subject::Source(source),
            "connections-per-source",
            || refused_share(state, source, api),
        );
    }
    slot
}

/// The refusal line for a tenant over its share, naming a pod's UUIDs
/// (its namespace cookie alone tells an operator nothing).
fn refused_share(state: &AppState, source: SourceKey, api: &str) -> String {
    let line = format!("{api}connection refused: the source holds its share of connections");
    match source {
        SourceKey::Netns(cookie) => {
            let pods = state.pods.registry().pods_in(netns::NetnsCookie(cookie));
            let pods: Vec<String> = pods.iter().map(ToString::to_string).collect();
            format!("{line} (pod {})", pods.join(", "))
        }
        _ => line,
    }
}

/// Accepting can fail transiently (EMFILE, ECONNABORTED): log (bounded)
/// and back off briefly instead of spinning or dying. Each listener has
/// its own task, so one backing off never holds up the other.
pub(crate) async fn accept_error(
    state: &AppState,
    reason: &'static str,
    listener: &str,
    e: std::io::Error,
) {
    warn_refusal(
        state,
        Subject::Agent,
        reason,
        &format!("accept failed on the {listener}: {e}"),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn refuse_busy(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Length: 27\r\nConnection: close\r\n\r\ntoo many connections, later")
        .await;
    let _ = stream.shutdown().await;
}
