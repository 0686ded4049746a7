//! Registrations over time: reloading them at start, collecting the dead.

use std::{collections::HashMap, sync::Arc, time::Instant};

use netns::{NetnsCookie, NetnsFile};

use super::{blocking, Pods};
use crate::{
    appc::{ImageManifest, PodManifest},
    persist::{Record, StoredNetns},
    registry::{NetnsBinding, Pod, TokenDigest},
};

impl Pods {
    /// Reloads persisted registrations. One whose namespace instance is
    /// gone (its path missing or naming another instance, or the host
    /// rebooted) is dropped, and its file removed, with an `info` line that
    /// says why.
    pub async fn reload(&self) -> usize {
        let Some(store) = self.store.clone() else {
            return 0;
        };
        let records = match blocking({
            let store = store.clone();
            move || store.load()
        })
        .await
        {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload registrations");
                return 0;
            }
        };
        let mut loaded = 0;
        for record in records {
            let uuid = record.uuid;
            match self.restore(record, store.boot_id()).await {
                Ok(()) => loaded += 1,
                Err(reason) => {
                    tracing::info!(pod = %uuid, %reason, "dropping a stored registration");
                    let store = store.clone();
                    let _ = blocking(move || store.remove(&uuid)).await;
                }
            }
        }
        loaded
    }

    async fn restore(&self, record: Record, boot_id: &str) -> Result<(), String> {
        let token = TokenDigest(record.token_digest().ok_or("bad token digest")?);
        let json = serde_json::from_str(&record.manifest).map_err(|e| e.to_string())?;
        let (manifest, echo) = PodManifest::from_value(json).map_err(|e| e.to_string())?;
        let binding = match record.netns {
            StoredNetns::Known {
                path,
                cookie,
                boot_id: stored_boot,
                ..
            } => {
                let (Some(cookie), Some(stored_boot)) = (cookie, stored_boot) else {
                    return Err(format!(
                        "it names {} without a namespace cookie (stored by an older version): its namespace instance cannot be proven",
                        path.display()
                    ));
                };
                if stored_boot != boot_id {
                    return Err("the host has rebooted since it was stored".into());
                }
                let shown = path.display().to_string();
                let file = blocking(move || NetnsFile::open(&path))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("its network namespace is gone: {e}"))?;
                let lease = self
                    .watches
                    .acquire(&file)
                    .await
                    .map_err(|e| e.to_string())?;
                if lease.cookie() != NetnsCookie(cookie) {
                    return Err(format!(
                        "{shown} now names another network namespace instance ({}, stored {})",
                        lease.cookie(),
                        NetnsCookie(cookie)
                    ));
                }
                NetnsBinding::Known(Arc::new(lease))
            }
            StoredNetns::HostNetwork => NetnsBinding::HostNetwork,
            StoredNetns::Pending => NetnsBinding::Pending,
        };
        let mut pod = Pod::new(
            record.uuid,
            token,
            manifest,
            &echo,
            binding,
            record.registered_at,
            record.registrant,
        );
        pod.rkt_pod = record.rkt_pod;
        for (name, source) in record.apps {
            let (image, echo) = serde_json::from_str(&source)
                .map_err(|e| e.to_string())
                .and_then(|j| ImageManifest::from_value(j).map_err(|e| e.to_string()))?;
            let app = pod
                .make_app(&name, &image, &echo)
                .ok_or_else(|| format!("app {name} is not in the manifest"))?;
            pod.apps.insert(name, app);
        }
        self.registry.insert(pod).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Removes registrations that have looked dead for the grace period:
    /// their namespace instance is gone, or rkt's pod directory left
    /// `pods/run/` (rkt never did this: crashed `rkt run`s left
    /// registrations forever).
    pub async fn collect_garbage(&self) {
        let pods = self.registry.snapshot();
        let rkt = self.rkt.clone();
        // The directory checks are file I/O: off the runtime's workers.
        let dead = blocking(move || {
            pods.into_iter()
                .filter_map(|pod| why_dead(&pod, &rkt).map(|why| (pod, why)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut dead_since = self.dead_since.lock();
            let mut still_dead = HashMap::new();
            for (pod, reason) in dead {
                let since = dead_since.get(&pod.uuid).copied().unwrap_or(now);
                if now.duration_since(since) >= self.gc_grace {
                    expired.push((pod, reason));
                } else {
                    still_dead.insert(pod.uuid, since);
                }
            }
            *dead_since = still_dead;
        }
        for (pod, reason) in expired {
            // Only the registration judged dead: a re-registration since
            // then is another one.
            match self.remove_if(&pod.uuid, reason, Some(&pod)).await {
                Ok(()) | Err(super::RegisterError::PodNotFound) => {}
                Err(e) => {
                    tracing::warn!(pod = %pod.uuid, error = %e, "cannot collect a dead registration")
                }
            }
        }
    }
}

fn why_dead(pod: &Pod, rkt: &super::RktDir) -> Option<&'static str> {
    if pod.netns_gone() {
        return Some("garbage-collected: its network namespace is gone");
    }
    if pod.rkt_pod && !rkt.has_pod(&pod.uuid) {
        return Some("garbage-collected: its rkt pod directory left pods/run");
    }
    None
}
