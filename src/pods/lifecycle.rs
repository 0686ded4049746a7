//! Registrations over time: reloading them at start, collecting the dead.

use std::{collections::HashMap, time::Instant};

use netns::NetnsRef;

use super::Pods;
use crate::{
    appc::{ImageManifest, PodManifest},
    persist::{Record, StoredNetns},
    registry::{NetnsBinding, Pod, TokenDigest},
};

impl Pods {
    /// Reloads persisted registrations. A registration whose namespace is
    /// gone is dropped (and its file removed) with an `info` line.
    pub async fn reload(&self) -> usize {
        let Some(store) = &self.store else {
            return 0;
        };
        let mut loaded = 0;
        for record in store.load() {
            let uuid = record.uuid;
            match self.restore(record).await {
                Ok(()) => loaded += 1,
                Err(reason) => {
                    tracing::info!(pod = %uuid, %reason, "dropping a stored registration");
                    let _ = store.remove(&uuid);
                }
            }
        }
        loaded
    }

    async fn restore(&self, record: Record) -> Result<(), String> {
        let token = TokenDigest(record.token_digest().ok_or("bad token digest")?);
        let json = serde_json::from_str(&record.manifest).map_err(|e| e.to_string())?;
        let (manifest, echo) = PodManifest::from_value(json).map_err(|e| e.to_string())?;
        let binding = match &record.netns {
            StoredNetns::Known { path, dev, ino } => {
                let r = NetnsRef::open(path)
                    .map_err(|_| format!("network namespace {} is gone", path.display()))?;
                if (r.id().dev, r.id().ino) != (*dev, *ino) {
                    return Err(format!(
                        "{} now names another network namespace",
                        path.display()
                    ));
                }
                self.watches.acquire(&r).await.map_err(|e| e.to_string())?;
                NetnsBinding::Known(r)
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
        let id = pod.netns_id();
        if let Err(e) = self.registry.insert(pod) {
            if let Some(id) = id {
                self.watches.release(id);
            }
            return Err(e.to_string());
        }
        Ok(())
    }

    /// Removes registrations that have looked dead for the grace period:
    /// their namespace is gone, or rkt's pod directory left `pods/run/`
    /// (rkt never did this: crashed `rkt run`s left registrations forever).
    pub fn collect_garbage(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut dead = self.dead_since.lock().unwrap_or_else(|p| p.into_inner());
            let mut still_dead = HashMap::new();
            for pod in self.registry.snapshot() {
                let Some(reason) = self.why_dead(&pod) else {
                    continue;
                };
                let since = dead.get(&pod.uuid).copied().unwrap_or(now);
                if now.duration_since(since) >= self.config.gc_grace {
                    expired.push((pod.uuid, reason));
                } else {
                    still_dead.insert(pod.uuid, since);
                }
            }
            *dead = still_dead;
        }
        for (uuid, reason) in expired {
            if let Some(Err(e)) = self.remove(&uuid, reason) {
                tracing::warn!(pod = %uuid, error = %e, "cannot collect a dead registration");
            }
        }
    }

    fn why_dead(&self, pod: &Pod) -> Option<&'static str> {
        if let Some(id) = pod.netns_id() {
            if !self.watches.is_live(id) {
                return Some("garbage-collected: its network namespace is gone");
            }
        }
        if pod.rkt_pod && !self.rkt_pod_dir(&pod.uuid).is_dir() {
            return Some("garbage-collected: its rkt pod directory left pods/run");
        }
        None
    }
}
