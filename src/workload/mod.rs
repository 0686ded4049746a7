//! The SPIFFE Workload API (SPEC §9): gRPC on `--workload-api-port`,
//! callers attested by the namespace the host attributes their source
//! address to.

pub mod messages;

/// The generated server (see build.rs).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/.SpiffeWorkloadAPI.rs"));
}

mod claims;
pub mod server;
mod service;
pub mod streams;
