//! The public, appc-defined API over TCP (SPEC §3).

use std::{net::SocketAddr, sync::Arc};

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use hyper::{
    body::Incoming,
    header::{HeaderValue, RETRY_AFTER},
    Method, Request, StatusCode,
};
use parking_lot::Mutex;

use super::{
    form::Form, json, method_not_allowed, not_found, read_body, respond, text, Body, Handled, TEXT,
};
use crate::{
    appc::{is_ac_identifier, is_ac_name, PodUuid},
    identity::Mode,
    jwt,
    pods::Refused,
    registry::{AnnotationBodies, Pod},
    state::AppState,
    svid,
    tenant::{PodLimiter, Rates, SourceKey, Subject},
};

/// Public request bodies are small forms.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A public endpoint, parsed from the path.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    PodAnnotations,
    PodAnnotation(&'a str),
    PodManifest,
    PodUuid,
    Sign,
    Verify,
    AppAnnotations(&'a str),
    AppAnnotation(&'a str, &'a str),
    AppImageManifest(&'a str),
    AppImageId(&'a str),
    PodIdentityDocument,
    AppIdentityDocument(&'a str),
    PodX509,
    AppX509(&'a str),
}

/// Splits `/{token}/acMetadata/v1/...` (or tokenless `/acMetadata/v1/...`)
/// into the token and the endpoint.
pub fn route(path: &str) -> Option<(Option<&str>, Route<'_>)> {
    let path = path.strip_prefix('/')?;
    let (token, rest) = match path.strip_prefix("acMetadata/") {
        Some(rest) => (None, rest),
        None => {
            let (token, rest) = path.split_once('/')?;
            (Some(token), rest.strip_prefix("acMetadata/")?)
        }
    };
    let rest = rest.strip_prefix("v1/")?;
    let r = if let Some(pod) = rest.strip_prefix("pod/") {
        match pod {
            "annotations" => Route::PodAnnotations,
            "manifest" => Route::PodManifest,
            "uuid" => Route::PodUuid,
            "hmac/sign" => Route::Sign,
            "hmac/verify" => Route::Verify,
            "identity/jwt" => Route::PodIdentityDocument,
            "identity/x509" => Route::PodX509,
            other => Route::PodAnnotation(
                other
                    .strip_prefix("annotations/")
                    .filter(|n| !n.is_empty())?,
            ),
        }
    } else {
        let (app, tail) = rest.strip_prefix("apps/")?.split_once('/')?;
        match tail {
            "annotations" => Route::AppAnnotations(app),
            "image/manifest" => Route::AppImageManifest(app),
            "image/id" => Route::AppImageId(app),
            "identity/jwt" => Route::AppIdentityDocument(app),
            "identity/x509" => Route::AppX509(app),
            other => Route::AppAnnotation(
                app,
                other
                    .strip_prefix("annotations/")
                    .filter(|n| !n.is_empty())?,
            ),
        }
    };
    Some((token, r))
}

impl Route<'_> {
    /// The endpoint without its names, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Route::PodAnnotations => "pod/annotations",
            Route::PodAnnotation(_) => "pod/annotations/{name}",
            Route::PodManifest => "pod/manifest",
            Route::PodUuid => "pod/uuid",
            Route::Sign => "pod/hmac/sign",
            Route::Verify => "pod/hmac/verify",
            Route::AppAnnotations(_) => "apps/{app}/annotations",
            Route::AppAnnotation(..) => "apps/{app}/annotations/{name}",
            Route::AppImageManifest(_) => "apps/{app}/image/manifest",
            Route::AppImageId(_) => "apps/{app}/image/id",
            Route::PodIdentityDocument => "pod/identity/jwt",
            Route::AppIdentityDocument(_) => "apps/{app}/identity/jwt",
            Route::PodX509 => "pod/identity/x509",
            Route::AppX509(_) => "apps/{app}/identity/x509",
        }
    }

    /// Whether the request posts a body.
    fn is_post(&self) -> bool {
        matches!(
            self,
            Route::Sign | Route::Verify | Route::PodX509 | Route::AppX509(_)
        )
    }

    /// Whether it fetches an identity (a JWT or an X509-SVID): those need
    /// `Metadata: true` (SPEC §9, against request forgery).
    fn is_identity(&self) -> bool {
        matches!(
            self,
            Route::PodIdentityDocument
                | Route::AppIdentityDocument(_)
                | Route::PodX509
                | Route::AppX509(_)
        )
    }
}

/// The documents anyone may read, without a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WellKnown {
    Jwks,
    OpenidConfiguration,
    SpiffeBundle,
}

impl WellKnown {
    pub fn of(path: &str) -> Option<Self> {
        match path {
            "/.well-known/jwks.json" => Some(Self::Jwks),
            "/.well-known/openid-configuration" => Some(Self::OpenidConfiguration),
            "/.well-known/spiffe-bundle" => Some(Self::SpiffeBundle),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Jwks => ".well-known/jwks.json",
            Self::OpenidConfiguration => ".well-known/openid-configuration",
            Self::SpiffeBundle => ".well-known/spiffe-bundle",
        }
    }
}

/// The metrics label of a public path.
pub fn endpoint(path: &str) -> &'static str {
    if let Some(w) = WellKnown::of(path) {
        return w.label();
    }
    route(path).map_or("unknown", |(_, r)| r.label())
}

