//! etcd's JSON gateway (`POST /v3/...`, served on every member's client
//! port since etcd 3.4) over HTTP/1.1, with failover between members.
//!
//! Why the gateway and not a gRPC crate: the gRPC clients need `protoc` at
//! build time (a system package the quick start should not need), and the
//! one we used (`etcd-client`) kept a balanced channel that did not leave a
//! dead member: with one member of three SIGKILLed, every agent stopped
//! publishing until its lease expired (etcd-client issue #12 leaves the
//! failover to the application). Here the failover is ours, in one place:
//!
//! - one connection per member, opened on first use and dropped after any
//!   failure (a half-dead connection is never reused);
//! - a call goes to the member that last answered; when that member fails
//!   (refused, reset, no answer within a share of the call's time, or
//!   etcd's own "unavailable"), the next member is tried, round after
//!   round, until the call's deadline;
//! - a member that answers becomes the first choice of the next call.
//!
//! Every call we make is safe to repeat: reads, lease grants (an unused
//! lease expires), keep-alives, revocations, and transactions that are
//! fenced and write the same values again.
//!
//! `https://` members are reached over TLS (rustls); with a user, each
//! member's connection authenticates first (`/v3/auth/authenticate`) and
//! sends the token it gets: etcd's simple tokens are valid only on the
//! member that gave them, so each member has its own. A certificate or a
//! password etcd refuses is one clear error, the same on every member.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{client::conn::http1::SendRequest, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::{net::TcpStream, time::Instant};
use tokio_rustls::TlsConnector;

use super::{super::store::StoreError, access::Access, tokens::Token};

/// The shortest time one member is given before the next is tried.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);
/// The first pause between two rounds over every member (an election
/// takes about a second; no point in hammering). Pauses double and are
/// jittered, so that after an outage a fleet's calls in flight do not all
/// reach the returning etcd in the same instant.
const ROUND_PAUSE: Duration = Duration::from_millis(100);
const ROUND_PAUSE_CAP: Duration = Duration::from_secs(2);

/// The longest one authentication is waited for, over calls: far beyond
/// a call's share of a member, since giving up on it wastes the check.
const AUTHENTICATION_LIMIT: Duration = Duration::from_secs(30);

/// gRPC status codes (in the gateway's error bodies) that mean "this
/// member cannot serve now; another may": UNAVAILABLE (no leader, stopping,
/// too many requests), DEADLINE_EXCEEDED (a request timed out in raft).
const RETRY_ELSEWHERE: [i64; 2] = [14, 4];

/// Why one member did not give an answer.
pub(super) enum Attempt {
    /// Try another member (and drop this connection).
    Elsewhere(String),
    /// An answer from etcd that another member would give too.
    Final(StoreError),
}

struct Member {
    /// `host:port`.
    authority: String,
    /// The host, for TLS's server name.
    host: String,
    tls: bool,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// This member's auth token (`Some("")`: etcd has auth off).
    token: Option<String>,
}

/// Members of one etcd cluster, reached through their JSON gateway.
pub struct Gateway {
    members: Vec<Member>,
    /// The member tried first.
    current: usize,
    /// Bound of a whole call, over every member.
    timeout: Duration,
    /// Largest body accepted.
    max_body: usize,
    access: Access,
}

