//! `rkt-mds jwks --etcd`: the cluster's trust bundle, the union of every
//! node's JWK Set.

use anyhow::Result;

use rkt_mds::{cli::JwksArgs, cluster::directory::Scope};

pub async fn run(args: JwksArgs) -> Result<()> {
    let d = super::cluster::read(
        &args.etcd,
        &args.etcd_access,
        &args.etcd_prefix,
        Scope::Nodes,
    )
    .await?;
    if d.nodes.is_empty() {
        eprintln!(
            "rkt-mds jwks: no node has published under {:?}: the bundle is empty",
            args.etcd_prefix.prefix
        );
    }
    println!("{}", serde_json::to_string_pretty(&d.trust_bundle())?);
    Ok(())
}
