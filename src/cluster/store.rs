//! What the publisher needs of a directory store: leases, a
//! check-and-claim of the node's name, fenced writes and a key listing.
//! etcd implements it (`etcd.rs`); the publisher's tests use a fake.

use std::{future::Future, time::Duration};

/// Why a store operation failed. The text is safe to log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd: {0}")]
    Etcd(String),
    /// etcd's answer with a gRPC status code (5: not found, 7: permission
    /// denied, 16: unauthenticated).
    #[error("etcd: {message}")]
    Status { code: i64, message: String },
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// etcd refused who we are (a certificate, a password): the same on
    /// every member, and no retry will change it until an operator does.
    #[error("{0}")]
    Refused(String),
    #[error("the lease is gone (expired or revoked)")]
    LeaseLost,
}

/// A lease as granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// What the server granted (it may raise a TTL below its minimum).
    pub ttl: Duration,
}

/// The outcome of claiming the node's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The node key is ours, under the new lease.
    Claimed,
    /// Another live lease holds the node key.
    Held { lease: i64 },
}

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Put the value under the batch's lease.
    Put(String, Vec<u8>),
    Delete(Vec<u8>),
}

/// Writes happen only while `key` is attached to `lease`: an agent that
/// lost its claim (its lease expired and another agent took the name)
/// can never overwrite the new holder's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub lease: i64,
}

/// A connection to the store. Every operation is bounded in time.
pub trait Store: Send {
    /// A new lease of (at least) `ttl`.
    fn grant(&mut self, ttl: Duration) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Keeps `lease` alive once more; [`StoreError::LeaseLost`] when it
    /// is gone.
    fn renew(&mut self, lease: i64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Revokes `lease`, deleting the keys still attached to it. A lease
    /// already gone is no error.
    fn revoke(&mut self, lease: i64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Puts `value` at `key` under `lease` if no key is there, or if the
    /// key is attached to one of `ours` (earlier leases of this agent);
    /// otherwise says who holds it. One transaction per attempt.
    fn claim(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        ours: &[i64],
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Every key starting with `prefix`.
    fn keys(
        &mut self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, StoreError>> + Send;

    /// Applies `ops` atomically (puts under `fence.lease`) if the fence
    /// holds; `Ok(false)` when it does not (nothing was written).
    fn apply(
        &mut self,
        fence: &Fence,
        ops: Vec<Op>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