impl Gateway {
    /// `endpoints` are `http://host:port` or `https://host:port` (as
    /// `cli::parse_endpoints` normalises them). Connects lazily.
    pub fn new(endpoints: &[String], timeout: Duration, max_body: usize, access: Access) -> Self {
        let members = endpoints
            .iter()
            .map(|e| {
                let (tls, rest) = match e.strip_prefix("https://") {
                    Some(rest) => (true, rest),
                    None => (false, e.trim_start_matches("http://")),
                };
                let authority = rest.trim_end_matches('/').to_owned();
                let host = authority
                    .rsplit_once(':')
                    .map_or(authority.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                Member {
                    authority,
                    host,
                    tls,
                    sender: None,
                    token: None,
                }
            })
            .collect();
        Self {
            members,
            current: 0,
            timeout,
            max_body,
            access,
        }
    }

    /// Tries member `i` (modulo their number) first from now on.
    pub fn prefer(&mut self, i: usize) {
        self.current = i % self.members.len().max(1);
    }

    /// The call's time bound.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs `body` to `path` (e.g. `/v3/kv/range`) and returns the
    /// answer's JSON, failing over between members until the deadline.
    pub async fn call(&mut self, path: &str, body: &Value) -> Result<Value, StoreError> {
        self.call_as(path, body).await
    }

    /// [`Gateway::call`], with the answer read into `T`: a large answer
    /// (a page of a range) is read without building a JSON tree.
    pub async fn call_as<T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &Value,
    ) -> Result<T, StoreError> {
        let answer = self.call_bytes(path, body).await?;
        serde_json::from_slice(&answer).map_err(|e| {
            StoreError::Etcd(format!(
                "an answer of etcd on {path} is not as expected: {e}"
            ))
        })
    }

