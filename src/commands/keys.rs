//! `rkt-mds keys`: rotate or list the signing keys.

use anyhow::Result;
use hyper::Method;

use rkt_mds::cli::{KeyKind, KeysAction, KeysArgs};

use super::agent::{call, expect_ok};

pub async fn run(args: KeysArgs) -> Result<()> {
    match args.action {
        KeysAction::Rotate(a) => {
            let path = match a.kind {
                None => "/keys/rotate",
                Some(KeyKind::Hmac) => "/keys/rotate?kind=hmac",
                Some(KeyKind::Jwt) => "/keys/rotate?kind=jwt",
            };
            let reply = call(&a.socket.socket, Method::POST, path, None).await?;
            expect_ok(&reply, "rotating keys")?;
            println!("{}", reply.text());
        }
        KeysAction::List(s) => {
            let reply = call(&s.socket, Method::GET, "/keys", None).await?;
            expect_ok(&reply, "listing keys")?;
            println!("{}", reply.text());
        }
    }
    Ok(())
}
