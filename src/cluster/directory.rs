//! The readers' side: the whole cluster directory read from etcd, the
//! addresses held on two nodes, stale nodes, and the cluster's trust
//! bundle (the union of every node's JWK Set).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use super::{
    etcd::{EtcdStore, KeyValue},
    layout::{range_end, Key, Layout, NodeRecord},
    rfc3339,
    store::StoreError,
};
use crate::jwt::JwkSet;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the cluster directory under {prefix:?}")]
    Store {
        prefix: String,
        #[source]
        source: StoreError,
    },
}

/// One node's record.
#[derive(Clone, Debug)]
pub struct NodeEntry {
    pub record: NodeRecord,
    /// `updated`, in seconds since the epoch (`None`: not RFC 3339).
    pub updated: Option<u64>,
    /// The lease the record is attached to (0: none, it never expires).
    pub lease: i64,
}

/// One pod's entry, as its node published it: the JSON text as read (a
/// reader of 100,000 pods holds text, not trees), and what the readers
/// decide on, parsed once.
#[derive(Clone, Debug)]
pub struct PodEntry {
    pub node: String,
    pub uuid: String,
    /// The node's `GET /pods` entry of the pod, as JSON text.
    pub raw: Box<str>,
    state: Box<str>,
    /// Its addresses that identify it beyond its link (neither loopback
    /// nor link-local).
    addresses: Vec<IpAddr>,
}

/// The fields of an entry the readers decide on.
#[derive(serde::Deserialize)]
struct Brief {
    #[serde(default)]
    state: String,
    #[serde(default)]
    addresses: Vec<String>,
}

impl PodEntry {
    /// Parses `raw` (a JSON object) published by `node` for `uuid`.
    pub fn parse(node: &str, uuid: &str, raw: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(raw).map_err(|e| e.to_string())?;
        if !text.trim_start().starts_with('{') {
            return Err("not a JSON object".into());
        }
        let brief: Brief = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok(Self {
            node: node.to_owned(),
            uuid: uuid.to_owned(),
            raw: text.into(),
            state: brief.state.into(),
            addresses: brief
                .addresses
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .filter(|a| !a.is_loopback() && !netns::is_link_local(a))
                .collect(),
        })
    }

    /// The pod's addresses that identify it beyond its link (neither
    /// loopback nor link-local).
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.addresses.clone()
    }

    pub fn state(&self) -> &str {
        &self.state
    }

    /// The entry as a JSON tree (parsed again: for one pod at a time).
    pub fn entry(&self) -> serde_json::Value {
        serde_json::from_str(&self.raw).unwrap_or(serde_json::Value::Null)
    }
}

/// The cluster directory at one revision.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// By node name.
    pub nodes: BTreeMap<String, NodeEntry>,
    /// By node, then UUID.
    pub pods: Vec<PodEntry>,
    /// Keys of our shapes that could not be read, and why.
    pub unreadable: Vec<(String, String)>,
}

/// What a reader needs of the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Node records and pod entries (`audit`).
    Everything,
    /// Node records only (the trust bundle): a few keys per node, however
    /// many pods the cluster holds.
    Nodes,
}

/// Connections that read the pods' ranges at once.
const READERS: usize = 3;