    /// The answer of a successful call, as bytes (one JSON object).
    async fn call_bytes(&mut self, path: &str, body: &Value) -> Result<Bytes, StoreError> {
        if self.members.is_empty() {
            return Err(StoreError::Etcd("no etcd endpoint".into()));
        }
        let body = Bytes::from(body.to_string());
        let deadline = Instant::now() + self.timeout;
        let n = self.members.len();
        let share = (self.timeout / n as u32).max(MIN_ATTEMPT);
        let mut last = String::from("no endpoint");
        let mut pauses = super::super::backoff::Backoff::new(ROUND_PAUSE, ROUND_PAUSE_CAP);
        loop {
            for _ in 0..n {
                let now = Instant::now();
                if now >= deadline {
                    return Err(self.gave_up(&last));
                }
                let i = self.current;
                let limit = share.min(deadline - now);
                let attempt = tokio::time::timeout(limit, self.attempt(i, path, body.clone()));
                match attempt.await {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(Attempt::Final(e))) => return Err(e),
                    Ok(Err(Attempt::Elsewhere(why))) => {
                        last = format!("{}: {why}", self.members[i].authority)
                    }
                    Err(_) => {
                        last = format!("{}: no answer within {limit:?}", self.members[i].authority)
                    }
                }
                // Never reuse a connection that failed or is mid-request.
                // Its token is kept: a member that restarted says it does
                // not know it, and it is replaced then (below). Dropping it
                // on every failure made each timeout cost etcd a password
                // check (bcrypt, tens of ms), and a fleet whose calls time
                // out after a leader's death kept etcd too busy checking
                // passwords to renew its leases.
                self.members[i].sender = None;
                self.current = (i + 1) % n;
            }
            let now = Instant::now();
            let pause = pauses.next_jittered();
            if now + pause >= deadline {
                return Err(self.gave_up(&last));
            }
            tokio::time::sleep(pause).await;
        }
    }

    fn gave_up(&self, last: &str) -> StoreError {
        if self.members.len() > 1 {
            StoreError::Etcd(format!(
                "no member answered within {:?} (last: {last})",
                self.timeout
            ))
        } else {
            StoreError::Etcd(last.to_owned())
        }
    }

    async fn attempt(&mut self, i: usize, path: &str, body: Bytes) -> Result<Bytes, Attempt> {
        // A token that expired (etcd's simple tokens do after 5 minutes
        // unused) or that a restarted member does not know is replaced:
        // by the one the other clients of this access already got in its
        // place, and if that one is refused too, by a new one. A member
        // that refuses a token it has just made is restarting again: the
        // call goes to another member (ending here would end a publisher's
        // session as refused).
        let mut refused: Option<String> = None;
        for _ in 0..3 {
            let mut new = false;
            if self.access.user.is_some() && self.members[i].token.is_none() {
                let token = self.token(i, refused.as_deref()).await?;
                new = token.new;
                self.members[i].token = Some(token.value);
            }
            if self.members[i]
                .sender
                .as_ref()
                .is_none_or(|s| s.is_closed())
            {
                let m = &self.members[i];
                let sender = connect(&m.authority, &m.host, self.tls_for(i)?).await?;
                self.members[i].sender = Some(sender);
            }
            let token = self.members[i].token.clone().filter(|t| !t.is_empty());
            match self.post(i, path, body.clone(), token.as_deref()).await {
                Err(Attempt::Final(StoreError::Status {
                    code: UNAUTHENTICATED,
                    ..
                })) if self.access.user.is_some() => {
                    refused = self.members[i].token.take();
                    if new {
                        break;
                    }
                }
                Err(Attempt::Final(StoreError::Status {
                    code: PERMISSION_DENIED,
                    message,
                })) => {
                    let message = match self.who() {
                        Some(who) => format!("{message} ({who}'s role does not allow it)"),
                        None => message,
                    };
                    return Err(Attempt::Final(StoreError::Status {
                        code: PERMISSION_DENIED,
                        message,
                    }));
                }
                other => return other,
            }
        }
        Err(Attempt::Elsewhere(
            "refused a new auth token as well".into(),
        ))
    }

    /// The TLS settings for member `i` (`None`: plaintext).
    fn tls_for(&self, i: usize) -> Result<Option<Arc<rustls::ClientConfig>>, Attempt> {
        match (self.members[i].tls, &self.access.tls) {
            (true, Some(config)) => Ok(Some(config.clone())),
            (true, None) => Err(Attempt::Final(StoreError::Etcd(
                "an https:// endpoint without TLS settings".into(),
            ))),
            (false, _) => Ok(None),
        }
    }

    /// A token for member `i` other than `refused`, from the tokens this
    /// user's clients share: the one known, the authentication under way,
    /// or a new one on a task of its own (see [`super::tokens`]).
    async fn token(&mut self, i: usize, refused: Option<&str>) -> Result<Token, Attempt> {
        let m = &self.members[i];
        let (authority, host) = (m.authority.clone(), m.host.clone());
        let (tls, user) = (self.tls_for(i)?, self.access.user.clone());
        let (tokens, max_body) = (self.access.tokens.clone(), self.max_body);
        let start = {
            let authority = authority.clone();
            move || {
                tokio::spawn(async move {
                    let work = async {
                        let mut sender = connect(&authority, &host, tls).await?;
                        authenticate(&mut sender, &authority, user, max_body).await
                    };
                    tokio::time::timeout(AUTHENTICATION_LIMIT, work)
                        .await
                        .unwrap_or_else(|_| {
                            Err(Attempt::Elsewhere(format!(
                                "no token within {AUTHENTICATION_LIMIT:?}"
                            )))
                        })
                })
            }
        };
        tokens
            .get(&authority, refused, AUTHENTICATION_LIMIT, start)
            .await
    }

    /// Who etcd took us for, for a permission error.
    fn who(&self) -> Option<String> {
        match (&self.access.user, self.access.client_cert) {
            (Some(u), _) => Some(format!("user {}", u.name)),
            (None, true) => Some("this agent (a client certificate and no --etcd-user)".into()),
            (None, false) => None,
        }
    }

    /// One POST on member `i`'s connection.
    async fn post(
        &mut self,
        i: usize,
        path: &str,
        body: Bytes,
        token: Option<&str>,
    ) -> Result<Bytes, Attempt> {
        let max_body = self.max_body;
        let member = &mut self.members[i];
        let Some(sender) = member.sender.as_mut() else {
            return Err(Attempt::Elsewhere("not connected".into()));
        };
        post(sender, &member.authority, path, body, token, max_body).await
    }
}

