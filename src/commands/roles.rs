//! `rkt-mds cluster roles`: least privilege in etcd, as commands an
//! operator pastes. A node's user may read the whole directory (readers'
//! view, the claim's check of its name) and write only `PREFIX nodes/NODE`
//! and `PREFIX pods/NODE/*`; etcd then refuses anything else it tries,
//! including revoking a lease that holds another node's keys. Readers get
//! a read-only role.

use anyhow::{bail, Result};

use rkt_mds::cli::RolesArgs;

/// The role and user of node `node`.
pub fn node_user(node: &str) -> String {
    format!("rkt-mds-node-{node}")
}

/// The readers' role.
pub const READER_ROLE: &str = "rkt-mds-reader";

pub fn run(args: &RolesArgs) -> Result<()> {
    print!("{}", commands(args)?);
    Ok(())
}

fn commands(args: &RolesArgs) -> Result<String> {
    let node = args.node.as_str();
    if node.is_empty()
        || !node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        bail!("--node {node:?}: a node name is letters, digits, '.', '-' or '_' (as --node-name)");
    }
    let layout = rkt_mds::cluster::Layout::new(&args.prefix);
    let prefix = layout.prefix();
    let user = node_user(node);
    let password = args
        .password_file
        .as_ref()
        .map_or_else(|| format!("{user}.password"), |p| p.display().to_string());
    let q = shell_quote;
    Ok(format!(
        "# rkt-mds: etcd roles for node {node} under {prefix}.
# Run as etcd's root user (ETCDCTL_ENDPOINTS, ETCDCTL_CACERT, ETCDCTL_CERT,
# ETCDCTL_KEY, ETCDCTL_USER set). The agent runs with --etcd-user {user}
# and --etcd-password-file; its --etcd-cert, if etcd asks for one, must have
# no common name (etcd's JSON gateway refuses one).
etcdctl role add {user}
etcdctl role grant-permission --prefix=true {user} read {}
etcdctl role grant-permission {user} readwrite {}
etcdctl role grant-permission --prefix=true {user} readwrite {}
etcdctl user add {user} --interactive=false < {}
etcdctl user grant-role {user} {user}
# Readers (audit --etcd, jwks --etcd, verify-token --etcd): read only. Once
# per cluster; give each reader a user with this role.
etcdctl role add {READER_ROLE}
etcdctl role grant-permission --prefix=true {READER_ROLE} read {}
",
        q(prefix),
        q(&layout.node(node)),
        q(&layout.pods_of(node)),
        q(&password),
        q(prefix),
    ))
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_writes_only_its_own_keys() {
        let text = commands(&RolesArgs {
            node: "n1".into(),
            prefix: "/rkt-mds/".into(),
            password_file: None,
        })
        .unwrap();
        assert!(text.contains("grant-permission --prefix=true rkt-mds-node-n1 read '/rkt-mds/'"));
        assert!(text.contains("grant-permission rkt-mds-node-n1 readwrite '/rkt-mds/nodes/n1'"));
        assert!(text.contains(
            "grant-permission --prefix=true rkt-mds-node-n1 readwrite '/rkt-mds/pods/n1/'"
        ));
        assert!(text
            .contains("user add rkt-mds-node-n1 --interactive=false < 'rkt-mds-node-n1.password'"));
        assert_eq!(text.matches("readwrite").count(), 2, "{text}");
        assert!(commands(&RolesArgs {
            node: "a b".into(),
            prefix: "/p/".into(),
            password_file: None
        })
        .is_err());
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