/// Reads the directory under `prefix` from `endpoints`.
pub async fn read(
    endpoints: &[String],
    access: &super::etcd::Access,
    prefix: &str,
    scope: Scope,
    timeout: Duration,
) -> Result<Directory, ReadError> {
    let layout = Layout::new(prefix);
    let wrap = |source| ReadError::Store {
        prefix: layout.prefix().to_owned(),
        source,
    };
    let mut store = EtcdStore::connect(endpoints, access, timeout)
        .await
        .map_err(wrap)?;
    let (mut d, revision) = nodes_from(&mut store, &layout).await.map_err(wrap)?;
    if scope == Scope::Everything {
        // Node by node, and then the gaps between nodes (pods whose node
        // has no record, keys of other shapes): short ranges, so that no
        // page costs etcd the whole rest of the directory (see
        // `EtcdStore::pages_between`). The gaps are empty when all is well.
        // READERS connections, each asking another member first, read a
        // share of the ranges at once: etcd's time per page (most of a
        // reader's wall time) is spent in parallel, on several members.
        let ranges = pod_ranges(&layout, d.nodes.keys());
        let mut readers = vec![store];
        for i in 1..READERS.min(ranges.len()) {
            let mut more = EtcdStore::connect(endpoints, access, timeout)
                .await
                .map_err(wrap)?;
            more.prefer_member(i);
            readers.push(more);
        }
        let n = readers.len();
        let parts = readers.into_iter().enumerate().map(|(i, mut store)| {
            let (layout, ranges) = (&layout, &ranges);
            async move {
                let mut part = Directory::default();
                let mut revision = revision;
                for (start, end) in ranges.iter().skip(i).step_by(n) {
                    store
                        .range_pages_between(start, end, &mut revision, |page| {
                            part.add(layout, page)
                        })
                        .await?;
                }
                Ok::<_, StoreError>(part)
            }
        });
        for part in futures::future::try_join_all(parts).await.map_err(wrap)? {
            d.pods.extend(part.pods);
            d.unreadable.extend(part.unreadable);
        }
        d.unreadable.sort();
    }
    d.finish();
    Ok(d)
}

/// Every node's record under `prefix`, read through `store`: a reader
/// that reads again and again keeps one store, whose connections and
/// auth tokens are reused (a new one each time costs etcd a TLS
/// handshake and a password check, bcrypt, per read).
pub async fn read_nodes(store: &mut EtcdStore, prefix: &str) -> Result<Directory, ReadError> {
    let layout = Layout::new(prefix);
    let (mut d, _) = nodes_from(store, &layout)
        .await
        .map_err(|source| ReadError::Store {
            prefix: layout.prefix().to_owned(),
            source,
        })?;
    d.finish();
    Ok(d)
}

/// The node records, page by page (what a page held is parsed and
/// dropped before the next), and the revision they were read at: every
/// later range reads the same snapshot.
async fn nodes_from(
    store: &mut EtcdStore,
    layout: &Layout,
) -> Result<(Directory, i64), StoreError> {
    let mut d = Directory::default();
    let mut revision = 0;
    let nodes = layout.node("");
    store
        .range_pages_between(
            nodes.as_bytes(),
            &range_end(nodes.as_bytes()),
            &mut revision,
            |page| d.add(layout, page),
        )
        .await?;
    Ok((d, revision))
}

/// `PREFIX pods/` cut into disjoint ranges that cover it: each node's
/// `pods/NODE/`, and the gaps between them, in key order.
fn pod_ranges<'a>(
    layout: &Layout,
    nodes: impl Iterator<Item = &'a String>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let pods = format!("{}pods/", layout.prefix()).into_bytes();
    // By key, not by name: "a-b/" sorts before "a/".
    let mut of_nodes: Vec<Vec<u8>> = nodes.map(|n| layout.pods_of(n).into_bytes()).collect();
    of_nodes.sort();
    let mut ranges = Vec::new();
    let mut from = pods.clone();
    for p in of_nodes {
        let end = range_end(&p);
        if from < p {
            ranges.push((from, p.clone()));
        }
        ranges.push((p, end.clone()));
        from = end;
    }
    ranges.push((from, range_end(&pods)));
    ranges
}

impl Directory {
    /// The directory from the key-values under `layout`'s prefix.
    pub fn parse(layout: &Layout, kvs: Vec<KeyValue>) -> Self {
        let mut d = Directory::default();
        d.add(layout, kvs);
        d.finish();
        d
    }

