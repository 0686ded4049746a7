//! The trust domain's keys, followed from the cluster directory: every
//! other node's X.509 authorities and JWT keys, read every
//! [`REREAD`] so that the bundle handed to pods (HTTP and the Workload
//! API) is the whole trust domain's, and a pod on one node verifies a pod
//! on another (SPEC §9).

use std::{sync::Arc, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine};
use tokio::sync::watch;

use super::{directory, etcd::EtcdStore, Config};
use crate::{jwt::JwkSet, state::AppState};

/// How often the node records are read again.
pub const REREAD: Duration = Duration::from_secs(10);

/// Runs until `stop`.
pub async fn follow(config: Config, state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let timeout = super::call_timeout(config.lease_ttl);
    // One store for the agent's life: its connections and tokens are
    // reused. A new one every read cost etcd a TLS handshake and a
    // password check (bcrypt) per node every 10 s: at 100 nodes on a
    // hardened etcd, enough to slow every node's publication.
    let mut store = match EtcdStore::connect(&config.endpoints, &config.access, timeout).await {
        Ok(store) => store,
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow the trust domain's keys in etcd");
            return;
        }
    };
    // The member the publisher fails over to first (the next one): these
    // reads every 10 s keep a token there, which the publisher shares, so
    // that when its member dies, failing over costs etcd no password
    // check just when a third of the fleet fails over with it.
    store.prefer_member(super::first_member(&config.node).wrapping_add(1));
    let mut failing = false;
    loop {
        match directory::read_nodes(&mut store, &config.prefix).await {
            Ok(d) => {
                failing = false;
                let (mut x509, mut jwks) = (Vec::new(), JwkSet::default());
                for (name, n) in &d.nodes {
                    if *name == config.node {
                        continue;
                    }
                    for a in &n.record.x509 {
                        if let Ok(der) = STANDARD.decode(a) {
                            if !x509.contains(&der) {
                                x509.push(der);
                            }
                        }
                    }
                    for k in &n.record.jwks.keys {
                        if !jwks.keys.iter().any(|o| o.kid == k.kid) {
                            jwks.keys.push(k.clone());
                        }
                    }
                }
                let nodes = d.nodes.len();
                if state.svids.set_cluster(x509, jwks) {
                    tracing::info!(
                        nodes,
                        "the trust domain's bundle changed (the cluster directory's node records)"
                    );
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read the trust domain's keys from etcd; serving the last ones read");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(REREAD) => {}
            _ = stop.changed() => return,
        }
    }
}
