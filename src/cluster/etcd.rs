//! The [`Store`] on etcd v3, through the `etcd-client` crate. Every call
//! is bounded by a timeout of our own (the crate's per-request timeout
//! would also cut the keep-alive stream).

use std::{future::Future, time::Duration};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, TxnOpResponse,
};

use super::{
    layout::range_end,
    store::{Claim, Fence, Lease, Op, Store, StoreError},
};

/// Keys per page of a keys-only listing.
const KEYS_PAGE: i64 = 5_000;
/// Key-values per page of a full listing: pod entries are about a
/// kilobyte, so a page stays far below the message size limit.
const VALUES_PAGE: i64 = 500;
/// The largest answer we accept (a page of unusually large entries).
const MAX_MESSAGE: usize = 64 << 20;
/// Attempts of a claim when the holder changes under it.
const CLAIM_ATTEMPTS: usize = 3;

/// A connection to an etcd cluster.
pub struct EtcdStore {
    client: Client,
    timeout: Duration,
    /// The keep-alive stream of the lease being renewed.
    keeper: Option<(i64, LeaseKeeper, LeaseKeepAliveStream)>,
}

impl EtcdStore {
    /// A client of `endpoints` (`http://host:port`). Connecting is lazy:
    /// this succeeds with etcd down; calls then fail within `timeout`.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), timeout);
        let client = bounded(timeout, Client::connect(endpoints, Some(options))).await?;
        Ok(Self {
            client,
            timeout,
            keeper: None,
        })
    }

    /// Every key and value starting with `prefix`, read page by page at
    /// one revision (a consistent snapshot).
    pub async fn range(&mut self, prefix: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.paged(prefix, false).await
    }

    /// [`EtcdStore::range`], with empty values when `keys_only`.
    async fn paged(
        &mut self,
        prefix: &str,
        keys_only: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE);
        let end = range_end(prefix.as_bytes());
        let mut start = prefix.as_bytes().to_vec();
        let (mut out, mut revision) = (Vec::new(), 0);
        loop {
            let mut options = GetOptions::new().with_range(end.clone());
            options = if keys_only {
                options.with_keys_only().with_limit(KEYS_PAGE)
            } else {
                options.with_limit(VALUES_PAGE)
            };
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let mut page = bounded(self.timeout, kv.get(start.clone(), Some(options))).await?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            let more = page.more();
            let kvs = page.take_kvs();
            let Some(last) = kvs.last() else { break };
            start = next_key(last.key());
            out.extend(kvs.into_iter().map(|kv| kv.into_key_value()));
            if !more {
                break;
            }
        }
        Ok(out)
    }
}

/// The smallest key after `key`.
fn next_key(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

impl Store for EtcdStore {
    async fn grant(&mut self, ttl: Duration) -> Result<Lease, StoreError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let granted = bounded(self.timeout, self.client.lease_grant(secs, None)).await?;
        if !granted.error().is_empty() || granted.ttl() <= 0 {
            return Err(StoreError::Etcd(format!(
                "lease not granted: {}",
                granted.error()
            )));
        }
        Ok(Lease {
            id: granted.id(),
            ttl: Duration::from_secs(granted.ttl().unsigned_abs()),
        })
    }

    async fn renew(&mut self, lease: i64) -> Result<(), StoreError> {
        let timeout = self.timeout;
        let result = match self.keeper.take() {
            Some((id, mut keeper, mut stream)) if id == lease => {
                let once = async {
                    keeper.keep_alive().await?;
                    stream.message().await
                };
                match bounded(timeout, once).await {
                    Ok(Some(answer)) if answer.ttl() > 0 => {
                        self.keeper = Some((id, keeper, stream));
                        Ok(())
                    }
                    Ok(Some(_)) => Err(StoreError::LeaseLost),
                    Ok(None) => Err(StoreError::Etcd("the keep-alive stream ended".into())),
                    Err(e) => Err(e),
                }
            }
            // The first renewal opens the stream (and renews once).
            _ => match timeout_of(timeout, self.client.lease_keep_alive(lease)).await {
                Ok(Ok((keeper, stream))) => {
                    self.keeper = Some((lease, keeper, stream));
                    Ok(())
                }
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => Err(StoreError::LeaseLost),
                Ok(Err(e)) => Err(describe(e)),
                Err(e) => Err(e),
            },
        };
        result
    }

    async fn revoke(&mut self, lease: i64) -> Result<(), StoreError> {
        if self.keeper.as_ref().is_some_and(|(id, _, _)| *id == lease) {
            self.keeper = None;
        }
        match timeout_of(self.timeout, self.client.lease_revoke(lease)).await? {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(describe(e)),
        }
    }

    async fn claim(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        ours: &[i64],
    ) -> Result<Claim, StoreError> {
        let put = || {
            TxnOp::put(
                key,
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )
        };
        for _ in 0..CLAIM_ATTEMPTS {
            // Free: nobody has created the key.
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([put()])
                .or_else([TxnOp::get(key, None)]);
            let answer = bounded(self.timeout, self.client.txn(txn)).await?;
            if answer.succeeded() {
                return Ok(Claim::Claimed);
            }
            let holder = answer.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.lease())),
                _ => None,
            });
            let holder = match holder {
                Some(Some(holder)) => holder,
                // Deleted in between: try again.
                _ => continue,
            };
            if holder != lease && !ours.contains(&holder) {
                return Ok(Claim::Held { lease: holder });
            }
            // Ours from an earlier session: take it over, unless it moved.
            let txn = Txn::new()
                .when([Compare::lease(key, CompareOp::Equal, holder)])
                .and_then([put()]);
            if bounded(self.timeout, self.client.txn(txn))
                .await?
                .succeeded()
            {
                return Ok(Claim::Claimed);
            }
        }
        Err(StoreError::Etcd(format!(
            "the node key kept changing during {CLAIM_ATTEMPTS} claims"
        )))
    }

    async fn keys(&mut self, prefix: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let keys = self.paged(prefix, true).await?;
        Ok(keys.into_iter().map(|(key, _)| key).collect())
    }

    async fn apply(&mut self, fence: &Fence, ops: Vec<Op>) -> Result<bool, StoreError> {
        let ops: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put(key, value) => {
                    TxnOp::put(key, value, Some(PutOptions::new().with_lease(fence.lease)))
                }
                Op::Delete(key) => TxnOp::delete(key, None),
            })
            .collect();
        let txn = Txn::new()
            .when([Compare::lease(
                fence.key.as_str(),
                CompareOp::Equal,
                fence.lease,
            )])
            .and_then(ops);
        Ok(bounded(self.timeout, self.client.txn(txn))
            .await?
            .succeeded())
    }
}

/// gRPC's NOT_FOUND (5), as etcd answers a revocation of an unknown lease.
fn is_not_found(status: &etcd_client::Error) -> bool {
    matches!(status, etcd_client::Error::GRpcStatus(s) if s.code() as i32 == 5)
}

/// `fut` within `limit`, its error described.
async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    timeout_of(limit, fut).await?.map_err(describe)
}

/// `fut` within `limit`.
async fn timeout_of<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T, StoreError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| StoreError::Timeout(limit))
}

/// One line for a log: a gRPC status by its code and message only.
fn describe(e: etcd_client::Error) -> StoreError {
    StoreError::Etcd(match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        e => e.to_string(),
    })
}
