//! The registration API over the Unix socket (SPEC §2) and its operator
//! extensions (`GET /pods`, `/health`, `/metrics`, key rotation).

use std::sync::Arc;

use bytes::Bytes;
use hyper::{body::Incoming, Method, Request, StatusCode};
use serde::Serialize;

use super::{json, method_not_allowed, not_found, read_body, respond, status_text, text, Handled};
use crate::{appc::PodUuid, pods::PodRequest, registry::Registrant, state::AppState};

/// Registration bodies are manifests.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Peer credentials of a registration-socket connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
}

/// The metrics label of a registration-socket path.
pub fn endpoint(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["health"] => "health",
        ["metrics"] => "metrics",
        ["info"] => "info",
        ["pods"] => "pods",
        ["pods", _] => "pods/{uuid}",
        ["pods", _, _] => "pods/{uuid}/{app}",
        ["keys"] => "keys",
        ["keys", "rotate"] => "keys/rotate",
        [".well-known", "jwks.json"] => ".well-known/jwks.json",
        [".well-known", "spiffe-bundle"] => ".well-known/spiffe-bundle",
        _ => "unknown",
    }
}

/// The content type of Prometheus' text format.
pub const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics as Prometheus text, for the socket and `--metrics-address`.
pub fn metrics_text(state: &AppState) -> String {
    state.metrics.render(&crate::metrics::Gauges {
        pods: state.pods.count_by_state(),
        sources_filtered: state.tenancy.connections.filtered(),
        watch: state.pods.watches().stats(),
        directory: state.directory.as_ref().map(|d| d.snapshot()),
    })
}

pub async fn handle(state: Arc<AppState>, req: Request<Incoming>, peer: Peer) -> Handled {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    let allowed = |s: &AppState| {
        peer.uid == Some(0) || (s.registration_group.is_some() && peer.gid == s.registration_group)
    };
    match segments.as_slice() {
        ["health"] => match method {
            Method::GET => respond(StatusCode::OK, super::TEXT, Bytes::from_static(b"ok")).into(),
            _ => method_not_allowed("GET").into(),
        },
        ["metrics"] => match method {
            Method::GET => respond(
                StatusCode::OK,
                METRICS_TYPE,
                Bytes::from(metrics_text(&state)),
            )
            .into(),
            _ => method_not_allowed("GET").into(),
        },
        [".well-known", "jwks.json"] => match method {
            // Public keys: anyone on the host may read them.
            Method::GET => json(Bytes::from(state.docs.jwks_json())).into(),
            _ => method_not_allowed("GET").into(),
        },
        [".well-known", "spiffe-bundle"] => match method {
            Method::GET => json(Bytes::from(state.svids.bundle_json(&state.docs))).into(),
            _ => method_not_allowed("GET").into(),
        },
        ["info"] => match method {
            Method::GET => json(Bytes::from(
                serde_json::json!({
                    "public_port": state.public_port,
                    "workload_api_port": state.workload_api_port,
                    "identity_mode": state.pods.mode().to_string(),
                    "gc_grace_secs": state.pods.gc_grace().as_secs(),
                    "version": env!("CARGO_PKG_VERSION"),
                })
                .to_string(),
            ))
            .into(),
            _ => method_not_allowed("GET").into(),
        },
        _ if !allowed(&state) => text(
            StatusCode::FORBIDDEN,
            "the registration socket answers only root and --registration-group",
        )
        .into(),
        ["pods"] => match method {
            Method::GET => json(Bytes::from(listing(&state))).into(),
            _ => method_not_allowed("GET").into(),
        },
        ["pods", uuid] => match method {
            Method::PUT => register_pod(&state, req, uuid, peer).await,
            Method::DELETE => match state.pods.unregister(uuid).await {
                Ok(()) => ok(PodUuid::parse(uuid).ok()),
                Err(e) => status_text(e.status(), e.to_string()).into(),
            },
            _ => method_not_allowed("PUT, DELETE").into(),
        },
        ["pods", uuid, app] => match method {
            Method::PUT => {
                let (parts, body) = req.into_parts();
                let body = match read_body(&parts.headers, body, BODY_LIMIT).await {
                    Ok(b) => b,
                    Err(r) => return r.into(),
                };
                match state.pods.register_app(uuid, app, &body).await {
                    Ok(()) => ok(PodUuid::parse(uuid).ok()),
                    Err(e) => status_text(e.status(), e.to_string()).into(),
                }
            }
            _ => method_not_allowed("PUT").into(),
        },
        ["keys"] => match method {
            Method::GET => json(Bytes::from(
                serde_json::to_vec(&serde_json::json!({
                    "hmac": state.keys.list(),
                    "jwt": state.docs.keys.list(),
                }))
                .unwrap_or_default(),
            ))
            .into(),
            _ => method_not_allowed("GET").into(),
        },
        ["keys", "rotate"] => match method {
            Method::POST => rotate(state.clone(), req.uri().query()).await.into(),
            _ => method_not_allowed("POST").into(),
        },
        _ => not_found().into(),
    }
}

