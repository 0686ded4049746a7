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

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{client::conn::http1::SendRequest, Request, StatusCode};
use serde_json::Value;
use tokio::{net::TcpStream, time::Instant};

use super::super::store::StoreError;

/// The shortest time one member is given before the next is tried.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);
/// Pause between two rounds over every member (an election takes about a
/// second; no point in hammering).
const ROUND_PAUSE: Duration = Duration::from_millis(100);

/// gRPC status codes (in the gateway's error bodies) that mean "this
/// member cannot serve now; another may": UNAVAILABLE (no leader, stopping,
/// too many requests), DEADLINE_EXCEEDED (a request timed out in raft).
const RETRY_ELSEWHERE: [i64; 2] = [14, 4];

/// Why one member did not give an answer.
enum Attempt {
    /// Try another member (and drop this connection).
    Elsewhere(String),
    /// An answer from etcd that another member would give too.
    Final(StoreError),
}

struct Member {
    /// `host:port`.
    authority: String,
    sender: Option<SendRequest<Full<Bytes>>>,
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
}

impl Gateway {
    /// `endpoints` are `http://host:port` (as `cli::parse_endpoints`
    /// normalises them). Connects lazily.
    pub fn new(endpoints: &[String], timeout: Duration, max_body: usize) -> Self {
        let members = endpoints
            .iter()
            .map(|e| Member {
                authority: e
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned(),
                sender: None,
            })
            .collect();
        Self {
            members,
            current: 0,
            timeout,
            max_body,
        }
    }

    /// The call's time bound.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs `body` to `path` (e.g. `/v3/kv/range`) and returns the
    /// answer's JSON, failing over between members until the deadline.
    pub async fn call(&mut self, path: &str, body: &Value) -> Result<Value, StoreError> {
        let body = Bytes::from(body.to_string());
        let deadline = Instant::now() + self.timeout;
        let n = self.members.len().max(1);
        let share = (self.timeout / n as u32).max(MIN_ATTEMPT);
        let mut last = String::from("no endpoint");
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
                self.members[i].sender = None;
                self.current = (i + 1) % n;
            }
            let now = Instant::now();
            if now + ROUND_PAUSE >= deadline {
                return Err(self.gave_up(&last));
            }
            tokio::time::sleep(ROUND_PAUSE).await;
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

    async fn attempt(&mut self, i: usize, path: &str, body: Bytes) -> Result<Value, Attempt> {
        let member = &mut self.members[i];
        let sender = match member.sender.as_mut() {
            Some(s) if !s.is_closed() => s,
            _ => member.sender.insert(
                connect(&member.authority)
                    .await
                    .map_err(Attempt::Elsewhere)?,
            ),
        };
        sender
            .ready()
            .await
            .map_err(|e| Attempt::Elsewhere(e.to_string()))?;
        let request = Request::post(path)
            .header(hyper::header::HOST, member.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| Attempt::Final(StoreError::Etcd(e.to_string())))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Attempt::Elsewhere(e.to_string()))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|e| Attempt::Elsewhere(format!("reading the answer: {e}")))?
            .to_bytes();
        // A streaming call (lease keep-alive) answers one JSON object per
        // line; we send one request, so we read the first.
        let first = bytes
            .split(|b| *b == b'\n')
            .find(|l| !l.iter().all(u8::is_ascii_whitespace))
            .unwrap_or(&[]);
        let json: Option<Value> = serde_json::from_slice(first).ok();
        let authority = &self.members[i].authority;
        match (status, json) {
            (StatusCode::OK, Some(v)) => match v.get("error") {
                // A stream's error comes in a 200 answer.
                Some(e) => Err(classify(e)),
                None => Ok(v),
            },
            (_, Some(v)) if v.get("code").is_some() || v.get("error").is_some() => {
                Err(classify(&v))
            }
            (status, _) => Err(Attempt::Final(StoreError::Etcd(format!(
                "{authority} does not look like etcd's client port (HTTP {} on POST {path})",
                status.as_u16()
            )))),
        }
    }
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

/// A new HTTP/1.1 connection to `authority`; its driver runs on a task of
/// its own and ends when the sender is dropped.
async fn connect(authority: &str) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let io = hyper_util::rt::TokioIo::new(stream);
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
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

    use super::*;

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

    /// A server answering every request with `status` and `body`, counting
    /// requests.
    async fn answering(status: &'static str, body: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    // One request per read is enough for these small bodies.
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        c.fetch_add(1, Ordering::SeqCst);
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
        (format!("http://{addr}"), count)
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
        let mut g = Gateway::new(&[stopped, dead, live], Duration::from_secs(3), 1 << 20);
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
        let mut g = Gateway::new(&[no_leader, denied], Duration::from_secs(2), 1 << 20);
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
        let mut g = Gateway::new(std::slice::from_ref(&web), Duration::from_secs(2), 1 << 20);
        let e = g.call("/v3/kv/range", &json!({})).await.unwrap_err();
        let authority = web.trim_start_matches("http://");
        assert_eq!(
            e.to_string(),
            format!("etcd: {authority} does not look like etcd's client port (HTTP 404 on POST /v3/kv/range)")
        );
    }

    #[tokio::test]
    async fn nothing_answering_is_one_error_within_the_bound() {
        let (stopped, _) = silent().await;
        let dead = refused().await;
        let mut g = Gateway::new(&[stopped, dead], Duration::from_secs(1), 1 << 20);
        let e = g.call("/v3/kv/range", &json!({})).await.unwrap_err();
        assert!(
            e.to_string().contains("no member answered within 1s"),
            "{e}"
        );
    }
}