/// The path as logged: every segment that could be a token (tokens are at
/// least 22 characters; no fixed segment of the API is that long) replaced
/// by `***`, wherever it stands, so that `//TOKEN/...` or `/x/../TOKEN`
/// leak nothing. The query is never part of it (it may carry a signature).
/// Formatted only if the line is logged.
pub struct Redacted<'a>(pub &'a str);

/// The shortest token SPEC §4 accepts.
const MIN_TOKEN_LEN: usize = 22;

impl crate::access_log::LogPath for Redacted<'_> {
    fn append_to(&self, out: &mut Vec<u8>) {
        for (i, segment) in self.0.as_bytes().split(|b| *b == b'/').enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            if segment.len() >= MIN_TOKEN_LEN {
                out.extend_from_slice(b"***");
            } else {
                out.extend_from_slice(segment);
            }
        }
    }
}

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::access_log::LogPath;
        let mut out = Vec::with_capacity(self.0.len());
        self.append_to(&mut out);
        // Whole segments of a `str` cut at '/' (or "***"): valid UTF-8.
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

/// One public connection: its peer, and the identity its last request
/// resolved to, reused while nothing it depends on has changed (a keep-alive
/// connection then pays no digest, no lookup, no attribution per request).
/// A request takes a reference to this and to what it caches, never to the
/// shared state or the pod itself: the reference counts it touches are the
/// connection's own, not cache lines every worker writes.
pub struct Conn {
    state: Arc<AppState>,
    peer: SocketAddr,
    source: SourceKey,
    cached: Mutex<Option<Arc<Resolved>>>,
}

/// Who a connection's requests act as, and their rate limiter.
struct Resolved {
    token: Option<Box<str>>,
    generation: u64,
    pod: Arc<Pod>,
    limiter: PodLimiter,
}

impl Conn {
    /// A connection from `peer`, of tenant `source` (as counted at accept).
    pub fn new(state: Arc<AppState>, peer: SocketAddr, source: SourceKey) -> Self {
        Self {
            state,
            peer,
            source,
            cached: Mutex::new(None),
        }
    }

    /// The pod this request acts as, and its rate limiter.
    async fn identity(&self, token: Option<&str>) -> Result<Arc<Resolved>, Refused> {
        let state = &self.state;
        // Read before resolving: a change during the resolution makes the
        // stored answer stale at once.
        let generation = state.pods.generation();
        if let Some(c) = &*self.cached.lock() {
            if c.generation == generation && c.token.as_deref() == token {
                return Ok(c.clone());
            }
        }
        // Boxed: the resolution's future is large and runs only on a
        // connection's first request and after a registry or namespace
        // change; every request's future would otherwise carry it.
        let pod = Box::pin(state.pods.resolve(token, self.peer.ip())).await?;
        let limiter = state.tenancy.rates.pod(&pod.uuid);
        let resolved = Arc::new(Resolved {
            token: token.map(Box::from),
            generation,
            pod,
            limiter,
        });
        *self.cached.lock() = Some(resolved.clone());
        Ok(resolved)
    }
}

