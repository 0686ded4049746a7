//! `rkt-mds keys`: rotate or list the signing keys.

use anyhow::{Context, Result};
use hyper::Method;
use serde_json::Value;

use rkt_mds::{
    cli::{KeyKind, KeysAction, KeysArgs},
    cluster::rfc3339,
};

use super::{
    agent::{call, expect_ok},
    table,
};

pub async fn run(args: KeysArgs) -> Result<()> {
    match args.action {
        KeysAction::Rotate(a) => {
            let path = match a.kind {
                None => "/keys/rotate",
                Some(KeyKind::Hmac) => "/keys/rotate?kind=hmac",
                Some(KeyKind::Jwt) => "/keys/rotate?kind=jwt",
                Some(KeyKind::X509) => "/keys/rotate?kind=x509",
            };
            let reply = call(&a.socket.socket, Method::POST, path, None).await?;
            expect_ok(&reply, "rotating keys")?;
            println!("{}", reply.text());
        }
        KeysAction::List(a) => {
            let reply = call(&a.socket.socket, Method::GET, "/keys", None).await?;
            expect_ok(&reply, "listing keys")?;
            if a.json {
                println!("{}", reply.text());
            } else {
                let keys: Value = serde_json::from_slice(&reply.body)
                    .context("the agent's key list is not valid")?;
                table::print(&["KIND", "ID", "CREATED", "STATUS"], &rows(&keys));
            }
        }
    }
    Ok(())
}

/// One row per key: HMAC keys (the newest signs) then JWT keys.
fn rows(keys: &Value) -> Vec<Vec<String>> {
    let time = |v: &Value| v.as_u64().map_or_else(|| "-".to_owned(), rfc3339::format);
    let mut rows = Vec::new();
    let hmac = keys["hmac"].as_array().cloned().unwrap_or_default();
    for (i, k) in hmac.iter().enumerate() {
        let status = if i + 1 == hmac.len() {
            "signs"
        } else {
            "verifies"
        };
        rows.push(vec![
            "hmac".into(),
            k["id"].to_string(),
            time(&k["created"]),
            status.into(),
        ]);
    }
    for k in keys["jwt"].as_array().into_iter().flatten() {
        let status = if k["active"].as_bool() == Some(true) {
            "signs".to_owned()
        } else {
            match k["retired"].as_u64() {
                Some(t) => format!("verifies (retired {})", rfc3339::format(t)),
                None => "verifies".to_owned(),
            }
        };
        rows.push(vec![
            "jwt".into(),
            k["kid"].as_str().unwrap_or("-").to_owned(),
            time(&k["created"]),
            status,
        ]);
    }
    rows
}