    /// Adds the key-values of one page.
    fn add(&mut self, layout: &Layout, kvs: Vec<KeyValue>) {
        let d = self;
        for KeyValue { key, value, lease } in kvs {
            let Ok(key) = String::from_utf8(key) else {
                continue;
            };
            match layout.parse(&key) {
                Some(Key::Node(node)) => match serde_json::from_slice::<NodeRecord>(&value) {
                    Ok(record) if record.node == node => {
                        let updated = rfc3339::parse(&record.updated);
                        d.nodes.insert(
                            node.to_owned(),
                            NodeEntry {
                                record,
                                updated,
                                lease,
                            },
                        );
                    }
                    Ok(record) => d.unreadable.push((
                        key.clone(),
                        format!("the record names node {:?}", record.node),
                    )),
                    Err(e) => d.unreadable.push((key.clone(), e.to_string())),
                },
                Some(Key::Pod { node, uuid }) => match PodEntry::parse(node, uuid, &value) {
                    Ok(entry) => d.pods.push(entry),
                    Err(e) => d.unreadable.push((key.clone(), e)),
                },
                // Not one of ours: somebody else's key under the prefix.
                None => {}
            }
        }
    }

    /// Orders the pods by node, then UUID.
    fn finish(&mut self) {
        self.pods
            .sort_by(|a, b| (&a.node, &a.uuid).cmp(&(&b.node, &b.uuid)));
    }

    /// Addresses held by pods on more than one node, each with the pods
    /// (node, UUID) that hold it.
    pub fn cross_node_conflicts(&self) -> BTreeMap<IpAddr, Vec<(String, String)>> {
        let mut holders: BTreeMap<IpAddr, Vec<(String, String)>> = BTreeMap::new();
        for p in &self.pods {
            for a in p.addresses() {
                holders
                    .entry(a)
                    .or_default()
                    .push((p.node.clone(), p.uuid.clone()));
            }
        }
        holders.retain(|_, pods| pods.iter().map(|(n, _)| n).collect::<BTreeSet<_>>().len() > 1);
        holders
    }

    /// Nodes whose record cannot be taken as current: attached to no
    /// lease (it would outlive its agent), or without a readable time.
    /// A record on a lease is current: its agent renews the lease from
    /// the loop that publishes, and lets it go when etcd has refused its
    /// writes for 3 TTLs, so the record vanishes rather than going stale.
    /// (`updated` says when the record was last written: at the start of
    /// the agent's session and on a change of its keys.)
    pub fn stale_nodes(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.lease == 0 || n.updated.is_none())
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The cluster's trust bundle: every node's keys, each once.
    /// Every node's X.509 authorities (DER), each once.
    pub fn x509_authorities(&self) -> Vec<Vec<u8>> {
        use base64::{engine::general_purpose::STANDARD, Engine};
        let mut seen = BTreeSet::new();
        let mut all = Vec::new();
        for n in self.nodes.values() {
            for a in &n.record.x509 {
                match STANDARD.decode(a) {
                    Ok(der) if seen.insert(der.clone()) => all.push(der),
                    _ => {}
                }
            }
        }
        all
    }