/// `POST /keys/rotate[?kind=hmac|jwt|x509]`: HMAC and JWT unless one kind
/// is named; the X.509 CA only when named.
/// Durable (fsync'd) before the answer, off the runtime's workers.
async fn rotate(state: Arc<AppState>, query: Option<&str>) -> hyper::Response<super::Body> {
    let kind = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "kind")
            .map(|(_, v)| v.into_owned())
    });
    let (hmac, jwt, x509) = match kind.as_deref() {
        None => (true, true, false),
        Some("hmac") => (true, false, false),
        Some("jwt") => (false, true, false),
        Some("x509") => (false, false, true),
        Some(other) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("kind {other:?}: expected hmac, jwt or x509"),
            )
        }
    };
    let done = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, String> {
        let mut out = serde_json::Map::new();
        if hmac {
            let id = state.keys.rotate().map_err(|e| e.to_string())?;
            tracing::info!(key_id = id, "HMAC key rotated");
            out.insert("hmac".into(), serde_json::json!({ "id": id }));
        }
        if jwt {
            let kid = state
                .docs
                .keys
                .rotate(crate::jwt::now())
                .map_err(|e| e.to_string())?;
            tracing::info!(kid = %kid, "identity document key rotated");
            if let Err(e) = state.docs.write_jwks_file() {
                tracing::warn!(error = %e, "cannot write the JWK Set file");
            }
            out.insert("jwt".into(), serde_json::json!({ "kid": kid }));
        }
        if x509 {
            let fingerprint = state
                .svids
                .authority
                .rotate()
                .map_err(|e| e.to_string())?;
            tracing::info!(sha256 = %fingerprint, "X.509 CA rotated; the old one stays in the bundle for a day");
            out.insert("x509".into(), serde_json::json!({ "sha256": fingerprint }));
        }
        Ok(serde_json::Value::Object(out))
    })
    .await;
    match done {
        Ok(Ok(v)) => json(Bytes::from(v.to_string())),
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn ok(pod: Option<PodUuid>) -> Handled {
    Handled {
        response: respond(StatusCode::OK, super::TEXT, Bytes::new()),
        pod,
    }
}

async fn register_pod(state: &AppState, req: Request<Incoming>, uuid: &str, peer: Peer) -> Handled {
    let query = req.uri().query().unwrap_or("").to_owned();
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(r) => return r.into(),
    };
    let request = PodRequest {
        uuid,
        token: param("token"),
        netns: param("netns"),
        pid: param("pid"),
        body,
        registrant: Registrant {
            uid: peer.uid,
            pid: peer.pid,
        },
    };
    match state.pods.register_pod(request).await {
        Ok(pod) => ok(Some(pod.uuid)),
        Err(e) => status_text(e.status(), e.to_string()).into(),
    }
}

#[derive(Serialize)]
struct Listing {
    identity_mode: String,
    pods: Vec<crate::pods::PodView>,
    watch: WatchView,
}

#[derive(Serialize)]
struct WatchView {
    watched: usize,
    dumps: u64,
    redumps: u64,
    overruns: u64,
}

fn listing(state: &AppState) -> Vec<u8> {
    let pods = state.pods.registry().all();
    let stats = state.pods.watches().stats();
    let listing = Listing {
        identity_mode: state.pods.mode().to_string(),
        pods: pods.iter().map(|p| state.pods.view(p)).collect(),
        watch: WatchView {
            watched: stats.watched,
            dumps: stats.dumps,
            redumps: stats.redumps,
            overruns: stats.overruns,
        },
    };
    serde_json::to_vec_pretty(&listing).unwrap_or_default()
}
