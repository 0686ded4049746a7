//! The subcommands, one file each, and how they talk to the agent. This
//! is the binary's edge: errors carry context for a person and end as exit
//! code 254 (verify: 2).

pub mod agent;
pub mod audit;
pub mod cluster;
pub mod jwks;
pub mod keys;
pub mod register;
pub mod serve;
pub mod sign;
pub mod token;
pub mod unregister;
pub mod verify;
pub mod verify_token;
