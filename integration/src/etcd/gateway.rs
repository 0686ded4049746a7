//! A blocking client of etcd's JSON gateway: one HTTP/1.0 request per
//! connection (so the answer is neither chunked nor kept alive), read to
//! its end. Streams (watch) are read line by line. Plaintext, or TLS with
//! a client certificate and a user's token (`Target`).

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

use rustls::{pki_types::ServerName, ClientConfig, ClientConnection, StreamOwned};
use serde_json::Value;

/// A connection, plaintext or TLS.
trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// Where a call goes: `host:port`, over TLS when `tls` is given, with
/// `Authorization: token` when `token` is.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub authority: &'a str,
    pub tls: Option<&'a Arc<ClientConfig>>,
    pub token: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// Plaintext, no user.
    pub fn plain(authority: &'a str) -> Self {
        Self {
            authority,
            tls: None,
            token: None,
        }
    }
}

fn connect(target: Target, timeout: Duration) -> Result<Box<dyn Io>, String> {
    let authority = target.authority;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{authority}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let Some(config) = target.tls else {
        return Ok(Box::new(stream));
    };
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{authority}: {e}"))?;
    let tls = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    Ok(Box::new(StreamOwned::new(tls, stream)))
}

fn open(
    target: Target,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Box<dyn Io>, String> {
    let authority = target.authority;
    let mut stream = connect(target, timeout)?;
    let body = body.to_string();
    let auth = target
        .token
        .map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: {authority}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{authority}: {e}"))?;
    Ok(stream)
}

/// POSTs `body` to `path` on `target`; the answer's JSON, or its status
/// line and body as an error.
pub fn call(target: Target, path: &str, body: &Value, timeout: Duration) -> Result<Value, String> {
    let authority = target.authority;
    let mut stream = open(target, path, body, timeout)?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        // A TLS peer that closed without close_notify, after answering.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(format!("{authority}: {e}")),
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{authority}: not an HTTP answer"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{authority}: {}: {body}",
            head.lines().next().unwrap_or("")
        ));
    }
    serde_json::from_str(body).map_err(|e| format!("{authority}: {e}: {body}"))
}

/// A streaming call: the JSON objects of the answer, one per line, as they
/// come. A read that times out (after `timeout`) yields an `Err`, and the
/// caller may go on reading.
pub struct Stream {
    reader: BufReader<Box<dyn Io>>,
    /// A line read in part when a read timed out.
    pending: String,
}

impl Stream {
    pub fn open(
        target: Target,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Self, String> {
        let authority = target.authority;
        let stream = open(target, path, body, timeout)?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        // The status line and headers.
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("{authority}: the stream ended in its headers"));
            }
            if line == "\r\n" {
                break;
            }
        }
        Ok(Self {
            reader,
            pending: String::new(),
        })
    }

    /// The next object; `Ok(None)` at the end of the stream.
    pub fn next_object(&mut self) -> Result<Option<Value>, std::io::Error> {
        loop {
            if self.reader.read_line(&mut self.pending)? == 0 {
                return Ok(None);
            }
            let line = std::mem::take(&mut self.pending);
            if !line.trim().is_empty() {
                return serde_json::from_str(&line)
                    .map(Some)
                    .map_err(std::io::Error::other);
            }
        }
    }
}
