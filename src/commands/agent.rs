//! Talking to the agent: over its registration socket (operators'
//! commands) or over the public API named by `AC_METADATA_URL` (commands
//! run inside a pod). Errors carry context for a person.

use std::{net::SocketAddr, path::Path};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::Method;
use serde::Deserialize;

use rkt_mds::client::{self, Reply, Target};

const FORM: &str = "application/x-www-form-urlencoded";

pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<(Bytes, &str)>,
) -> Result<Reply> {
    Ok(client::request(&Target::Unix(socket.to_path_buf()), method, path, body).await?)
}

pub fn expect_ok(reply: &Reply, what: &str) -> Result<()> {
    if reply.status != 200 {
        bail!(
            "{what}: the agent answered {}: {}",
            reply.status,
            reply.text()
        );
    }
    Ok(())
}

pub fn read_json_file(path: &Path) -> Result<Bytes> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(Bytes::from(bytes))
}

/// Percent-encodes a URL component or form value (any bytes).
pub fn enc(s: impl AsRef<[u8]>) -> String {
    form_urlencoded::byte_serialize(s.as_ref()).collect()
}

#[derive(Deserialize)]
pub struct Info {
    pub public_port: u16,
    /// Absent from agents before the Workload API, `null` when it is off.
    #[serde(default)]
    pub workload_api_port: Option<u16>,
    #[serde(default)]
    pub identity_mode: String,
    pub gc_grace_secs: u64,
}

pub async fn info(socket: &Path) -> Result<Info> {
    let reply = call(socket, Method::GET, "/info", None).await?;
    expect_ok(&reply, "asking the agent for its settings")?;
    serde_json::from_slice(&reply.body).context("the agent's /info is not valid")
}

/// `AC_METADATA_URL` = `http://HOST:PORT/TOKEN`.
fn metadata_url() -> Result<(SocketAddr, String)> {
    let url = std::env::var("AC_METADATA_URL")
        .context("AC_METADATA_URL is not set: run this inside a pod")?;
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("AC_METADATA_URL {url:?} does not start with http://"))?;
    let (host, token) = rest.split_once('/').unwrap_or((rest, ""));
    let addr: SocketAddr = host
        .parse()
        .with_context(|| format!("AC_METADATA_URL host {host:?} is not ADDRESS:PORT"))?;
    Ok((addr, token.trim_end_matches('/').to_owned()))
}

fn metadata_path(token: &str, endpoint: &str) -> String {
    if token.is_empty() {
        format!("/acMetadata/v1/{endpoint}")
    } else {
        format!("/{token}/acMetadata/v1/{endpoint}")
    }
}

/// POSTs a form to this pod's metadata endpoint (from `AC_METADATA_URL`).
/// Values are bytes: the signed content need not be text.
pub async fn post_form(endpoint: &str, fields: &[(&str, &[u8])]) -> Result<Reply> {
    let (addr, token) = metadata_url()?;
    let body = fields
        .iter()
        .map(|(name, value)| format!("{name}={}", enc(value)))
        .collect::<Vec<_>>()
        .join("&");
    Ok(client::request(
        &Target::Tcp(addr),
        Method::POST,
        &metadata_path(&token, endpoint),
        Some((Bytes::from(body), FORM)),
    )
    .await?)
}

/// GETs this pod's metadata endpoint (from `AC_METADATA_URL`); `endpoint`
/// may carry a query.
pub async fn get_metadata(endpoint: &str) -> Result<Reply> {
    let (addr, token) = metadata_url()?;
    Ok(client::request(
        &Target::Tcp(addr),
        Method::GET,
        &metadata_path(&token, endpoint),
        None,
    )
    .await?)
}
