//! The state every request handler may touch: below both APIs and the
//! server loop, which only pass it along.

use crate::{
    jwt::IdentityDocs, keys::Keyring, metrics::Metrics, pods::Pods, svid::Svids, tenant::Tenancy,
};

/// Everything a request handler may touch.
pub struct AppState {
    pub pods: Pods,
    pub keys: Keyring,
    /// Identity documents: their signing keys and what they say.
    pub docs: IdentityDocs,
    /// X509-SVIDs: the node's CA and their lifetime.
    pub svids: Svids,
    /// Open Workload API streams, per pod.
    pub workload_streams: std::sync::Arc<crate::workload::streams::StreamBudget>,
    pub metrics: Metrics,
    pub tenancy: Tenancy,
    pub require_metadata_flavor: bool,
    pub registration_group: Option<u32>,
    /// The public port, as the agent actually listens (for clients that
    /// build `AC_METADATA_URL`).
    pub public_port: u16,
    /// The Workload API's port, as the agent listens (`None`: off).
    pub workload_api_port: Option<u16>,
    /// The cluster directory's publisher's figures, with `--etcd`.
    pub directory: Option<std::sync::Arc<crate::cluster::Stats>>,
}