/// Why `/.well-known/openid-configuration` is 404 (SPEC §7).
const NO_DISCOVERY: &str = "no OpenID discovery: --jwt-issuer is not an https:// URL (an OIDC client fetches jwks_uri over HTTPS only; serve the issuer's /.well-known/ there)";

pub async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Handled {
    let state = &*conn.state;
    // A cheap clone (shared bytes): the route borrows from it while the
    // request moves on.
    let uri = req.uri().clone();
    if came_through_a_proxy(req.headers()) {
        // A pod's web application made to fetch a URL by someone else
        // must not fetch identities for them (SPEC §9).
        return text(StatusCode::FORBIDDEN, "request came through a proxy").into();
    }
    if let Some(doc) = WellKnown::of(uri.path()) {
        if req.method() != Method::GET {
            return method_not_allowed("GET").into();
        }
        if !state.tenancy.rates.allow_source(&conn.source) {
            return rate_limited(state, Subject::Source(conn.source), "source", None).await;
        }
        return match doc {
            WellKnown::Jwks => json(Bytes::from(state.docs.jwks_json())),
            WellKnown::OpenidConfiguration => match state.docs.openid_configuration() {
                Some(doc) => json(doc),
                None => super::text(StatusCode::NOT_FOUND, NO_DISCOVERY),
            },
            WellKnown::SpiffeBundle => json(Bytes::from(state.svids.bundle_json(&state.docs))),
        }
        .into();
    }
    let Some((token, route)) = route(uri.path()) else {
        return not_found().into();
    };
    let post = route.is_post();
    match (post, req.method()) {
        (true, &Method::POST) | (false, &Method::GET) => {}
        (true, _) => return method_not_allowed("POST").into(),
        (false, _) => return method_not_allowed("GET").into(),
    }
    if state.require_metadata_flavor
        && req
            .headers()
            .get("metadata-flavor")
            .is_none_or(|v| v.as_bytes() != b"AppContainer")
    {
        return text(
            StatusCode::FORBIDDEN,
            "Metadata-Flavor: AppContainer header is required",
        )
        .into();
    }
    if route.is_identity()
        && req
            .headers()
            .get("metadata")
            .is_none_or(|v| v.as_bytes() != b"true")
    {
        return text(StatusCode::BAD_REQUEST, "Metadata: true header is required").into();
    }
    if route == Route::Verify {
        // Any caller may verify any pod's signature (SPEC §3): no pod, so
        // the caller's source pays.
        if !state.tenancy.rates.allow_source(&conn.source) {
            return rate_limited(state, Subject::Source(conn.source), "source", None).await;
        }
        return Box::pin(verify(state, req)).await.into();
    }
    let resolved = match conn.identity(token).await {
        Ok(found) => found,
        Err(refused) => {
            // Refused requests are charged to their source: a flood of them
            // is cut short before it costs more.
            if !state.tenancy.rates.allow_source(&conn.source) {
                return rate_limited(
                    state,
                    Subject::Source(conn.source),
                    "source",
                    refused.claimed,
                )
                .await;
            }
            let reason = refused.reason;
            if reason.status() == 403 {
                let subject = refused
                    .claimed
                    .map_or(Subject::Source(conn.source), Subject::Pod);
                if state.tenancy.refusal_log.first(subject, reason.label()) {
                    let pod = refused.claimed.map(|u| u.to_string()).unwrap_or_default();
                    tracing::warn!(pod = %pod, peer = %conn.peer.ip().to_canonical(), reason = %reason, mode = %state.pods.mode(), "identity refused");
                }
            }
            state.metrics.refusal(reason.label());
            return Handled {
                response: super::status_text(reason.status(), reason.to_string()),
                pod: refused.claimed,
            };
        }
    };
    let pod = &*resolved.pod;
    if !Rates::allow_pod(&resolved.limiter) {
        return rate_limited(state, Subject::Pod(pod.uuid), "pod", Some(pod.uuid)).await;
    }
    let response = match route {
        Route::PodAnnotations => json(pod.annotations.list.clone()),
        Route::PodAnnotation(name) => annotation(&pod.annotations, name, "Pod"),
        Route::PodManifest => json(pod.manifest_body.clone()),
        Route::PodUuid => respond(StatusCode::OK, TEXT, pod.uuid_body.clone()),
        // Boxed, like `verify`: reading a body takes a future several
        // times the size of the rest, which every GET would carry.
        Route::Sign => Box::pin(sign(state, pod, req)).await,
        Route::AppAnnotations(app) => with_app(pod, app, |a| json(a.annotations.list.clone())),
        Route::AppAnnotation(app, name) => {
            with_app(pod, app, |a| annotation(&a.annotations, name, "App"))
        }
        Route::AppImageManifest(app) => with_app(pod, app, |a| json(a.image_manifest.clone())),
        Route::AppImageId(app) => with_app(pod, app, |a| {
            respond(StatusCode::OK, TEXT, a.image_id.clone())
        }),
        Route::PodIdentityDocument => identity_document(state, pod, None, uri.query()),
        Route::AppIdentityDocument(app) => identity_document(state, pod, Some(app), uri.query()),
        Route::PodX509 => Box::pin(x509_svid(state, pod, None, req)).await,
        Route::AppX509(app) => Box::pin(x509_svid(state, pod, Some(app), req)).await,
        Route::Verify => not_found(),
    };
    Handled {
        response,
        pod: Some(pod.uuid),
    }
}

