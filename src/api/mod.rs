//! The two HTTP APIs: thin layers that parse, call the pod service, and
//! render. Shared response helpers and the access log live here.

pub mod form;
pub mod public;
pub mod registration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    body::Incoming,
    header::{HeaderMap, HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT},
    Response, StatusCode,
};

use crate::appc::PodUuid;

pub type Body = Full<Bytes>;

pub const TEXT: &str = "text/plain; charset=us-ascii";
pub const JSON: &str = "application/json";

/// A response and, for the access log, the pod it was for.
pub struct Handled {
    pub response: Response<Body>,
    pub pod: Option<PodUuid>,
}

impl From<Response<Body>> for Handled {
    fn from(response: Response<Body>) -> Self {
        Self {
            response,
            pod: None,
        }
    }
}

pub fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A one-line plain-text answer (every error body is one of these).
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    respond(status, TEXT, Bytes::from(msg.into()))
}

pub fn status_text(status: u16, msg: impl Into<String>) -> Response<Body> {
    text(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        msg,
    )
}

pub fn json(body: Bytes) -> Response<Body> {
    respond(StatusCode::OK, JSON, body)
}

pub fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found")
}

pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// Reads a whole body, chunked or not, refusing more than `limit` bytes
/// with 413. A client that waits for `100 Continue` with a
/// `Content-Length` over the limit gets its 413 before a byte of the body
/// is read (polling the body is what makes hyper send `100 Continue`).
/// Others have sent their body already: it is read up to the limit, so
/// the 413 reaches a client still writing.
pub async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, Response<Body>> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let waits = headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if waits && declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Err(_) => Err(text(
            StatusCode::BAD_REQUEST,
            "could not read the request body",
        )),
    }
}

fn too_large(limit: usize) -> Response<Body> {
    let mut r = text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than {limit} bytes"),
    );
    // The rest of the body is not read: the connection cannot be reused.
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}
