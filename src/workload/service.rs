//! The Workload API's methods, for one connection: every call is attested
//! by the connection's source address (the tokenless rule of SPEC §5),
//! and must carry `workload.spiffe.io: true`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    sync::Arc,
    time::Duration,
};

use rcgen::KeyPair;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    api::spiffe_workload_a_p_i_server::SpiffeWorkloadAPI, claims::to_struct, messages::*,
    streams::StreamSlot,
};
use crate::{
    appc::PodUuid,
    jwt,
    registry::Pod,
    state::AppState,
    svid::bundle,
    tenant::{Rates, SourceKey},
};

/// How often a stream looks again at its caller and the bundle.
const RECHECK: Duration = Duration::from_millis(500);

/// What a call costs of its pod's rate.
#[derive(Clone, Copy)]
enum Cost {
    One,
    /// An SVID (a key and a signature) per identity of the pod.
    PerIdentity,
}

/// Who is on the other end of a Workload API connection.
#[derive(Clone)]
pub enum Caller {
    /// A TCP peer: attested by its source address.
    Tcp(SocketAddr),
    /// A Unix socket peer: attested by its pidfd's network namespace.
    Unix(Arc<UnixPeer>),
}

/// A Unix socket peer: the socket (to ask for its pidfd at each call) and
/// the namespace file (dev, inode) it was in when it connected.
pub struct UnixPeer {
    pub socket: OwnedFd,
    pub at_connect: (u64, u64),
}

/// The Workload API as one connection's caller sees it.
pub struct WorkloadApi {
    state: Arc<AppState>,
    caller: Caller,
}

impl WorkloadApi {
    pub fn new(state: Arc<AppState>, caller: Caller) -> Self {
        Self { state, caller }
    }

    /// The header check, then the caller's pod, charged `cost` requests
    /// of its rate (SPEC §6: a call issuing an SVID per identity costs one
    /// per identity). A refused caller is charged to its source.
    async fn caller<T>(&self, request: &Request<T>, cost: Cost) -> Result<Arc<Pod>, Status> {
        let header = request.metadata().get("workload.spiffe.io");
        if header.is_none_or(|v| v.as_bytes() != b"true") {
            return Err(Status::invalid_argument(
                "security header missing from request (workload.spiffe.io: true)",
            ));
        }
        let state = &self.state;
        let pod = match attest(state, &self.caller).await {
            Ok(pod) => pod,
            Err(refused) => {
                let source = match &self.caller {
                    Caller::Tcp(peer) => SourceKey::attributed(peer.ip(), state.pods.watches()),
                    Caller::Unix(_) => SourceKey::Port(0),
                };
                if !state.tenancy.rates.allow_source(&source) {
                    return Err(rate_limited(state, "source").await);
                }
                return Err(refused);
            }
        };
        let n = match cost {
            Cost::One => 1,
            Cost::PerIdentity => pod.manifest.apps.len().min(MAX_IDENTITIES - 1) as u32 + 1,
        };
        if !Rates::allow_pod_n(&state.tenancy.rates.pod(&pod.uuid), n) {
            return Err(rate_limited(state, "pod").await);
        }
        Ok(pod)
    }

    /// Opens a stream of `pod` (one of its bounded slots): see [`stream`].
    fn open_stream<T, F, V>(
        &self,
        pod: Arc<Pod>,
        refresh_after: Option<Duration>,
        version: V,
        make: F,
    ) -> Result<Response<ReceiverStream<Result<T, Status>>>, Status>
    where
        T: Send + 'static,
        F: Fn(&AppState, &Pod) -> Result<T, Status> + Send + Sync + 'static,
        V: Fn(&AppState) -> Vec<Vec<u8>> + Send + 'static,
    {
        let slot = self.state.workload_streams.open(pod.uuid)?;
        Ok(Response::new(stream(
            self.state.clone(),
            self.caller.clone(),
            pod,
            slot,
            refresh_after,
            version,
            make,
        )))
    }

    fn trust_domain_id(&self) -> String {
        format!("spiffe://{}", self.state.docs.config.trust_domain)
    }
}

/// `ResourceExhausted`, counted, after a second: as on the public port, a
/// flood costs the agent one answer per stream per second.
async fn rate_limited(state: &AppState, what: &'static str) -> Status {
    state.metrics.refused("rate-limit", what);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Status::resource_exhausted("rate limit exceeded")
}