/// Whether a proxy says it forwarded the request. The names are parsed
/// once: a lookup by `&str` parses its name on every request.
fn came_through_a_proxy(headers: &hyper::HeaderMap) -> bool {
    use hyper::header::{HeaderName, FORWARDED};
    const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
    [FORWARDED, X_FORWARDED_FOR, X_REAL_IP]
        .iter()
        .any(|h| headers.contains_key(h))
}

/// Refuses identities in `token` mode, and an app the pod does not have;
/// `None` when the request may have one.
fn identity_refused(
    state: &AppState,
    pod: &Pod,
    app: Option<&str>,
) -> Option<hyper::Response<Body>> {
    if state.pods.mode() == Mode::Token {
        // An identity is checked offline as proof of where its bearer
        // runs: rkt's token mode checks nothing but the token.
        return Some(text(
            StatusCode::FORBIDDEN,
            "identity documents need --identity token+netns or netns",
        ));
    }
    let app = app?;
    if !is_ac_name(app) {
        return Some(text(
            StatusCode::BAD_REQUEST,
            format!("App name {app:?} is not a valid AC Name"),
        ));
    }
    if pod.manifest.app(app).is_none() {
        return Some(text(StatusCode::NOT_FOUND, "app not found"));
    }
    None
}

/// `POST .../identity/x509` with a PEM CSR: an X509-SVID for the pod (or
/// one of its apps) and the CSR's key, as a PEM chain.
async fn x509_svid(
    state: &AppState,
    pod: &Pod,
    app: Option<&str>,
    req: Request<Incoming>,
) -> hyper::Response<Body> {
    if let Some(refused) = identity_refused(state, pod, app) {
        return refused;
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, svid::csr::MAX_CSR).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let key = match svid::csr::public_key(&body) {
        Ok(k) => k,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let id = state.docs.config.subject(&pod.uuid, app);
    match state.svids.authority.issue(&id, &key, state.svids.ttl) {
        Ok(der) => {
            // The SVID, then the chain up to (not including) the root.
            let mut chain = svid::pem("CERTIFICATE", &der);
            for c in state.svids.authority.chain() {
                chain.push_str(&svid::pem("CERTIFICATE", &c));
            }
            respond(
                StatusCode::OK,
                "application/pem-certificate-chain",
                Bytes::from(chain),
            )
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET .../identity/jwt?audience=AUD`: a document for the pod (or one of
/// its apps), to a request that passed the identity check of its mode.
fn identity_document(
    state: &AppState,
    pod: &Pod,
    app: Option<&str>,
    query: Option<&str>,
) -> hyper::Response<Body> {
    if let Some(refused) = identity_refused(state, pod, app) {
        return refused;
    }
    let mut given = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .filter(|(k, _)| k == "audience")
        .map(|(_, v)| v.into_owned());
    let audience = given.next();
    // Two audiences: which one the caller meant is not ours to guess.
    if given.next().is_some() {
        return text(StatusCode::BAD_REQUEST, "audience is given more than once");
    }
    let audience = match jwt::check_audience(audience.as_deref()) {
        Ok(a) => a,
        Err(why) => return text(StatusCode::BAD_REQUEST, why),
    };
    let assurance = if pod.lease().is_some() {
        jwt::Assurance::Verified
    } else {
        jwt::Assurance::HostNetwork
    };
    let docs = &state.docs;
    match jwt::issue(
        &docs.keys,
        &docs.config,
        &pod.uuid,
        app,
        assurance,
        audience,
        jwt::now(),
    ) {
        Ok(token) => respond(StatusCode::OK, "application/jwt", Bytes::from(token)),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// How long a request over its rate waits for its 429. A flood then costs
/// the agent one answer per connection per second, not one per request:
/// the flooder's own connections (bounded per source) are what it slows,
/// not its neighbours' CPU.
const TARPIT: std::time::Duration = std::time::Duration::from_secs(1);

/// 429 with `Retry-After`, counted, logged at most once per window, and
/// sent after [`TARPIT`]. Counted and logged at once; the wait is a small
/// future (its timer boxed), so that the request future of every served
/// request does not carry a timer for each place a refusal can happen.
fn rate_limited(
    state: &AppState,
    subject: Subject,
    what: &'static str,
    pod: Option<PodUuid>,
) -> impl std::future::Future<Output = Handled> {
    state.metrics.refused("rate-limit", what);
    if state.tenancy.refusal_log.first(subject, "rate-limit") {
        tracing::warn!(subject = %subject, "rate limit exceeded");
    }
    let tarpit = Box::pin(tokio::time::sleep(TARPIT));
    async move {
        tarpit.await;
        let mut response = text(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        Handled { response, pod }
    }
}

fn annotation(bodies: &AnnotationBodies, name: &str, kind: &str) -> hyper::Response<Body> {
    if !is_ac_identifier(name) {
        let what = if kind == "App" {
            "App annotation name"
        } else {
            "Pod annotation"
        };
        return text(
            StatusCode::BAD_REQUEST,
            format!("{what} {name:?} is not a valid AC Identifier"),
        );
    }
    match bodies.values.get(name) {
        Some(v) => respond(StatusCode::OK, TEXT, v.clone()),
        None => text(
            StatusCode::NOT_FOUND,
            format!("{kind} annotation {name:?} not found"),
        ),
    }
}

fn with_app(
    pod: &Pod,
    app: &str,
    f: impl FnOnce(&crate::registry::App) -> hyper::Response<Body>,
) -> hyper::Response<Body> {
    if !is_ac_name(app) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("App name {app:?} is not a valid AC Name"),
        );
    }
    match pod.apps.get(app) {
        Some(a) => f(a),
        None => text(StatusCode::NOT_FOUND, "app not found"),
    }
}

async fn read_form(req: Request<Incoming>) -> Result<Form, hyper::Response<Body>> {
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, BODY_LIMIT).await?;
    Form::parse(&parts.headers, body, parts.uri.query())
        .await
        .map_err(|e| text(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn sign(state: &AppState, pod: &Pod, req: Request<Incoming>) -> hyper::Response<Body> {
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(content) = form.get("content") else {
        return text(StatusCode::BAD_REQUEST, "content field is missing");
    };
    respond(
        StatusCode::OK,
        TEXT,
        Bytes::from(state.keys.sign(&pod.uuid, content)),
    )
}

async fn verify(state: &AppState, req: Request<Incoming>) -> hyper::Response<Body> {
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let uuid = form
        .get("uuid")
        .and_then(|u| std::str::from_utf8(u).ok())
        .and_then(|u| PodUuid::parse(u).ok());
    let Some(uuid) = uuid else {
        return text(
            StatusCode::BAD_REQUEST,
            "uuid field is missing or malformed",
        );
    };
    let Ok(signature) = STANDARD.decode(form.get("signature").unwrap_or_default()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "signature field is not valid base64",
        );
    };
    let content = form.get("content").unwrap_or_default();
    if state.keys.verify(&uuid, content, &signature) {
        respond(StatusCode::OK, TEXT, Bytes::new())
    } else {
        text(StatusCode::FORBIDDEN, "signature is not valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn routes() {
        fn p(s: &str) -> Option<(Option<String>, Route<'_>)> {
            route(s).map(|(t, r)| (t.map(str::to_owned), r))
        }
        let t = Some(T.to_owned());
        assert_eq!(
            p(&format!("/{T}/acMetadata/v1/pod/uuid")),
            Some((t.clone(), Route::PodUuid))
        );
        assert_eq!(
            p(&format!(
                "/{T}/acMetadata/v1/pod/annotations/example.com/owner"
            )),
            Some((t.clone(), Route::PodAnnotation("example.com/owner")))
        );
        assert_eq!(
            p(&format!("/{T}/acMetadata/v1/apps/web/annotations/a/b")),
            Some((t.clone(), Route::AppAnnotation("web", "a/b")))
        );
        assert_eq!(
            p(&format!("/{T}/acMetadata/v1/apps/web/image/id")),
            Some((t.clone(), Route::AppImageId("web")))
        );
        assert_eq!(
            p("/acMetadata/v1/pod/manifest"),
            Some((None, Route::PodManifest))
        );
        assert_eq!(
            p(&format!("/{T}/acMetadata/v1/pod/hmac/verify")),
            Some((t, Route::Verify))
        );
        for bad in [
            "/",
            "/x",
            &format!("/{T}/acMetadata/v2/pod/uuid"),
            &format!("/{T}/acMetadata/v1/pod/annotations/"),
            &format!("/{T}/acMetadata/v1/pod/other"),
            &format!("/{T}/acMetadata/v1/apps/web"),
            &format!("/{T}/acMetadata/v1/apps/web/image"),
            &format!("/{T}/x/acMetadata/v1/pod/uuid"),
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn redaction_hides_tokens() {
        let redact = |p: &str| Redacted(p).to_string();
        assert_eq!(
            redact(&format!("/{T}/acMetadata/v1/pod/uuid")),
            "/***/acMetadata/v1/pod/uuid"
        );
        assert_eq!(redact("/acMetadata/v1/pod/uuid"), "/acMetadata/v1/pod/uuid");
        assert_eq!(redact(&format!("/{T}/nope")), "/***/nope");
        assert_eq!(redact(&format!("/{T}")), "/***");
        // Whatever the path's shape, no segment that could be a token
        // (22 characters or more) reaches the log.
        for shape in [
            format!("//{T}/acMetadata/v1/pod/uuid"),
            format!("/x/../{T}/acMetadata/v1/pod/uuid"),
            format!("/acMetadata/../{T}/acMetadata/v1/pod/uuid"),
            format!("/acMetadata/v1/apps/{T}/annotations"),
            format!("/{T}%2F/acMetadata/v1/pod/uuid"),
            format!("/%{T}"),
            T.to_string(),
        ] {
            let shown = redact(&shape);
            assert!(!shown.contains(T), "{shape} -> {shown}");
            assert!(!shown.contains(&T[..22]), "{shape} -> {shown}");
        }
        assert_eq!(
            redact(&format!("//{T}/acMetadata/v1/pod/uuid")),
            "//***/acMetadata/v1/pod/uuid"
        );
        // Short segments (app and annotation names) are kept.
        assert_eq!(
            redact(&format!(
                "/{T}/acMetadata/v1/apps/web/annotations/example.com/tier"
            )),
            "/***/acMetadata/v1/apps/web/annotations/example.com/tier"
        );
    }
}
