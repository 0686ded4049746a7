//! Identity resolution of public requests, and the lazy discovery of
//! namespaces that rkt records after registering.

use std::{net::IpAddr, sync::Arc, time::Instant};

use super::{Pods, DISCOVERY_INTERVAL};
use crate::{
    appc::PodUuid,
    identity::{self, Binding, Claim, Mode, Refusal, Verdict},
    registry::{NetnsBinding, Pod, TokenDigest},
};

/// A refused public request: why, and which pod the token claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub reason: Refusal,
    pub claimed: Option<PodUuid>,
}

impl Pods {
    /// Looks for the namespace of a `Pending` pod (rate-limited per pod);
    /// when found, watches it and binds the pod to it.
    pub async fn discover(&self, uuid: &PodUuid) {
        {
            let mut last = self.lock_discovery();
            if last
                .get(uuid)
                .is_some_and(|t| t.elapsed() < DISCOVERY_INTERVAL)
            {
                return;
            }
            last.insert(*uuid, Instant::now());
        }
        let Some(ns) = self.rkt_netns(uuid) else {
            return;
        };
        if let Err(e) = self.watches.acquire(&ns).await {
            tracing::warn!(pod = %uuid, netns = %ns.path().display(), error = %e, "cannot watch the discovered network namespace");
            return;
        }
        let mut bound = false;
        let updated = self.registry.update(uuid, |p| {
            if p.netns == NetnsBinding::Pending {
                p.netns = NetnsBinding::Known(ns.clone());
                bound = true;
            }
        });
        if !bound {
            self.watches.release(ns.id());
            return;
        }
        if let Some(pod) = updated {
            if let Err(e) = self.persist(&pod) {
                tracing::warn!(pod = %uuid, error = %e, "cannot persist the discovered network namespace");
            }
            tracing::info!(pod = %uuid, netns = %ns.path().display(), "network namespace discovered from rkt's pod directory");
        }
    }

    /// Binds every `Pending` pod whose namespace rkt has written since.
    pub async fn discover_pending(&self) {
        let pending: Vec<PodUuid> = self
            .registry
            .snapshot()
            .iter()
            .filter(|p| p.netns == NetnsBinding::Pending)
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
        if self.config.mode != Mode::Token {
            if let Some(p) = pod.as_ref().filter(|p| p.netns == NetnsBinding::Pending) {
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
        self.decide(pod, peer.to_canonical())
            .await
            .map_err(|reason| Refused { reason, claimed })
    }

    async fn decide(&self, pod: Option<Arc<Pod>>, peer: IpAddr) -> Result<Arc<Pod>, Refusal> {
        // The common case first, without building the holder list: a
        // token whose namespace holds the peer address.
        if let Some(p) = &pod {
            let verified = match p.netns_id() {
                Some(id) => !peer.is_loopback() && self.watches.index().holds(&peer, id),
                None => false,
            };
            if verified || self.config.mode == Mode::Token {
                return Ok(p.clone());
            }
        }
        let claim = match &pod {
            None => Claim::NoToken,
            Some(p) => Claim::Pod(
                p.uuid,
                match p.netns_id() {
                    Some(id) => Binding::Netns(id),
                    None => Binding::None,
                },
            ),
        };
        // Loopback never crosses a namespace boundary: a loopback peer is
        // on the host, though every namespace has 127.0.0.1 of its own.
        let holders_of = |peer: &IpAddr| {
            if peer.is_loopback() {
                Vec::new()
            } else {
                self.watches.index().holders(peer)
            }
        };
        let holders = holders_of(&peer);
        let pods_in = |id| self.registry.pods_in(id);
        let mut verdict = identity::decide(self.config.mode, claim, &holders, pods_in, true);
        if verdict == Verdict::Refuse(Refusal::Ambiguous) {
            // Two namespaces claim the address: one may have let go of it
            // a moment ago (IP reuse). Catch up on both before refusing.
            for id in &holders {
                self.watches.refresh(*id).await;
            }
            let holders = holders_of(&peer);
            verdict = identity::decide(self.config.mode, claim, &holders, pods_in, true);
        }
        if let Verdict::RefreshThenRetry(id) = verdict {
            if !self.watches.refresh(id).await {
                verdict = Verdict::Refuse(if self.watches.status(id).is_some_and(|s| !s.live) {
                    Refusal::NetnsGone
                } else {
                    Refusal::NotInNetns
                });
            } else {
                let holders = holders_of(&peer);
                verdict = identity::decide(self.config.mode, claim, &holders, pods_in, false);
            }
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
