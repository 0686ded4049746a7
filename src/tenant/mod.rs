//! Tenant isolation (SPEC §6): one pod must not be able to deny, slow down
//! or impersonate another. Request rates per pod (or per source), a share
//! of connections per source, and refusal logs that a tenant cannot flood.

mod log_limit;
mod rate;
mod source;
pub mod syn_filter;

pub use log_limit::{LogLimiter, Subject};
pub use rate::{PodLimiter, Rates};
pub use source::{SourceConnections, SourceKey, SourceSlot};

/// The isolation controls of one agent.
pub struct Tenancy {
    pub rates: Rates,
    pub connections: std::sync::Arc<SourceConnections>,
    pub refusal_log: LogLimiter,
}

impl Tenancy {
    pub fn new(rate: u32, burst: u32, connections_per_source: usize) -> Self {
        Self {
            rates: Rates::new(rate, burst),
            connections: SourceConnections::new(connections_per_source),
            refusal_log: LogLimiter::default(),
        }
    }
}