/// A token from the member on `sender` (`""` when etcd has authentication
/// off, or no user is given).
async fn authenticate(
    sender: &mut SendRequest<Full<Bytes>>,
    authority: &str,
    user: Option<super::access::Credentials>,
    max_body: usize,
) -> Result<String, Attempt> {
    let Some(user) = user else {
        return Ok(String::new());
    };
    let body = serde_json::json!({"name": user.name, "password": user.password});
    let path = "/v3/auth/authenticate";
    match post(sender, authority, path, Bytes::from(body.to_string()), None, max_body).await {
        // With authentication on, etcd always gives a token; without, it
        // answers FAILED_PRECONDITION (below). An answer without one is not
        // etcd's: taken as "no token needed", every call would be refused.
        Ok(answer) => serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|a| a["token"].as_str().map(str::to_owned))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Attempt::Elsewhere(format!("no token in the answer on {path}"))),
        Err(Attempt::Final(StoreError::Status { code: FAILED_PRECONDITION, .. })) => {
            // "authentication is not enabled": no token to send.
            Ok(String::new())
        }
        Err(Attempt::Final(StoreError::Status { code: INVALID_ARGUMENT, message })) => {
            Err(Attempt::Final(StoreError::Refused(format!(
                "etcd refused user {}: wrong password or no such user (--etcd-user, --etcd-password-file): {message}",
                user.name
            ))))
        }
        Err(e) => Err(e),
    }
}

/// One POST on `sender`, a connection to `authority`.
async fn post(
    sender: &mut SendRequest<Full<Bytes>>,
    authority: &str,
    path: &str,
    body: Bytes,
    token: Option<&str>,
    max_body: usize,
) -> Result<Bytes, Attempt> {
    sender.ready().await.map_err(|e| transport(authority, &e))?;
    let mut request = Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, token);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| Attempt::Final(StoreError::Etcd(e.to_string())))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(authority, &e))?;
    let status = response.status();
    let bytes = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| Attempt::Elsewhere(format!("reading the answer: {e}")))?
        .to_bytes();
    // A streaming call (lease keep-alive) answers one JSON object per
    // line; we send one request, so we read the first.
    let first = bytes
        .split(|b| *b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map_or_else(Bytes::new, |l| bytes.slice_ref(l));
    // Whether it is JSON and an error, without building its tree.
    let probe: Option<Probe> = serde_json::from_slice(&first).ok();
    let error = |first: &Bytes| {
        let v: Value = serde_json::from_slice(first).unwrap_or_default();
        match v.get("error") {
            // A stream's error comes in a 200 answer.
            Some(e) if status == StatusCode::OK => classify(e),
            _ => classify(&v),
        }
    };
    match (status, probe) {
        (StatusCode::OK, Some(p)) if p.error.is_none() => Ok(first),
        (StatusCode::OK, Some(_)) => Err(error(&first)),
        (_, Some(p)) if p.code.is_some() || p.error.is_some() => Err(error(&first)),
        // etcd's gateway refuses a client certificate with a common
        // name when client-cert-auth is on: the name would be ignored.
        (StatusCode::BAD_REQUEST, _)
            if String::from_utf8_lossy(&bytes).contains("CommonName of client") =>
        {
            Err(Attempt::Final(StoreError::Refused(format!(
                "TLS: {authority} refuses a client certificate with a common name on its JSON gateway: issue --etcd-cert without one (the user comes from --etcd-user)"
            ))))
        }
        (StatusCode::BAD_REQUEST, _)
            if String::from_utf8_lossy(&bytes).contains("HTTPS server") =>
        {
            Err(Attempt::Final(StoreError::Refused(format!(
                "{authority} speaks TLS: give it as https://{authority}"
            ))))
        }
        (status, _) => {
            // The answer's start, printable, says what answered.
            let said: String = String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Err(Attempt::Final(StoreError::Etcd(format!(
                "{authority} does not look like etcd's client port (HTTP {} on POST {path}: {:?})",
                status.as_u16(),
                said.trim()
            ))))
        }
    }
}

/// The fields of an answer that say it is an error (present or not).
#[derive(serde::Deserialize)]
struct Probe {
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    code: Option<serde::de::IgnoredAny>,
}

/// gRPC status codes of the answers we act on.
const INVALID_ARGUMENT: i64 = 3;
const PERMISSION_DENIED: i64 = 7;
const FAILED_PRECONDITION: i64 = 9;
const UNAUTHENTICATED: i64 = 16;

