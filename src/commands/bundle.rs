//! `rkt-mds bundle`: the trust domain's SPIFFE bundle, from the local
//! agent (its registration socket) or, with `--etcd`, every node's
//! authorities and JWT keys from the cluster directory.

use anyhow::{Context, Result};
use hyper::Method;

use rkt_mds::{cli::BundleArgs, svid::bundle};

use super::agent::{call, expect_ok};

pub async fn run(args: BundleArgs) -> Result<()> {
    let Some(endpoints) = &args.etcd else {
        let reply = call(
            &args.socket,
            Method::GET,
            "/.well-known/spiffe-bundle",
            None,
        )
        .await?;
        expect_ok(&reply, "asking the agent for its bundle")?;
        let bundle: serde_json::Value =
            serde_json::from_slice(&reply.body).context("the agent's bundle is not JSON")?;
        println!("{}", serde_json::to_string_pretty(&bundle)?);
        return Ok(());
    };
    let d = super::cluster::read_nodes(endpoints, &args.etcd_access, &args.etcd_prefix, "bundle")
        .await?;
    // The newest record's time: it grows whenever a node publishes keys.
    let sequence = d
        .nodes
        .values()
        .filter_map(|n| n.updated)
        .max()
        .unwrap_or(0);
    let b = bundle::spiffe_bundle(&d.x509_authorities(), &d.trust_bundle(), sequence);
    println!("{}", serde_json::to_string_pretty(&b)?);
    Ok(())
}