    pub fn trust_bundle(&self) -> JwkSet {
        let mut seen = BTreeSet::new();
        let mut bundle = JwkSet::default();
        for n in self.nodes.values() {
            for k in &n.record.jwks.keys {
                if seen.insert(k.kid.clone()) {
                    bundle.keys.push(k.clone());
                }
            }
        }
        bundle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::Jwk;
    use serde_json::json;

    #[test]
    fn pod_ranges_cover_every_pod_key_once_in_order() {
        let l = Layout::new("/p/");
        let nodes = ["a".to_string(), "a-b".to_string(), "z".to_string()];
        let ranges = pod_ranges(&l, nodes.iter());
        // Disjoint, in order, and together exactly `pods/`.
        assert_eq!(ranges.first().unwrap().0, b"/p/pods/".to_vec());
        assert_eq!(ranges.last().unwrap().1, range_end(b"/p/pods/"));
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "{ranges:?}");
        }
        assert!(ranges.iter().all(|(s, e)| s < e), "{ranges:?}");
        // Each node's keys lie in its own range; an orphan in a gap.
        let holder = |key: &str| {
            ranges
                .iter()
                .position(|(s, e)| s.as_slice() <= key.as_bytes() && key.as_bytes() < e.as_slice())
        };
        for n in &nodes {
            let i = holder(&l.pod(n, "u")).unwrap();
            assert_eq!(ranges[i].0, l.pods_of(n).into_bytes());
        }
        let orphan = holder(&l.pod("m", "u")).unwrap();
        assert!(!nodes
            .iter()
            .any(|n| ranges[orphan].0 == l.pods_of(n).into_bytes()));
    }

    fn jwk(seed: u8) -> Jwk {
        let mut point = vec![0x04];
        point.extend((0..64).map(|i| i as u8 ^ seed));
        Jwk::p256(&point).unwrap()
    }

    /// A key-value on lease 7.
    fn kv(key: &[u8], value: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            lease: 7,
        }
    }

    fn node(name: &str, keys: Vec<Jwk>, updated: &str) -> KeyValue {
        let l = Layout::new(DEFAULT);
        let record = NodeRecord {
            node: name.into(),
            jwks: JwkSet { keys },
            x509: Vec::new(),
            updated: updated.into(),
            owner: String::new(),
        };
        kv(
            l.node(name).as_bytes(),
            &serde_json::to_vec(&record).unwrap(),
        )
    }

    fn pod(node: &str, uuid: &str, addresses: &[&str]) -> KeyValue {
        let l = Layout::new(DEFAULT);
        let entry = json!({"uuid": uuid, "addresses": addresses, "state": "verified"});
        kv(
            l.pod(node, uuid).as_bytes(),
            &serde_json::to_vec(&entry).unwrap(),
        )
    }

    const DEFAULT: &str = super::super::DEFAULT_PREFIX;

    #[test]
    fn conflicts_are_across_nodes_only() {
        let kvs = vec![
            node("n1", vec![jwk(1)], "2026-01-01T00:00:00Z"),
            node("n2", vec![jwk(2), jwk(1)], "2026-01-01T00:00:00Z"),
            pod("n1", "a", &["198.18.0.2", "fe80::1", "127.0.0.1"]),
            pod("n1", "b", &["198.18.0.6"]),
            pod("n2", "c", &["198.18.0.2", "fe80::1"]),
            // The same address twice on one node is the node's own business.
            pod("n2", "d", &["198.18.0.10"]),
            pod("n2", "e", &["198.18.0.10"]),
            kv(b"/rkt-mds/pods/n3/x", b"not json"),
            kv(b"/rkt-mds/other", b"ignored"),
        ];
        let d = Directory::parse(&Layout::new(DEFAULT), kvs);
        assert_eq!(d.nodes.len(), 2);
        assert_eq!(d.pods.len(), 5);
        assert_eq!(d.unreadable.len(), 1);
        let c = d.cross_node_conflicts();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(
            c[&"198.18.0.2".parse::<IpAddr>().unwrap()],
            vec![("n1".into(), "a".into()), ("n2".into(), "c".into())]
        );
        let bundle = d.trust_bundle();
        assert_eq!(bundle.keys.len(), 2, "the shared key once");
    }

    #[test]
    fn stale_nodes() {
        let mut leaseless = node("leaseless", vec![], "2026-01-01T00:01:00Z");
        leaseless.lease = 0;
        let kvs = vec![
            node("fresh", vec![], "2026-01-01T00:01:00Z"),
            // Written long ago, and idle since: its lease says it lives.
            node("idle", vec![], "2025-01-01T00:00:00Z"),
            node("garbled", vec![], "yesterday"),
            leaseless,
        ];
        let d = Directory::parse(&Layout::new(DEFAULT), kvs);
        assert_eq!(d.stale_nodes(), vec!["garbled", "leaseless"]);
    }

    #[test]
    fn a_record_under_another_name_is_unreadable() {
        let value = node("n1", vec![], "2026-01-01T00:00:00Z").value;
        let d = Directory::parse(
            &Layout::new(DEFAULT),
            vec![kv(b"/rkt-mds/nodes/n2", &value)],
        );
        assert!(d.nodes.is_empty());
        assert_eq!(d.unreadable.len(), 1);
    }
}
