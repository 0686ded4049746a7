//! Reading the etcd cluster directory, for the readers (`audit --etcd`,
//! `jwks --etcd`, `verify-token --etcd`).

use std::time::Duration;

use anyhow::{Context, Result};

use rkt_mds::{
    cli::{Endpoints, EtcdAccessArgs, EtcdPrefixArg},
    cluster::{
        directory::{self, Scope},
        etcd::Access,
        Directory,
    },
};

/// The bound of each etcd call of a reader.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The directory under the prefix (or only its node records); entries
/// that cannot be read are named on stderr.
pub async fn read(
    endpoints: &Endpoints,
    access: &EtcdAccessArgs,
    prefix: &EtcdPrefixArg,
    scope: Scope,
) -> Result<Directory> {
    let access = Access::load(&access.flags(), endpoints.https())?;
    let d = directory::read(&endpoints.0, &access, &prefix.prefix, scope, CALL_TIMEOUT)
        .await
        .with_context(|| format!("etcd at {}", endpoints.0.join(",")))?;
    for (key, why) in &d.unreadable {
        eprintln!("rkt-mds: cannot read {key}: {why}");
    }
    Ok(d)
}

/// Every node's record, for a command that prints the trust bundle
/// (`command`: its name, for the line that says the bundle is empty).
pub async fn read_nodes(
    endpoints: &Endpoints,
    access: &EtcdAccessArgs,
    prefix: &EtcdPrefixArg,
    command: &str,
) -> Result<Directory> {
    let d = read(endpoints, access, prefix, Scope::Nodes).await?;
    if d.nodes.is_empty() {
        eprintln!(
            "rkt-mds {command}: no node has published under {:?}: the bundle is empty",
            prefix.prefix
        );
    }
    Ok(d)
}