/// A transport error: a TLS refusal is final and said plainly; anything
/// else sends the call to another member.
fn transport(authority: &str, e: &(dyn std::error::Error + 'static)) -> Attempt {
    match tls_refusal(authority, e) {
        Some(why) => Attempt::Final(StoreError::Refused(why)),
        None => Attempt::Elsewhere(e.to_string()),
    }
}

/// What a TLS error in `e`'s causes means for an operator, if it is one.
fn tls_refusal(authority: &str, e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let tls = c.downcast_ref::<E>().or_else(|| {
            c.downcast_ref::<std::io::Error>()?
                .get_ref()?
                .downcast_ref::<E>()
        });
        if let Some(tls) = tls {
            return Some(match tls {
                E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
                    "TLS: {authority}'s certificate is not signed by a CA in --etcd-cacert"
                ),
                E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                    format!("TLS: {authority}'s certificate is not for this name or address")
                }
                E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                    format!("TLS: {authority}'s certificate has expired")
                }
                E::AlertReceived(
                    A::BadCertificate
                    | A::CertificateExpired
                    | A::CertificateRevoked
                    | A::UnknownCA
                    | A::CertificateUnknown
                    | A::CertificateRequired
                    | A::AccessDenied,
                ) => format!(
                    "TLS: {authority} refused our client certificate (--etcd-cert: expired, revoked, missing, or not signed by a CA it trusts)"
                ),
                other => format!("TLS with {authority}: {other}"),
            });
        }
        cause = c.source();
    }
    None
}

