//! rkt-mds: a network-namespace-aware drop-in replacement for
//! `rkt metadata-service`. See README.md, ../shared/SPEC.md and DESIGN.md.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod api;
pub mod appc;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod deadline;
pub mod fd_limit;
pub mod identity;
pub mod jwt;
pub mod keys;
pub mod listen;
pub mod log_format;
pub mod log_merge;
pub mod log_writer;
pub mod metrics;
pub mod per_thread;
pub mod persist;
pub mod pods;
pub mod registry;
pub mod server;
pub mod state;
pub mod state_lock;
pub mod store;
pub mod svid;
pub mod tenant;
pub mod workload;
