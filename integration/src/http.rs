//! A raw HTTP/1.1 client: the tests control every byte (chunked bodies,
//! half-sent heads, probes) and read answers without any library's
//! interpretation.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    time::Duration,
};

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }
}

/// A request to be written as is.
pub struct Request {
    bytes: Vec<u8>,
}

impl Request {
    /// `METHOD path` with `Host` and, when `body` is given, `Content-Length`.
    pub fn new(method: &str, path: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> Self {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: unixsock\r\n");
        for (n, v) in headers {
            head += &format!("{n}: {v}\r\n");
        }
        if let Some(b) = body {
            head += &format!("Content-Length: {}\r\n", b.len());
        }
        head += "\r\n";
        let mut bytes = head.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        Self { bytes }
    }

    /// What rkt's stage0 sends: the body chunked, no length, no type.
    pub fn chunked(method: &str, path: &str, body: &[u8]) -> Self {
        let mut bytes = format!(
            "{method} {path} HTTP/1.1\r\nHost: unixsock\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for chunk in body.chunks(4096) {
            bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        Self { bytes }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path, None, &[])
    }

    /// An urlencoded form POST.
    pub fn form(path: &str, fields: &[(&str, &str)]) -> Self {
        let body = encode_form(fields);
        Self::new(
            "POST",
            path,
            Some(body.as_bytes()),
            &[("Content-Type", "application/x-www-form-urlencoded")],
        )
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

pub fn encode_form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(n, v)| format!("{}={}", pct(n), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A keep-alive connection to the agent.
pub struct Conn<S: Read + Write> {
    reader: BufReader<S>,
}

impl<S: Read + Write> Conn<S> {
    pub fn new(stream: S) -> Self {
        Self {
            reader: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, req: &Request) -> io::Result<Response> {
        self.reader.get_mut().write_all(req.bytes())?;
        self.reader.get_mut().flush()?;
        read_response(&mut self.reader)
    }

    pub fn stream(&mut self) -> &mut S {
        self.reader.get_mut()
    }
}

/// Reads one response (Content-Length framed, or to EOF).
pub fn read_response<R: BufRead>(r: &mut R) -> io::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let len = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        None => {
            r.read_to_end(&mut body)?;
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// One request on a fresh Unix-socket connection (rkt's way).
pub fn unix(socket: &std::path::Path, req: &Request) -> io::Result<Response> {
    let s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    Conn::new(s).send(req)
}

/// One request on a fresh TCP connection from the host.
pub fn tcp(addr: std::net::SocketAddr, req: &Request) -> io::Result<Response> {
    let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    Conn::new(s).send(req)
}
