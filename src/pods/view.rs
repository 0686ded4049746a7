//! A pod as operators see it (`GET /pods`, `audit`): its namespace, its
//! addresses, and what the host's side says of each. Never the token.

use std::net::IpAddr;

use netns::Attribution;
use serde::Serialize;

use super::Pods;
use crate::{
    appc::PodUuid,
    registry::{NetnsBinding, Pod, Registrant},
};

/// One pod in `GET /pods`.
#[derive(Serialize)]
pub struct PodView {
    pub uuid: PodUuid,
    pub apps: Vec<String>,
    pub registered_apps: Vec<String>,
    pub netns: Option<NetnsView>,
    pub addresses: Vec<IpAddr>,
    pub state: &'static str,
    /// Addresses this pod holds that the host attributes elsewhere: to
    /// another namespace, an unregistered one, or the host itself. The
    /// claim denies nothing to the rightful holder.
    pub conflicts: Vec<IpAddr>,
    /// How the host attributes this pod's addresses to its namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribution: Option<AttributionView>,
    pub registered_at: u64,
    pub registrant: Registrant,
}

#[derive(Serialize)]
pub struct NetnsView {
    pub path: String,
    /// The nsfs inode seen when the pod was bound (display only).
    pub inode: u64,
    /// The namespace instance's identity.
    pub cookie: u64,
    /// Why the binding is over, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gone: Option<String>,
}

#[derive(Serialize)]
pub struct AttributionView {
    /// `routed` (route → veth → namespace), `bridged` (neighbour → FDB
    /// port → veth → namespace), or `none` (no address of the pod is
    /// attributed to it by the host).
    pub path: &'static str,
    /// Bridged only: whether the bridge enforces source addresses
    /// (permanent neighbour entries, static sticky FDB entries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforced: Option<bool>,
    pub note: &'static str,
}

impl Pods {
    /// How many registered pods are in each state (for the metrics).
    pub fn count_by_state(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for pod in self.registry().snapshot() {
            *counts.entry(self.view(&pod).state).or_default() += 1;
        }
        counts
    }

    /// The operator's view of `pod`.
    pub fn view(&self, pod: &Pod) -> PodView {
        let (netns, addresses, mut state) = match &pod.netns {
            NetnsBinding::Known(lease) => {
                let status = lease.status();
                let instance = lease.instance();
                (
                    Some(NetnsView {
                        path: instance.path().display().to_string(),
                        inode: instance.ino(),
                        cookie: instance.cookie().0,
                        gone: status.reason,
                    }),
                    status
                        .addresses
                        .into_iter()
                        .filter(|a| !a.is_loopback())
                        .collect::<Vec<_>>(),
                    if status.live {
                        "verified"
                    } else {
                        "netns-gone"
                    },
                )
            }
            NetnsBinding::HostNetwork => (None, Vec::new(), "host-network"),
            NetnsBinding::Pending => (None, Vec::new(), "netns-unknown"),
        };
        let own = pod.netns_cookie();
        let mut conflicts = Vec::new();
        let (mut routed, mut bridged, mut enforced) = (false, false, true);
        for a in addresses.iter().filter(|a| !netns::is_link_local(a)) {
            if self.watches.index().holds(a, self.host.cookie()) {
                conflicts.push(*a);
                continue;
            }
            match self.watches.attribute(*a) {
                Attribution::Routed(c) if Some(c) == own => routed = true,
                Attribution::Bridged {
                    cookie,
                    enforced: e,
                } if Some(cookie) == own => {
                    bridged = true;
                    enforced &= e;
                }
                Attribution::Routed(_)
                | Attribution::Bridged { .. }
                | Attribution::Unwatched { .. } => conflicts.push(*a),
                // Not routed to any namespace by the host: harmless.
                Attribution::Elsewhere(_) => {}
            }
        }
        if !conflicts.is_empty() && state == "verified" {
            state = "conflict";
        }
        // Refused everything in the checking modes: not `verified`.
        if state == "verified"
            && bridged
            && !enforced
            && self.mode() != crate::identity::Mode::Token
            && !self.options.allow_unenforced_bridge
        {
            state = "unenforced";
        }
        let attribution = matches!(state, "verified" | "conflict" | "unenforced").then_some({
            if bridged {
                AttributionView {
                    path: "bridged",
                    enforced: Some(enforced),
                    note: if enforced {
                        "neighbour and FDB entries are fixed: no other port can take its addresses"
                    } else {
                        "only as strong as the bridge's anti-spoofing, which is not enforced (no permanent neighbour entry and static sticky FDB entry): a pod on the bridge can take its addresses"
                    },
                }
            } else if routed {
                AttributionView {
                    path: "routed",
                    enforced: None,
                    note: "the host's route to its addresses leads through its veth",
                }
            } else {
                AttributionView {
                    path: "none",
                    enforced: None,
                    note: "the host attributes none of its addresses to its namespace",
                }
            }
        });
        PodView {
            uuid: pod.uuid,
            apps: pod.manifest.apps.iter().map(|a| a.name.clone()).collect(),
            registered_apps: pod.apps.keys().cloned().collect(),
            netns,
            addresses,
            state,
            conflicts,
            attribution,
            registered_at: pod.registered_at,
            registrant: pod.registrant,
        }
    }
}
