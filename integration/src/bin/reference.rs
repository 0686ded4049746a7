//! The benchmark's reference: a bare hyper 1.x server (the agent's hyper
//! and tokio versions). By default it answers every request with a fixed
//! body of a given size: what the agent is compared against.
//!
//! Two variants for a POST, to show what the request's own work costs
//! without the agent around it: `read` collects the body before
//! answering; `sign` also does what SPEC §3.2 asks of a sign request
//! (decode the form, HMAC-SHA512 over a UUID and the content, base64)
//! and answers the signature instead of the fixed body. It checks
//! nothing: a bad form is signed as empty content.

use std::{convert::Infallible, net::SocketAddr};

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{server::conn::http1, service::service_fn, Response};
use hyper_util::rt::TokioIo;
use ring::hmac;

#[derive(Clone, Copy)]
enum Mode {
    Fixed,
    Read,
    Sign,
}

/// The sign variant's pod: the bytes the HMAC covers before the content.
const UUID: [u8; 16] = [0x5a; 16];

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: reference PORT BODY_SIZE [read|sign] (sign answers the signature, of its own size)";
    let port: u16 = args
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| std::io::Error::other(usage))?;
    let size: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| std::io::Error::other(usage))?;
    let body = Bytes::from(vec![b'x'; size]);
    let mode = match args.next().as_deref() {
        None => Mode::Fixed,
        Some("read") => Mode::Read,
        Some("sign") => Mode::Sign,
        Some(_) => return Err(std::io::Error::other(usage)),
    };
    if args.next().is_some() {
        return Err(std::io::Error::other(usage));
    }
    // A fixed key: the reference proves nothing, it only does the work.
    // Leaked, not behind an `Arc` cloned per request: the agent's sign
    // writes no such shared count. (Both write one for a fixed answer's
    // `Bytes`.)
    let key: &'static hmac::Key =
        Box::leak(Box::new(hmac::Key::new(hmac::HMAC_SHA512, &[0x6b; 64])));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener =
                tokio::net::TcpListener::bind(SocketAddr::from(([0u16; 8], port))).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        async move {
                            let answer = match mode {
                                Mode::Fixed => body,
                                Mode::Read => {
                                    let _ = req.into_body().collect().await;
                                    body
                                }
                                Mode::Sign => {
                                    let form = req
                                        .into_body()
                                        .collect()
                                        .await
                                        .map(|c| c.to_bytes())
                                        .unwrap_or_default();
                                    Bytes::from(sign(key, &form))
                                }
                            };
                            let mut r = Response::new(Full::new(answer));
                            r.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static(
                                    "text/plain; charset=us-ascii",
                                ),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}

/// base64(HMAC-SHA512(key, UUID ‖ the form's `content`)).
fn sign(key: &hmac::Key, form: &[u8]) -> String {
    let content = form_urlencoded::parse(form)
        .find(|(name, _)| name == "content")
        .map(|(_, value)| value)
        .unwrap_or_default();
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(&UUID);
    ctx.update(content.as_bytes());
    STANDARD.encode(ctx.sign().as_ref())
}