/// The pod `caller` is, or `PermissionDenied` with why.
async fn attest(state: &AppState, caller: &Caller) -> Result<Arc<Pod>, Status> {
    match caller {
        Caller::Tcp(peer) => attest_address(state, *peer).await,
        Caller::Unix(peer) => attest_unix(state, peer).await,
    }
}

/// The namespace file (dev, inode) a Unix peer is in now.
pub async fn peer_namespace(socket: &OwnedFd) -> Result<(u64, u64), String> {
    let socket = socket.try_clone().map_err(|e| e.to_string())?;
    // Reads /proc and opens a file: off the async workers (no setns).
    tokio::task::spawn_blocking(move || {
        netns::NetnsFile::of_peer(socket.as_fd())
            .map(|ns| (ns.dev(), ns.ino()))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The one live pod whose namespace (the very instance the agent holds
/// open) the peer is in, and was in when it connected.
async fn attest_unix(state: &AppState, peer: &UnixPeer) -> Result<Arc<Pod>, Status> {
    let now = peer_namespace(&peer.socket).await.map_err(|e| {
        Status::permission_denied(format!("cannot tell the caller's namespace: {e}"))
    })?;
    if now != peer.at_connect {
        return Err(Status::permission_denied(
            "the caller has moved to another network namespace since it connected",
        ));
    }
    let Some(mut pods) = state.pods.pods_in_namespace(now.0, now.1) else {
        return Err(Status::permission_denied(
            "the Workload API attests callers only in --identity token+netns or netns",
        ));
    };
    match pods.len() {
        1 => Ok(pods.remove(0)),
        0 => Err(Status::permission_denied(
            "the caller's network namespace is no registered pod's",
        )),
        _ => Err(Status::permission_denied(
            "the caller's network namespace belongs to more than one pod",
        )),
    }
}

/// The pod a caller from `peer` is (the tokenless rule of SPEC §5).
async fn attest_address(state: &AppState, peer: SocketAddr) -> Result<Arc<Pod>, Status> {
    match state.pods.attest(peer.ip()).await {
        None => Err(Status::permission_denied(
            "the Workload API attests callers only in --identity token+netns or netns",
        )),
        Some(Err(refusal)) => {
            state.metrics.refusal(refusal.label());
            Err(Status::permission_denied(refusal.to_string()))
        }
        Some(Ok(pod)) => Ok(pod),
    }
}

/// At most this many identities per message: the pod's and its first
/// apps' (a manifest may name thousands of apps; each identity costs a key
/// and a signature).
pub const MAX_IDENTITIES: usize = 64;

/// The SPIFFE IDs a pod is entitled to: its own, then one per app (the
/// first [`MAX_IDENTITIES`] in all), with the app's name.
fn identities(state: &AppState, pod: &Pod) -> Vec<(String, Option<String>)> {
    let config = &state.docs.config;
    std::iter::once((config.subject(&pod.uuid, None), None))
        .chain(pod.manifest.apps.iter().take(MAX_IDENTITIES - 1).map(|a| {
            (
                config.subject(&pod.uuid, Some(&a.name)),
                Some(a.name.clone()),
            )
        }))
        .collect()
}

/// A fresh key and X509-SVID for each of the pod's identities.
fn x509_response(state: &AppState, pod: &Pod) -> Result<X509SvidResponse, Status> {
    let bundle = bundle::concatenated(&state.svids.authorities());
    let mut svids = Vec::new();
    for (id, _) in identities(state, pod) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Status::internal(e.to_string()))?;
        let der = state
            .svids
            .authority
            .issue(&id, &key, state.svids.ttl)
            .map_err(|e| Status::internal(e.to_string()))?;
        // The SVID first, then the operator's intermediates (if any).
        let mut chain = der;
        for c in state.svids.authority.chain() {
            chain.extend_from_slice(&c);
        }
        svids.push(X509Svid {
            spiffe_id: id,
            x509_svid: chain,
            x509_svid_key: key.serialize_der(),
            bundle: bundle.clone(),
            hint: String::new(),
        });
    }
    Ok(X509SvidResponse {
        svids,
        ..Default::default()
    })
}

/// What a stream's caller still is: its pod, bound to the same namespace.
fn same_caller(before: &Pod, now: &Pod) -> bool {
    before.uuid == now.uuid && before.lease().map(|l| l.cookie()) == now.lease().map(|l| l.cookie())
}

/// Runs a stream for `pod`'s caller at `peer`: `make` is sent at once and
/// again whenever `refresh_after` has passed or `version` changes; the
/// stream ends, with `PermissionDenied`, when the caller is no longer the
/// pod (unregistered, its namespace gone, the address now another's).
fn stream<T, F, V>(
    state: Arc<AppState>,
    caller: Caller,
    pod: Arc<Pod>,
    slot: StreamSlot,
    refresh_after: Option<Duration>,
    version: V,
    make: F,
) -> ReceiverStream<Result<T, Status>>
where
    T: Send + 'static,
    F: Fn(&AppState, &Pod) -> Result<T, Status> + Send + Sync + 'static,
    V: Fn(&AppState) -> Vec<Vec<u8>> + Send + 'static,
{
    // One message in flight at most: nothing is made ahead of a client
    // that does not read.
    let (tx, rx) = mpsc::channel(1);
    let make = Arc::new(make);
    tokio::spawn(async move {
        let _slot = slot;
        loop {
            // Room for the next message first: a client that stops reading
            // (its flow-control window shut) holds the stream no longer
            // than STALLED, and is sent nothing it did not take.
            let permit = tokio::select! {
                p = tx.reserve() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = tokio::time::sleep(STALLED) => return,
            };
            // Still the caller, just before anything is made for it.
            if !still_the_caller(&state, &caller, &pod).await {
                permit.send(Err(gone(&pod)));
                return;
            }
            let seen = version(&state);
            // Keys and signatures: off the async workers.
            let (st, p, m) = (state.clone(), pod.clone(), make.clone());
            let message = tokio::task::spawn_blocking(move || m(&st, &p))
                .await
                .unwrap_or_else(|e| Err(Status::internal(e.to_string())));
            let failed = message.is_err();
            permit.send(message);
            if failed {
                return;
            }
            let due = refresh_after.map(|d| tokio::time::Instant::now() + d);
            // What the attestation last saw. A TCP caller's attestation can
            // change only with the registry or the host's view, which move
            // the generation (the public API caches resolutions the same
            // way): thousands of idle streams then cost an atomic read each.
            // A Unix caller is looked at each time (its process may move).
            let mut attested = None;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next_recheck()) => {}
                    () = tx.closed() => return,
                }
                // Read before attesting: a change meanwhile is seen next time.
                let generation = state.pods.generation();
                let unchanged = matches!(caller, Caller::Tcp(_)) && attested == Some(generation);
                if !unchanged {
                    if !still_the_caller(&state, &caller, &pod).await {
                        // The client may not read it; the stream ends anyway.
                        let _ = tx.try_send(Err(gone(&pod)));
                        return;
                    }
                    attested = Some(generation);
                }
                if due.is_some_and(|d| tokio::time::Instant::now() >= d) || version(&state) != seen
                {
                    break;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The next instant on a grid of [`RECHECK`] steps shared by every stream:
/// the runtime then wakes once a step for all the streams, not once for
/// each (with 2,000 streams, waking for each cost the agent 6 % of a core).
fn next_recheck() -> tokio::time::Instant {
    static GRID: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let origin = *GRID.get_or_init(tokio::time::Instant::now);
    let steps = origin.elapsed().as_nanos() / RECHECK.as_nanos() + 1;
    origin + RECHECK * u32::try_from(steps).unwrap_or(u32::MAX)
}

/// How long a stream waits for its client to take a message.
const STALLED: Duration = Duration::from_secs(10);

async fn still_the_caller(state: &AppState, caller: &Caller, pod: &Pod) -> bool {
    matches!(attest(state, caller).await, Ok(now) if same_caller(pod, &now))
}

fn gone(pod: &Pod) -> Status {
    Status::permission_denied(format!(
        "pod {} is no longer the caller (unregistered, or its namespace is gone)",
        pod.uuid
    ))
}

/// What a change of the X.509 bundle looks like.
fn x509_version(state: &AppState) -> Vec<Vec<u8>> {
    state.svids.authorities()
}

/// What a change of the JWT keys looks like.
fn jwt_version(state: &AppState) -> Vec<Vec<u8>> {
    vec![jwks_json(state)]
}

/// The trust domain's JWT keys (this node's and, with `--etcd`, every
/// other node's), as a JWK Set.
fn jwks_json(state: &AppState) -> Vec<u8> {
    serde_json::to_vec(&state.svids.jwt_keys(&state.docs)).unwrap_or_default()
}

fn jwt_bundles(state: &AppState, td: &str) -> JwtBundlesResponse {
    JwtBundlesResponse {
        bundles: HashMap::from([(td.to_owned(), jwks_json(state))]),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadAPI for WorkloadApi {
    type FetchX509SVIDStream = ReceiverStream<Result<X509SvidResponse, Status>>;
    type FetchX509BundlesStream = ReceiverStream<Result<X509BundlesResponse, Status>>;
    type FetchJWTBundlesStream = ReceiverStream<Result<JwtBundlesResponse, Status>>;

    async fn fetch_x509_svid(
        &self,
        request: Request<X509SvidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let pod = self.caller(&request, Cost::PerIdentity).await?;
        // Again at half the SVIDs' life (SPEC §9), and on a bundle change.
        let half = self.state.svids.ttl / 2;
        self.open_stream(pod, Some(half), x509_version, x509_response)
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let pod = self.caller(&request, Cost::One).await?;
        let td = self.trust_domain_id();
        self.open_stream(pod, None, x509_version, move |state, _| {
            Ok(X509BundlesResponse {
                crl: Vec::new(),
                bundles: HashMap::from([(
                    td.clone(),
                    bundle::concatenated(&state.svids.authorities()),
                )]),
            })
        })
    }

    async fn fetch_jwt_svid(
        &self,
        request: Request<JwtSvidRequest>,
    ) -> Result<Response<JwtSvidResponse>, Status> {
        let pod = self.caller(&request, Cost::PerIdentity).await?;
        let request = request.into_inner();
        let audience = match request.audience.as_slice() {
            [one] => jwt::check_audience(Some(one)).map_err(Status::invalid_argument)?,
            [] => return Err(Status::invalid_argument("audience is required")),
            _ => {
                return Err(Status::invalid_argument(
                    "one audience per JWT-SVID: ask once per audience",
                ))
            }
        };
        let wanted = (!request.spiffe_id.is_empty()).then_some(request.spiffe_id.as_str());
        let mut svids = Vec::new();
        for (id, app) in identities(&self.state, &pod) {
            if wanted.is_some_and(|w| w != id) {
                continue;
            }
            let token = issue_jwt(&self.state, &pod.uuid, app.as_deref(), audience)?;
            svids.push(JwtSvid {
                spiffe_id: id,
                svid: token,
                hint: String::new(),
            });
        }
        if svids.is_empty() {
            return Err(Status::permission_denied(
                "the caller is not entitled to that SPIFFE ID",
            ));
        }
        Ok(Response::new(JwtSvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let pod = self.caller(&request, Cost::One).await?;
        let td = self.trust_domain_id();
        self.open_stream(pod, None, jwt_version, move |state, _| {
            Ok(jwt_bundles(state, &td))
        })
    }

    async fn validate_jwt_svid(
        &self,
        request: Request<ValidateJwtSvidRequest>,
    ) -> Result<Response<ValidateJwtSvidResponse>, Status> {
        self.caller(&request, Cost::One).await?;
        let request = request.into_inner();
        if request.audience.is_empty() || request.svid.is_empty() {
            return Err(Status::invalid_argument("audience and svid are required"));
        }
        // Any node's JWT-SVID of the trust domain.
        let keys = self.state.svids.jwt_keys(&self.state.docs);
        let claims = jwt::verify(&request.svid, &keys, &request.audience, jwt::now())
            .map_err(Status::invalid_argument)?;
        let spiffe_id = claims["sub"].as_str().unwrap_or_default().to_owned();
        Ok(Response::new(ValidateJwtSvidResponse {
            spiffe_id,
            claims: Some(to_struct(&claims)),
        }))
    }
}

fn issue_jwt(
    state: &AppState,
    pod: &PodUuid,
    app: Option<&str>,
    audience: &str,
) -> Result<String, Status> {
    let docs = &state.docs;
    // Attested by its namespace: a pod of the host's network is never a
    // Workload API caller.
    jwt::issue(
        &docs.keys,
        &docs.config,
        pod,
        app,
        jwt::Assurance::Verified,
        audience,
        jwt::now(),
    )
    .map_err(|e| Status::internal(e.to_string()))
}
