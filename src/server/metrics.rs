//! `--metrics-address`: Prometheus' scrape endpoint over plain HTTP.
//! `GET /metrics` only; bounded like the public side (a few concurrent
//! connections, a deadline per connection) since anyone who can reach the
//! address can connect.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use hyper::{
    body::Incoming, server::conn::http1, service::service_fn, Method, Request, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    api::{
        self,
        registration::{metrics_text, METRICS_TYPE},
    },
    state::AppState,
};

/// Concurrent scrape connections.
const MAX_CONNECTIONS: usize = 16;
/// The longest a scrape connection lives.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AppState>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(peer = %peer, "metrics connections at their limit: closed");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, &req)) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
            drop(slot);
        });
    }
}

fn answer(state: &AppState, req: &Request<Incoming>) -> hyper::Response<api::Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => api::respond(
            StatusCode::OK,
            METRICS_TYPE,
            Bytes::from(metrics_text(state)),
        ),
        (_, "/metrics") => api::method_not_allowed("GET"),
        _ => api::not_found(),
    }
}
