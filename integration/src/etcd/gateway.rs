//! A blocking client of etcd's JSON gateway: one HTTP/1.0 request per
//! connection (so the answer is neither chunked nor kept alive), read to
//! its end. Streams (watch) are read line by line.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

use serde_json::Value;

fn open(authority: &str, path: &str, body: &Value, timeout: Duration) -> Result<TcpStream, String> {
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{authority}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{authority}: {e}"))?;
    Ok(stream)
}

/// POSTs `body` to `path` on `authority` (`host:port`); the answer's JSON,
/// or its status line and body as an error.
pub fn call(authority: &str, path: &str, body: &Value, timeout: Duration) -> Result<Value, String> {
    let mut stream = open(authority, path, body, timeout)?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("{authority}: {e}"))?;
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
    reader: BufReader<TcpStream>,
    /// A line read in part when a read timed out.
    pending: String,
}

impl Stream {
    pub fn open(
        authority: &str,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Self, String> {
        let stream = open(authority, path, body, timeout)?;
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
