//! `rkt-mds jwks --etcd`: the cluster's trust bundle, the union of every
//! node's JWK Set.

use anyhow::Result;

use rkt_mds::cli::JwksArgs;

pub async fn run(args: JwksArgs) -> Result<()> {
    let d = super::cluster::read_nodes(&args.etcd, &args.etcd_access, &args.etcd_prefix, "jwks")
        .await?;
    println!("{}", serde_json::to_string_pretty(&d.trust_bundle())?);
    Ok(())
}
