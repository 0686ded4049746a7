//! The CLI's client side: one HTTP/1.1 request to the agent over its Unix
//! socket or over TCP.

use std::{io, net::SocketAddr, path::PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{client::conn::http1, header, Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

/// Where the agent is.
#[derive(Clone, Debug)]
pub enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent answers on {path}: {source} (start it with `rkt-mds serve`, as root)")]
    NotRunning { path: String, source: io::Error },
    #[error("talking to the agent: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// A response: status and whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim_end().to_owned()
    }
}

/// Sends one request and reads the whole answer.
pub async fn request(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<(Bytes, &str)>,
) -> Result<Reply, ClientError> {
    match target {
        Target::Unix(p) => {
            let stream =
                UnixStream::connect(p)
                    .await
                    .map_err(|source| ClientError::NotRunning {
                        path: p.display().to_string(),
                        source,
                    })?;
            exchange(stream, "unixsock", method, path, body).await
        }
        Target::Tcp(a) => {
            let stream = TcpStream::connect(a)
                .await
                .map_err(|source| ClientError::NotRunning {
                    path: a.to_string(),
                    source,
                })?;
            exchange(stream, &a.to_string(), method, path, body).await
        }
    }
}

async fn exchange<S>(
    stream: S,
    host: &str,
    method: Method,
    path: &str,
    body: Option<(Bytes, &str)>,
) -> Result<Reply, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        // Identity endpoints want it (SPEC §9): this is no forged request.
        .header("metadata", "true");
    let payload = match body {
        Some((bytes, content_type)) => {
            builder = builder.header(header::CONTENT_TYPE, content_type);
            bytes
        }
        None => Bytes::new(),
    };
    let response = sender
        .send_request(builder.body(Full::new(payload))?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok(Reply { status, body })
}
