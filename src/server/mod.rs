//! The serve loop: one accept task per listener (so that a public side
//! under attack never holds up the registration socket), connections served
//! by hyper under deadlines and limits, background maintenance, and a
//! graceful drain on shutdown.

mod accept;
pub(crate) use accept::{accept_error, open_share};
mod connection;
pub mod metrics;
mod syn_filter;

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use hyper_util::server::graceful::GracefulShutdown;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{watch, Semaphore},
};

use crate::{listen::Listeners, state::AppState, tenant::Subject};

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
    /// Concurrent public connections of one source (an IPv4 address or an
    /// IPv6 /64); beyond it, closed at accept. An address holding the whole
    /// share by itself then has its new connections dropped by the kernel
    /// until a slot of its source frees.
    pub max_connections_per_source: usize,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain_timeout: Duration,
    /// How often background maintenance runs.
    pub maintenance_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_source: 64,
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
    let registration = UnixListener::from_std(listeners.registration)?;
    // Duplicates of the public sockets, for their SYN filter.
    let filtered = listeners
        .public
        .iter()
        .map(|l| l.try_clone().map(socket2::Socket::from))
        .collect::<std::io::Result<Vec<_>>>()?;
    let public = listeners
        .public
        .into_iter()
        .map(TcpListener::from_std)
        .collect::<std::io::Result<Vec<_>>>()?;
    for l in &public {
        tracing::info!(addr = %l.local_addr()?, "public API listening");
    }
    let workload = listeners
        .workload
        .into_iter()
        .map(TcpListener::from_std)
        .collect::<std::io::Result<Vec<_>>>()?;
    for l in &workload {
        tracing::info!(addr = %l.local_addr()?, "SPIFFE Workload API listening");
    }
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let cap = Arc::new(Semaphore::new(limits.max_connections));
    let mut tasks = vec![tokio::spawn(accept::registration(
        registration,
        state.clone(),
        graceful.clone(),
        limits.clone(),
        stop_rx.clone(),
    ))];
    for listener in public {
        tasks.push(tokio::spawn(accept::public(
            listener,
            state.clone(),
            graceful.clone(),
            limits.clone(),
            cap.clone(),
            stop_rx.clone(),
        )));
    }
    for listener in workload {
        tasks.push(tokio::spawn(crate::workload::server::accept(
            listener,
            state.clone(),
            cap.clone(),
            stop_rx.clone(),
        )));
    }
    let workload_socket = match listeners.workload_unix {
        Some((listener, path)) => {
            tracing::info!(path = %path.display(), "SPIFFE Workload API listening");
            tasks.push(tokio::spawn(crate::workload::server::accept_unix(
                UnixListener::from_std(listener)?,
                state.clone(),
                cap.clone(),
                stop_rx.clone(),
            )));
            Some(path)
        }
        None => None,
    };
    tasks.push(tokio::spawn(syn_filter::keep(
        state.clone(),
        filtered,
        stop_rx.clone(),
    )));
    let maintenance = tokio::spawn(maintain(state.clone(), limits.maintenance_interval));
    shutdown.await;
    let _ = stop_tx.send(true);
    // The accept tasks end, dropping their listeners.
    for t in tasks {
        let _ = t.await;
    }
    maintenance.abort();
    tracing::info!(
        in_flight = graceful.count(),
        "shutting down: no longer accepting"
    );
    let graceful = Arc::try_unwrap(graceful).ok();
    if let Some(graceful) = graceful {
        if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timed out; closing remaining connections");
        }
    }
    if let Some(path) = listeners.owned_socket {
        remove_socket(path);
    }
    if let Some(path) = workload_socket {
        remove_socket(path);
    }
    Ok(())
}

fn remove_socket(path: PathBuf) {
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the registration socket");
    }
}

/// Background work off the request path: binding pods whose namespace rkt
/// has written since they registered, collecting dead registrations,
/// forgetting idle rate buckets, closing refusal-log windows.
async fn maintain(state: Arc<AppState>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.pods.discover_pending().await;
        state.pods.collect_garbage().await;
        state
            .tenancy
            .rates
            .prune(|u| state.pods.registry().get(u).is_some());
        state.tenancy.refusal_log.flush();
    }
}

/// A refusal's `warn` line, unless its window already has one.
pub(crate) fn warn_refusal(state: &AppState, subject: Subject, reason: &'static str, detail: &str) {
    warn_refusal_with(state, subject, reason, || detail.to_owned());
}

/// [`warn_refusal`] with a detail made only when the line is written.
pub(crate) fn warn_refusal_with(
    state: &AppState,
    subject: Subject,
    reason: &'static str,
    detail: impl FnOnce() -> String,
) {
    if state.tenancy.refusal_log.first(subject, reason) {
        tracing::warn!(subject = %subject, reason, "{}", detail());
    }
}