/// An error body of the gateway (`{"error": ..., "code": N, "message": ...}`;
/// a stream's `{"error": {"grpc_code": N, "message": ...}}`).
fn classify(v: &Value) -> Attempt {
    let inner = v.get("error").filter(|e| e.is_object()).unwrap_or(v);
    let code = inner
        .get("code")
        .or_else(|| inner.get("grpc_code"))
        .and_then(Value::as_i64)
        .unwrap_or(2);
    let message = inner
        .get("message")
        .or_else(|| inner.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("unknown error")
        .to_owned();
    if RETRY_ELSEWHERE.contains(&code) {
        Attempt::Elsewhere(message)
    } else {
        Attempt::Final(StoreError::Status { code, message })
    }
}

/// A new HTTP/1.1 connection to `authority`, over TLS when `tls` is
/// given; its driver runs on a task of its own and ends when the sender is
/// dropped.
async fn connect(
    authority: &str,
    host: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<SendRequest<Full<Bytes>>, Attempt> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| Attempt::Elsewhere(format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => handshake(TokioIo::new(stream)).await,
        Some(config) => {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| Attempt::Final(StoreError::Refused(format!("TLS: {host:?}: {e}"))))?;
            let stream = TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| transport(authority, &e))?;
            handshake(TokioIo::new(stream)).await
        }
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, Attempt>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Attempt::Elsewhere(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use serde_json::json;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::{super::access::Credentials, *};

    /// A member that accepts connections and never answers (SIGSTOPped).
    /// Counts the connections it accepted.
    async fn silent() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
        (format!("http://{addr}"), count)
    }

    /// A server answering each request (one per read is enough for these
    /// small bodies; the text as read) with the status line and body that
    /// `answer` makes of it.
    async fn serving<F, A>(answer: F) -> String
    where
        F: Fn(String) -> A + Clone + Send + 'static,
        A: std::future::Future<Output = (&'static str, String)> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let (status, body) = answer(request).await;
                        let answer = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    /// A server answering every request with `status` and `body`, counting
    /// requests.
    async fn answering(status: &'static str, body: &'static str) -> (String, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let server = serving(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            std::future::ready((status, body.to_owned()))
        })
        .await;
        (server, count)
    }

    /// A member with authentication on: `answer` makes the JSON body of
    /// an answer from the request (lowercased) and the token it carried;
    /// an answer with a `code` is etcd's 401.
    async fn with_auth<F, A>(answer: F) -> String
    where
        F: Fn(String, Option<String>) -> A + Clone + Send + 'static,
        A: std::future::Future<Output = String> + Send,
    {
        serving(move |request| {
            let answer = answer.clone();
            async move {
                let request = request.to_lowercase();
                let token = request
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .map(|t| t.trim().to_owned());
                let body = answer(request, token).await;
                let status = if body.contains("code") {
                    "401 Unauthorized"
                } else {
                    "200 OK"
                };
                (status, body)
            }
        })
        .await
    }

    const INVALID_TOKEN: &str = r#"{"error":"etcdserver: invalid auth token","code":16,"message":"etcdserver: invalid auth token"}"#;

    /// A member with authentication on whose password check takes
    /// `delay` (a loaded etcd doing bcrypt): counts the authentications
    /// it was asked for, and the other requests that carried its token.
    async fn slow_to_authenticate(delay: Duration) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (asked, served) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, v) = (asked.clone(), served.clone());
        let member = with_auth(move |request, token| {
            let (a, v) = (a.clone(), v.clone());
            async move {
                if request.starts_with("post /v3/auth/authenticate") {
                    a.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    r#"{"token":"t1"}"#.to_owned()
                } else if token.as_deref() == Some("t1") {
                    v.fetch_add(1, Ordering::SeqCst);
                    r#"{"ok":true}"#.to_owned()
                } else {
                    INVALID_TOKEN.to_owned()
                }
            }
        })
        .await;
        (member, asked, served)
    }

    /// A port nobody listens on.
    async fn refused() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_silent_and_a_dead_member_are_passed_over_and_the_live_one_kept() {
        let (stopped, accepted) = silent().await;
        let dead = refused().await;
        let (live, count) = answering("200 OK", r#"{"ok":true}"#).await;
        let mut g = Gateway::new(
            &[stopped, dead, live],
            Duration::from_secs(3),
            1 << 20,
            Access::default(),
        );
        // The silent member gets its share (1 s), not the whole call.
        let answer = g.call("/v3/kv/range", &json!({})).await.unwrap();
        assert_eq!(answer["ok"], true);
        // The next call goes straight to the member that answered.
        g.call("/v3/kv/range", &json!({})).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn unavailable_fails_over_and_other_errors_do_not() {
        let (no_leader, first) = answering(
            "503 Service Unavailable",
            r#"{"error":"etcdserver: no leader","code":14,"message":"etcdserver: no leader"}"#,
        )
        .await;
        let (denied, second) = answering(
            "403 Forbidden",
            r#"{"error":"etcdserver: permission denied","code":7,"message":"etcdserver: permission denied"}"#,
        )
        .await;
        let mut g = Gateway::new(
            &[no_leader, denied],
            Duration::from_secs(2),
            1 << 20,
            Access::default(),
        );
        match g.call("/v3/kv/txn", &json!({})).await {
            Err(StoreError::Status { code: 7, message }) => {
                assert_eq!(message, "etcdserver: permission denied")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(first.load(Ordering::SeqCst), 1);
        assert_eq!(second.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_server_that_is_not_etcd_says_so() {
        let (web, _) = answering("404 Not Found", "404 page not found").await;
        let mut g = Gateway::new(
            std::slice::from_ref(&web),
            Duration::from_secs(2),
            1 << 20,
            Access::default(),
        );
        let e = g.call("/v3/kv/range", &json!({})).await.unwrap_err();
        let authority = web.trim_start_matches("http://");
        assert_eq!(
            e.to_string(),
            format!("etcd: {authority} does not look like etcd's client port (HTTP 404 on POST /v3/kv/range: \"404 page not found\")")
        );
    }

    /// A call that gives up while its password check runs does not throw
    /// the check away: the next call waits for the same one. Each
    /// abandoned check used to be asked again, so a fleet returning to a
    /// loaded etcd kept it checking passwords it never collected.
    #[tokio::test]
    async fn a_slow_password_check_is_asked_once_and_its_token_used() {
        let (member, asked, served) = slow_to_authenticate(Duration::from_millis(1500)).await;
        let access = Access {
            user: Some(Credentials {
                name: "node".into(),
                password: "secret".into(),
            }),
            ..Access::default()
        };
        let mut g = Gateway::new(&[member], Duration::from_secs(1), 1 << 20, access);
        let mut answered = None;
        for call in 0..5 {
            if let Ok(answer) = g.call("/v3/kv/range", &json!({})).await {
                answered = Some((call, answer));
                break;
            }
        }
        let (call, answer) = answered.expect("no call was answered in 5");
        assert_eq!(answer["ok"], true);
        assert_eq!(call, 1, "the second call should use the first call's check");
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "the password was checked again"
        );
        assert_eq!(served.load(Ordering::SeqCst), 1);
    }

    /// Two clients of one process with the same access (the publisher
    /// and the trust-domain follower) cost a member one password check.
    /// Two clients of `member` with one access (user `node`), as an
    /// agent's publisher and trust-domain follower are.
    fn two_clients_of_one_user(member: String) -> [Gateway; 2] {
        let access = Access {
            user: Some(Credentials {
                name: "node".into(),
                password: "secret".into(),
            }),
            ..Access::default()
        };
        let timeout = Duration::from_secs(2);
        [
            Gateway::new(
                std::slice::from_ref(&member),
                timeout,
                1 << 20,
                access.clone(),
            ),
            Gateway::new(&[member], timeout, 1 << 20, access),
        ]
    }

    #[tokio::test]
    async fn clients_with_one_access_share_its_tokens() {
        let (member, asked, served) = slow_to_authenticate(Duration::from_millis(300)).await;
        let [mut first, mut second] = two_clients_of_one_user(member);
        let body = json!({});
        let (a, b) = tokio::join!(
            first.call("/v3/kv/range", &body),
            second.call("/v3/kv/range", &body)
        );
        assert_eq!(a.unwrap()["ok"], true);
        assert_eq!(b.unwrap()["ok"], true);
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "each client checked the password"
        );
        assert_eq!(served.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn nothing_answering_is_one_error_within_the_bound() {
        let (stopped, _) = silent().await;
        let dead = refused().await;
        let mut g = Gateway::new(
            &[stopped, dead],
            Duration::from_secs(1),
            1 << 20,
            Access::default(),
        );
        let e = g.call("/v3/kv/range", &json!({})).await.unwrap_err();
        assert!(
            e.to_string().contains("no member answered within 1s"),
            "{e}"
        );
    }

    /// A member with authentication on that gives tokens `t1`, `t2`, ...
    /// in the order asked and accepts those in `valid` (cleared: a
    /// restart, or tokens expired unused). Counts authentications.
    async fn forgetting() -> (String, Arc<std::sync::Mutex<Vec<String>>>, Arc<AtomicUsize>) {
        let valid = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let asked = Arc::new(AtomicUsize::new(0));
        let (v, a) = (valid.clone(), asked.clone());
        let member = with_auth(move |request, token| {
            let answer = if request.starts_with("post /v3/auth/authenticate") {
                let t = format!("t{}", a.fetch_add(1, Ordering::SeqCst) + 1);
                v.lock().unwrap().push(t.clone());
                format!(r#"{{"token":"{t}"}}"#)
            } else if token.is_some_and(|t| v.lock().unwrap().contains(&t)) {
                r#"{"ok":true}"#.to_owned()
            } else {
                INVALID_TOKEN.to_owned()
            };
            std::future::ready(answer)
        })
        .await;
        (member, valid, asked)
    }

    /// A client whose own token is older than the shared one, when the
    /// shared one is no longer valid either (the member restarted twice,
    /// or the shared token expired unused), is refused twice, then given
    /// a new token: its call succeeds. It used to end in a final
    /// UNAUTHENTICATED, which ends a publisher's session as refused.
    #[tokio::test]
    async fn a_stale_shared_token_is_not_a_final_refusal() {
        let (member, valid, asked) = forgetting().await;
        let [mut follower, mut publisher] = two_clients_of_one_user(member);
        let body = json!({});
        // The follower holds t1.
        follower.call("/v3/kv/range", &body).await.unwrap();
        // The member restarts; the publisher replaces the shared t1 by t2.
        valid.lock().unwrap().clear();
        publisher.call("/v3/kv/range", &body).await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        // t2 is forgotten too (a second restart, or 5 minutes unused).
        valid.lock().unwrap().clear();
        // The follower's t1 is refused, then the shared t2; t3 is new.
        let answer = follower.call("/v3/kv/range", &body).await;
        assert!(answer.is_ok(), "{:?}", answer.err());
        assert_eq!(asked.load(Ordering::SeqCst), 3, "one check for t3");
    }
}
