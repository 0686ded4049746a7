//! Per-pod request rates (per source when no pod resolves): a token bucket
//! each (GCRA, from `governor`). A pod's limiter is found once per
//! connection and kept with its cached identity, so a request pays one
//! atomic update.

use std::{num::NonZeroU32, sync::Arc};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use pod_limiters::Limiters;

use super::SourceKey;
use crate::appc::PodUuid;

/// The limit for one pod: `None` when limits are off.
pub type PodLimiter = Option<Arc<DefaultDirectRateLimiter>>;

/// `--rate-limit` and `--rate-burst`.
pub struct Rates {
    quota: Option<Quota>,
    pods: Limiters,
    sources: Option<DefaultKeyedRateLimiter<SourceKey>>,
}

impl Rates {
    /// `per_second` requests per second with bursts of `burst`; 0 turns
    /// limits off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let quota = NonZeroU32::new(per_second).map(|rate| {
            Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate))
        });
        Self {
            quota,
            pods: Limiters::default(),
            sources: quota.map(RateLimiter::keyed),
        }
    }

    /// The limiter of pod `uuid` (created on first use).
    pub fn pod(&self, uuid: &PodUuid) -> PodLimiter {
        let quota = self.quota?;
        Some(
            self.pods
                .get_or_insert(*uuid, || Arc::new(RateLimiter::direct(quota))),
        )
    }

    /// Takes one request from `limiter`'s bucket: false when it is empty.
    pub fn allow_pod(limiter: &PodLimiter) -> bool {
        limiter.as_ref().is_none_or(|l| l.check().is_ok())
    }

    /// Takes `n` requests' worth from `limiter`'s bucket at once (work that
    /// costs as much as `n` answers: an SVID per identity of a pod), or a
    /// whole burst when `n` is more. False when it does not hold them.
    pub fn allow_pod_n(limiter: &PodLimiter, n: u32) -> bool {
        let Some(n) = std::num::NonZeroU32::new(n) else {
            return true;
        };
        limiter.as_ref().is_none_or(|l| match l.check_n(n) {
            Ok(r) => r.is_ok(),
            // More than a whole burst: a whole (full) burst pays for it.
            Err(governor::InsufficientCapacity(burst)) => {
                std::num::NonZeroU32::new(burst).is_some_and(|b| matches!(l.check_n(b), Ok(Ok(()))))
            }
        })
    }

    /// Takes one request from the bucket of `source` (for requests that
    /// resolved no pod).
    pub fn allow_source(&self, source: &SourceKey) -> bool {
        self.sources
            .as_ref()
            .is_none_or(|l| l.check_key(source).is_ok())
    }

    /// Forgets idle source buckets and the limiters of pods that are gone.
    pub fn prune(&self, registered: impl Fn(&PodUuid) -> bool) {
        if let Some(s) = &self.sources {
            s.retain_recent();
            s.shrink_to_fit();
        }
        self.pods.retain(registered);
    }
}

/// Per-pod limiters by UUID.
mod pod_limiters {
    use std::{collections::HashMap, sync::Arc};

    use governor::DefaultDirectRateLimiter;
    use parking_lot::RwLock;

    use crate::appc::PodUuid;

    /// Looked up once per connection (then cached with its identity), so a
    /// plain map under a lock is enough.
    #[derive(Default)]
    pub struct Limiters {
        map: RwLock<HashMap<PodUuid, Arc<DefaultDirectRateLimiter>>>,
    }

    impl Limiters {
        pub fn get_or_insert(
            &self,
            uuid: PodUuid,
            make: impl FnOnce() -> Arc<DefaultDirectRateLimiter>,
        ) -> Arc<DefaultDirectRateLimiter> {
            if let Some(l) = self.map.read().get(&uuid) {
                return l.clone();
            }
            self.map.write().entry(uuid).or_insert_with(make).clone()
        }

        pub fn retain(&self, keep: impl Fn(&PodUuid) -> bool) {
            self.map.write().retain(|u, _| keep(u));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_gets_its_burst_then_is_limited_and_others_are_not() {
        let rates = Rates::new(10, 5);
        let a = PodUuid::parse("de305d54-75b4-431b-adb2-eb6b9e546013").unwrap();
        let b = PodUuid::parse("fe305d54-75b4-431b-adb2-eb6b9e546013").unwrap();
        let la = rates.pod(&a);
        let allowed = (0..20).filter(|_| Rates::allow_pod(&la)).count();
        assert_eq!(
            allowed, 5,
            "the burst, then nothing within the same instant"
        );
        // The same pod's limiter, found again, is the same bucket.
        assert!(!Rates::allow_pod(&rates.pod(&a)));
        assert!(Rates::allow_pod(&rates.pod(&b)));
        rates.prune(|u| *u == b);
        assert!(
            Rates::allow_pod(&rates.pod(&a)),
            "a new bucket after pruning"
        );
    }

    #[test]
    fn sources_are_limited_separately_and_zero_is_off() {
        let rates = Rates::new(1, 2);
        let s1 = SourceKey::of("198.18.0.2".parse().unwrap());
        let s2 = SourceKey::of("198.18.0.6".parse().unwrap());
        assert!(rates.allow_source(&s1) && rates.allow_source(&s1));
        assert!(!rates.allow_source(&s1));
        assert!(rates.allow_source(&s2));
        let off = Rates::new(0, 0);
        assert!((0..10_000).all(|_| off.allow_source(&s1)));
        assert!(off
            .pod(&PodUuid::parse("de305d54-75b4-431b-adb2-eb6b9e546013").unwrap())
            .is_none());
    }
}
