//! `rkt-mds verify-token`: check an identity document offline against a
//! JWK Set (a file, one agent's, or the cluster's trust bundle in etcd), as
//! any relying party would. Exit 0 valid, 1 invalid, 2 error.

use anyhow::{Context, Result};
use hyper::Method;

use rkt_mds::{
    cli::VerifyTokenArgs,
    jwt::{self, JwkSet},
};

use super::agent::{call, expect_ok};

/// Exit 0 valid (claims printed), 1 invalid (one line why), 2 on error.
pub async fn run(args: VerifyTokenArgs) -> Result<i32> {
    let (token, keys) = match load(&args).await {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("rkt-mds verify-token: {e:#}");
            return Ok(2);
        }
    };
    let expect = jwt::Expect {
        audience: &args.audience,
        issuers: &args.issuers,
        trust_domain: args.trust_domain.as_deref(),
    };
    match jwt::verify_with(&token, &keys, &expect, jwt::now()) {
        Ok(claims) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&claims).unwrap_or_default()
            );
            Ok(0)
        }
        Err(why) => {
            eprintln!("invalid: {why}");
            Ok(1)
        }
    }
}

async fn load(args: &VerifyTokenArgs) -> Result<(String, JwkSet)> {
    if let (None, Some(flag)) = (&args.etcd, args.etcd_access.first_given()) {
        anyhow::bail!("{flag} goes with --etcd ENDPOINTS only");
    }
    let token = match args.token.strip_prefix('@') {
        Some(file) => {
            std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
        }
        None => args.token.clone(),
    };
    let keys = match (&args.jwks, &args.socket, &args.etcd) {
        (Some(file), _, _) => std::fs::read(file)
            .with_context(|| format!("cannot read {}", file.display()))
            .and_then(|b| {
                serde_json::from_slice(&b)
                    .with_context(|| format!("{} is not a JWK Set", file.display()))
            })?,
        (None, Some(socket), _) => {
            let reply = call(socket, Method::GET, "/.well-known/jwks.json", None).await?;
            expect_ok(&reply, "reading the agent's JWK Set")?;
            serde_json::from_slice(&reply.body).context("the agent's JWK Set is not valid")?
        }
        (None, None, Some(etcd)) => {
            let d = super::cluster::read(
                etcd,
                &args.etcd_access,
                &args.etcd_prefix,
                rkt_mds::cluster::directory::Scope::Nodes,
            )
            .await?;
            if d.nodes.is_empty() {
                anyhow::bail!(
                    "no node has published under {:?}: the cluster's trust bundle is empty",
                    args.etcd_prefix.prefix
                );
            }
            d.trust_bundle()
        }
        (None, None, None) => anyhow::bail!("give --jwks FILE, --socket PATH or --etcd ENDPOINTS"),
    };
    Ok((token.trim().to_owned(), keys))
}
