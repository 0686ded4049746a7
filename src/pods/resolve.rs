//! Identity resolution of public requests, and the lazy discovery of
//! namespaces that rkt records after registering.

use std::{net::IpAddr, sync::Arc, time::Instant};

use netns::{Attribution, NetnsCookie};

use super::{blocking, find, Pods, DISCOVERY_INTERVAL};
use crate::{
    appc::PodUuid,
    identity::{self, Binding, Claim, Mode, Refusal, Source, Verdict},
    registry::{NetnsBinding, Pod, TokenDigest},
};

/// The longest a resolution waits for the host's view to catch up.
const HOST_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A refused public request: why, and which pod the token claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub reason: Refusal,
    pub claimed: Option<PodUuid>,
}

impl Pods {
    /// Looks for the namespace of a `Pending` pod (rate-limited per pod);
    /// when found, watches it and binds the pod to it, for good.
    pub async fn discover(&self, uuid: &PodUuid) {
        {
            let mut last = self.last_discovery.lock();
            if last
                .get(uuid)
                .is_some_and(|t| t.elapsed() < DISCOVERY_INTERVAL)
            {
                return;
            }
            last.insert(*uuid, Instant::now());
        }
        let _guard = self.locks.lock(uuid).await;
        if !self
            .registry
            .get(uuid)
            .is_some_and(|p| matches!(p.netns, NetnsBinding::Pending))
        {
            return;
        }
        let (rkt, id) = (self.rkt.clone(), *uuid);
        let file = match blocking(move || find::discover_netns(&rkt, &id)).await {
            Ok(Ok(Some(file))) => file,
            Ok(Ok(None)) => return,
            Ok(Err(reason)) => {
                tracing::warn!(pod = %uuid, %reason, "cannot use the network namespace rkt recorded");
                return;
            }
            Err(e) => {
                tracing::warn!(pod = %uuid, error = %e, "namespace discovery failed");
                return;
            }
        };
        let lease = match self.acquire(&file).await {
            Ok(lease) => Arc::new(lease),
            Err(e) => {
                tracing::warn!(pod = %uuid, netns = %file.path().display(), error = %e, "cannot watch the discovered network namespace");
                return;
            }
        };
        let Some(pod) = self.registry.update(uuid, |p| {
            p.netns = NetnsBinding::Known(lease.clone());
        }) else {
            return;
        };
        if let Err(e) = self.persist(&pod).await {
            tracing::warn!(pod = %uuid, error = %e, "cannot persist the discovered network namespace");
        }
        tracing::info!(pod = %uuid, netns = %file.path().display(), cookie = %lease.cookie(), "network namespace discovered from rkt's pod directory");
    }

    /// Binds every `Pending` pod whose namespace rkt has written since.
    pub async fn discover_pending(&self) {
        let pending: Vec<PodUuid> = self
            .registry
            .snapshot()
            .iter()
            .filter(|p| matches!(p.netns, NetnsBinding::Pending))
            .map(|p| p.uuid)
            .collect();
        for uuid in pending {
            self.discover(&uuid).await;
        }
    }

    /// Who is asking: the pod a public request acts as, or why it is
    /// refused (with the pod the token claimed, for the log). A hit costs
    /// two hash lookups and no syscall.
    pub async fn resolve(&self, token: Option<&str>, peer: IpAddr) -> Result<Arc<Pod>, Refused> {
        let mut pod = match token {
            Some(t) => Some(self.registry.by_token(&TokenDigest::of(t)).ok_or(Refused {
                reason: Refusal::UnknownToken,
                claimed: None,
            })?),
            None => None,
        };
        if self.mode != Mode::Token {
            if let Some(p) = pod
                .as_ref()
                .filter(|p| matches!(p.netns, NetnsBinding::Pending))
            {
                let uuid = p.uuid;
                self.discover(&uuid).await;
                // Unregistered meanwhile: the token is unknown now (never
                // fall back to resolving a token-bearing request by address).
                pod = Some(self.registry.get(&uuid).ok_or(Refused {
                    reason: Refusal::UnknownToken,
                    claimed: None,
                })?);
            }
        }
        let claimed = pod.as_ref().map(|p| p.uuid);
        self.decide(self.mode, pod, peer.to_canonical())
            .await
            .map_err(|reason| Refused { reason, claimed })
    }

    /// The pod a tokenless caller from `peer` is (the tokenless rule of
    /// SPEC §5, whatever the mode, for the Workload API); `None` in
    /// `token` mode, which proves nothing about a caller.
    pub async fn attest(&self, peer: IpAddr) -> Option<Result<Arc<Pod>, Refusal>> {
        if self.mode == Mode::Token {
            return None;
        }
        Some(self.decide(Mode::Netns, None, peer.to_canonical()).await)
    }

    /// The live pods bound to the namespace instance whose file is
    /// `(dev, ino)`: sound for a namespace the caller holds open, since a
    /// live pod's namespace is held by its watcher and its inode cannot be
    /// reused meanwhile. `None` in `token` mode.
    pub fn pods_in_namespace(&self, dev: u64, ino: u64) -> Option<Vec<Arc<Pod>>> {
        if self.mode == Mode::Token {
            return None;
        }
        Some(
            self.registry
                .pods_in_file(dev, ino)
                .iter()
                .filter_map(|u| self.registry.get(u))
                .filter(|p| {
                    p.lease().is_some_and(|l| {
                        l.is_live() && (l.instance().dev(), l.instance().ino()) == (dev, ino)
                    })
                })
                .collect(),
        )
    }

