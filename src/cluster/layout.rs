//! Where things live in etcd (SPEC §8): `PREFIX nodes/NODE` holds a node's
//! record, `PREFIX pods/NODE/UUID` one pod's entry.

use serde::{Deserialize, Serialize};

use crate::jwt::JwkSet;

/// `--etcd-prefix` by default.
pub const DEFAULT_PREFIX: &str = "/rkt-mds/";

/// The key layout under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

/// What a key under the prefix names.
#[derive(Debug, PartialEq, Eq)]
pub enum Key<'a> {
    Node(&'a str),
    Pod { node: &'a str, uuid: &'a str },
}

impl Layout {
    /// The layout under `prefix`; a prefix not ending in `/` gets one, so
    /// that `/a` and `/ab` never share keys.
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `PREFIX nodes/NODE`
    pub fn node(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.prefix)
    }

    /// `PREFIX pods/NODE/`: every pod key of one node starts so.
    pub fn pods_of(&self, node: &str) -> String {
        format!("{}pods/{node}/", self.prefix)
    }

    /// `PREFIX pods/NODE/UUID`
    pub fn pod(&self, node: &str, uuid: &str) -> String {
        format!("{}pods/{node}/{uuid}", self.prefix)
    }

    /// What `key` names; `None` for a key of another shape.
    pub fn parse<'a>(&self, key: &'a str) -> Option<Key<'a>> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        if let Some(node) = rest.strip_prefix("nodes/") {
            return (!node.is_empty() && !node.contains('/')).then_some(Key::Node(node));
        }
        let (node, uuid) = rest.strip_prefix("pods/")?.split_once('/')?;
        (!node.is_empty() && !uuid.is_empty() && !uuid.contains('/'))
            .then_some(Key::Pod { node, uuid })
    }
}

/// The end of the key range of every key starting with `prefix` (etcd's
/// `range_end`): the prefix with its last byte below 0xff incremented.
pub fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the key space.
    vec![0]
}

/// `PREFIX nodes/NODE`: the node, the public keys that verify its identity
/// documents, and when the agent last wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    pub jwks: JwkSet,
    /// The node's X.509 authorities: CA certificates, base64 DER (absent
    /// from agents before X.509-SVIDs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub x509: Vec<String>,
    /// RFC 3339, UTC.
    pub updated: String,
    /// Hex SHA-256 of the node's secret (`memory.rs`): a restarted agent
    /// takes back only a record that names its own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_their_parse() {
        let l = Layout::new("/rkt-mds");
        assert_eq!(l.prefix(), "/rkt-mds/");
        assert_eq!(l.node("n1"), "/rkt-mds/nodes/n1");
        assert_eq!(l.pods_of("n1"), "/rkt-mds/pods/n1/");
        let pod = l.pod("n1", "de305d54-75b4-431b-adb2-eb6b9e546013");
        assert_eq!(pod, "/rkt-mds/pods/n1/de305d54-75b4-431b-adb2-eb6b9e546013");
        assert_eq!(
            l.parse(&pod),
            Some(Key::Pod {
                node: "n1",
                uuid: "de305d54-75b4-431b-adb2-eb6b9e546013"
            })
        );
        assert_eq!(l.parse("/rkt-mds/nodes/n1"), Some(Key::Node("n1")));
        assert_eq!(l.parse("/rkt-mds/nodes/"), None);
        assert_eq!(l.parse("/rkt-mds/pods/n1/"), None);
        assert_eq!(l.parse("/rkt-mds/pods/n1/a/b"), None);
        assert_eq!(l.parse("/rkt-mdsx/nodes/n1"), None);
        assert_eq!(l.parse("/other/nodes/n1"), None);
    }

    #[test]
    fn range_ends() {
        assert_eq!(range_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff"), vec![0]);
    }
}
