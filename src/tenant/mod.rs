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

/// No tenant may hold more than this fraction of the connection cap, so a
/// cap lowered by the open-file limit (or set low) can never be filled by
/// one pod: the pod is refused at its share first.
pub const MAX_SHARE_OF_CAP: usize = 4;

/// The connection share a tenant gets: `per_source` (0: no limit), but at
/// most a quarter of the cap (`cap` 0: no cap) and at least one.
pub fn share_of(per_source: usize, cap: usize) -> usize {
    match (per_source, cap) {
        (0, _) | (_, 0) => per_source,
        (n, cap) => n.min((cap / MAX_SHARE_OF_CAP).max(1)),
    }
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

#[cfg(test)]
mod tests {
    use super::share_of;

    #[test]
    fn a_share_is_at_most_a_quarter_of_the_cap() {
        assert_eq!(share_of(64, 4096), 64);
        assert_eq!(share_of(64, 100), 25);
        assert_eq!(share_of(8, 16), 4);
        assert_eq!(share_of(64, 2), 1);
        assert_eq!(share_of(0, 16), 0, "no limit stays no limit");
        assert_eq!(share_of(64, 0), 64);
    }
}