    /// Whether `peer` is one of the host's own addresses (loopback
    /// included): shared by every host process and host-network pod.
    pub fn is_host_address(&self, peer: &IpAddr) -> bool {
        self.on_host(&peer.to_canonical())
    }

    /// Whether `peer` is one of the host's own addresses.
    fn on_host(&self, peer: &IpAddr) -> bool {
        // Loopback never crosses a namespace boundary: a loopback peer is
        // the agent's own namespace, though every namespace has its own.
        peer.is_loopback() || self.watches.index().holds(peer, self.host.cookie())
    }

    /// The pods' namespaces that hold `peer` (never the host's).
    fn holders(&self, peer: &IpAddr) -> Vec<NetnsCookie> {
        if peer.is_loopback() {
            return Vec::new();
        }
        let host = self.host.cookie();
        let mut holders = self.watches.index().holders(peer);
        holders.retain(|c| *c != host);
        holders
    }

    /// The live pods bound to instance `cookie`.
    fn live_pods_in(&self, cookie: NetnsCookie) -> Vec<PodUuid> {
        let mut pods = self.registry.pods_in(cookie);
        pods.retain(|u| self.registry.get(u).is_some_and(|p| !p.netns_gone()));
        pods
    }

    /// Re-dumps instance `cookie` through any live lease on it.
    async fn refresh(&self, cookie: NetnsCookie) -> bool {
        let lease = self.registry.pods_in(cookie).iter().find_map(|u| {
            let pod = self.registry.get(u)?;
            let NetnsBinding::Known(lease) = &pod.netns else {
                return None;
            };
            lease.is_live().then(|| lease.clone())
        });
        match lease {
            Some(lease) => lease.refresh().await,
            None => false,
        }
    }

    async fn decide(
        &self,
        mode: Mode,
        pod: Option<Arc<Pod>>,
        peer: IpAddr,
    ) -> Result<Arc<Pod>, Refusal> {
        // The common cases first, without building the holder list: the
        // host attributes the address to the token's namespace, which
        // holds it; or a pod without a namespace asks from the host.
        if let Some(p) = &pod {
            let accepted = mode == Mode::Token
                || match p.lease() {
                    Some(lease) => {
                        let c = lease.cookie();
                        lease.is_live()
                            && !self.on_host(&peer)
                            && self.proves(self.watches.attribute(peer), c)
                            && self.watches.index().holds(&peer, c)
                    }
                    None => self.on_host(&peer),
                };
            if accepted {
                return Ok(p.clone());
            }
        }
        let claim = match &pod {
            None => Claim::NoToken,
            Some(p) => Claim::Pod(
                p.uuid,
                match p.lease() {
                    Some(lease) if lease.is_live() => Binding::Netns(lease.cookie()),
                    Some(_) => Binding::Gone,
                    None => Binding::None,
                },
            ),
        };
        let decide_now = |may_refresh| {
            let holders = self.holders(&peer);
            let source = Source {
                on_host: self.on_host(&peer),
                attributed: self.watches.attribute(peer),
                holders: &holders,
            };
            identity::decide(
                mode,
                self.options,
                claim,
                source,
                |c| self.live_pods_in(c),
                may_refresh,
            )
        };
        let mut verdict = decide_now(true);
        if let Verdict::RefreshThenRetry(cookie) = verdict {
            // A route or an address may have just been added: catch up on
            // the host's events and the namespace's, then decide for good.
            // Bounded: under heavy churn a re-dump of the host's tables may
            // take long, and a request must not hang on it; what is known
            // after the wait decides (a refusal the client may retry).
            if tokio::time::timeout(HOST_SYNC_WAIT, self.watches.sync_host())
                .await
                .is_err()
            {
                tracing::warn!(peer = %peer, "the host's view did not catch up within {HOST_SYNC_WAIT:?}; deciding on what it knows");
            }
            let lease = pod.as_ref().and_then(|p| p.lease());
            match (lease, cookie) {
                (Some(l), Some(c)) if l.cookie() == c => {
                    l.refresh().await;
                }
                (_, Some(c)) => {
                    self.refresh(c).await;
                }
                _ => {}
            }
            verdict = if lease.is_some_and(|l| !l.is_live()) {
                Verdict::Refuse(Refusal::NetnsGone)
            } else {
                decide_now(false)
            };
        }
        match verdict {
            Verdict::Accept(uuid) => match pod {
                Some(p) if p.uuid == uuid => Ok(p),
                _ => self.registry.get(&uuid).ok_or(Refusal::NoPodForAddress),
            },
            Verdict::Refuse(r) => Err(r),
            Verdict::RefreshThenRetry(_) => Err(Refusal::NotInNetns),
        }
    }
}

impl Pods {
    /// Whether the host's attribution names instance `c` in a way that
    /// proves it: routed, or bridged where the bridge enforces (or the
    /// operator accepted that it does not).
    fn proves(&self, a: Attribution, c: NetnsCookie) -> bool {
        match a {
            Attribution::Routed(x) => x == c,
            Attribution::Bridged { cookie, enforced } => {
                cookie == c && (enforced || self.options.allow_unenforced_bridge)
            }
            Attribution::Unwatched { .. } | Attribution::Elsewhere(_) => false,
        }
    }
}
