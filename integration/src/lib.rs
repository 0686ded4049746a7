//! Test harness for rkt-mds: the agent as a real process, pods as real
//! network namespaces joined to the host by veth pairs, and a raw HTTP
//! client that says exactly what rkt says on the wire.
#![forbid(unsafe_code)]

pub mod agent;
pub mod bridge;
pub mod churn;
pub mod etcd;
pub mod fixtures;
pub mod http;
pub mod netlink;
pub mod openssl;
mod plumbing;
pub mod pod;
pub mod privilege;
pub mod proc_net;
pub mod prometheus;
pub mod setup;
mod shield;
mod space;

pub use agent::{Agent, AgentOptions};
pub use bridge::Bridge;
pub use pod::PodNet;

use std::time::{Duration, Instant};

/// Polls `f` every 10 ms until it returns `Some`, or panics after `limit`
/// naming `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
