//! `rkt-mds audit`: which pod holds which address, and every identity in
//! doubt; of one agent, or of the whole cluster (`--etcd`).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use hyper::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use rkt_mds::{
    cli::{AuditArgs, Endpoints},
    cluster::{directory::PodEntry, rfc3339, Directory},
    pods,
};

use super::{
    agent::{call, expect_ok, info},
    table,
};

#[derive(Deserialize)]
struct Listing {
    pods: Vec<PodRow>,
}

#[derive(Deserialize)]
struct PodRow {
    uuid: String,
    apps: Vec<String>,
    netns: Option<NetnsRow>,
    addresses: Vec<String>,
    state: String,
    conflicts: Vec<String>,
    registered_at: u64,
}

#[derive(Deserialize)]
struct NetnsRow {
    path: String,
}

/// Exit code: 0, or 1 with `--check` when something is in doubt.
pub async fn run(args: AuditArgs) -> Result<i32> {
    if let Some(etcd) = &args.etcd {
        return run_cluster(&args, etcd).await;
    }
    let reply = call(&args.socket.socket, Method::GET, "/pods", None).await?;
    expect_ok(&reply, "listing pods")?;
    let listing: Listing =
        serde_json::from_slice(&reply.body).context("the agent's listing is not valid")?;
    if args.json {
        println!("{}", reply.text());
    } else {
        let mut rows = Vec::new();
        for p in &listing.pods {
            let ns = p.netns.as_ref().map_or("-", |n| n.path.as_str());
            for a in marked(&p.addresses, |a| p.conflicts.iter().any(|c| c == a)) {
                rows.push(vec![
                    p.uuid.clone(),
                    p.state.clone(),
                    ns.to_owned(),
                    a,
                    p.apps.join(","),
                ]);
            }
        }
        table::print(&["POD", "STATE", "NETNS", "ADDRESS", "APPS"], &rows);
    }
    if !args.check {
        return Ok(0);
    }
    let grace = match args.grace {
        Some(g) => g.as_secs(),
        None => info(&args.socket.socket).await?.gc_grace_secs,
    };
    let now = pods::unix_now();
    let doubtful = listing.pods.iter().filter(|p| match p.state.as_str() {
        "conflict" | "netns-gone" => true,
        "unenforced" => !args.allow_unenforced_bridge,
        "netns-unknown" => now.saturating_sub(p.registered_at) >= grace,
        _ => false,
    });
    let n = doubtful.count();
    if n > 0 {
        eprintln!("rkt-mds audit: {n} pod(s) with an identity in doubt");
        return Ok(1);
    }
    Ok(0)
}

/// `audit --etcd`: every node's pods from the cluster directory.
async fn run_cluster(args: &AuditArgs, etcd: &Endpoints) -> Result<i32> {
    let d = super::cluster::read(
        etcd,
        &args.etcd_access,
        &args.etcd_prefix,
        rkt_mds::cluster::directory::Scope::Everything,
    )
    .await?;
    let now = pods::unix_now();
    let stale = d.stale_nodes();
    let conflicts = d.cross_node_conflicts();
    if args.json {
        print_cluster_json(&d, &conflicts, &stale)?;
    } else {
        print_cluster(&d, &conflicts, &stale);
    }
    if !args.check {
        return Ok(0);
    }
    let doubtful = d
        .pods
        .iter()
        .filter(|p| match cluster_state(p, &conflicts) {
            "conflict" | "netns-gone" => true,
            "unenforced" => !args.allow_unenforced_bridge,
            "netns-unknown" => args.grace.is_some_and(|g| {
                let at = p.entry()["registered_at"].as_u64().unwrap_or(0);
                now.saturating_sub(at) >= g.as_secs()
            }),
            _ => false,
        })
        .count();
    let mut problems = Vec::new();
    if doubtful > 0 {
        problems.push(format!("{doubtful} pod(s) with an identity in doubt"));
    }
    if !stale.is_empty() {
        problems.push(format!(
            "{} stale node(s) (record on no lease, or without a readable time): {}",
            stale.len(),
            stale.join(", ")
        ));
    }
    if !d.unreadable.is_empty() {
        problems.push(format!("{} unreadable entr(ies)", d.unreadable.len()));
    }
    if problems.is_empty() {
        return Ok(0);
    }
    eprintln!("rkt-mds audit: {}", problems.join("; "));
    Ok(1)
}

/// Addresses held on more than one node, with their holders.
type Conflicts = BTreeMap<std::net::IpAddr, Vec<(String, String)>>;

/// A pod's state in the cluster: a verified pod holding an address that
/// a pod on another node holds too is in `conflict`.
fn cluster_state<'a>(p: &'a PodEntry, conflicts: &Conflicts) -> &'a str {
    if p.state() == "verified" && p.addresses().iter().any(|a| conflicts.contains_key(a)) {
        "conflict"
    } else {
        p.state()
    }
}

/// A pod's entry with its `node`; an address also held on another node
/// joins its `conflicts`, and its state is [`cluster_state`]. Made one pod
/// at a time (a reader of 100,000 pods never holds them all as trees).
fn cluster_row(p: &PodEntry, conflicts: &Conflicts) -> Value {
    let mut entry = p.entry();
    let held_elsewhere: Vec<String> = p
        .addresses()
        .into_iter()
        .filter(|a| conflicts.contains_key(a))
        .map(|a| a.to_string())
        .collect();
    if !held_elsewhere.is_empty() {
        entry["state"] = json!(cluster_state(p, conflicts));
        let mut listed: Vec<Value> = entry["conflicts"].as_array().cloned().unwrap_or_default();
        for a in held_elsewhere {
            if !listed.iter().any(|v| v.as_str() == Some(a.as_str())) {
                listed.push(json!(a));
            }
        }
        entry["conflicts"] = Value::Array(listed);
    }
    entry["node"] = json!(p.node);
    entry
}

/// `audit --etcd --json`: one object; its `pods` are written one by one.
fn print_cluster_json(d: &Directory, conflicts: &Conflicts, stale: &[&str]) -> Result<()> {
    use std::io::Write;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &d.pods {
        *per_node.entry(p.node.as_str()).or_default() += 1;
    }
    let head = json!({
        "nodes": d.nodes.iter().map(|(name, n)| json!({
            "node": name,
            "updated": n.record.updated,
            "stale": stale.contains(&name.as_str()),
            "pods": per_node.get(name.as_str()).copied().unwrap_or(0),
            "keys": n.record.jwks.keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "conflicts": conflicts.iter().map(|(address, holders)| json!({
            "address": address.to_string(),
            "pods": holders.iter().map(|(node, uuid)| json!({"node": node, "uuid": uuid})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "unreadable": d.unreadable.iter().map(|(key, error)| json!({"key": key, "error": error})).collect::<Vec<_>>(),
    });
    let head = serde_json::to_string_pretty(&head)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // The head without its closing brace, then "pods".
    let open = head.trim_end().trim_end_matches('}').trim_end();
    write!(out, "{open},\n  \"pods\": [")?;
    for (i, p) in d.pods.iter().enumerate() {
        let sep = if i == 0 { "\n    " } else { ",\n    " };
        write!(
            out,
            "{sep}{}",
            serde_json::to_string(&cluster_row(p, conflicts))?
        )?;
    }
    writeln!(out, "\n  ]\n}}")?;
    out.flush()?;
    Ok(())
}

fn print_cluster(d: &Directory, conflicts: &Conflicts, stale: &[&str]) {
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &d.pods {
        *per_node.entry(p.node.as_str()).or_default() += 1;
    }
    let nodes: Vec<Vec<String>> = d
        .nodes
        .iter()
        .map(|(name, n)| {
            let status = if stale.contains(&name.as_str()) {
                "STALE"
            } else {
                "ok"
            };
            let updated = n
                .updated
                .map_or_else(|| n.record.updated.clone(), rfc3339::format);
            vec![
                name.clone(),
                updated,
                per_node
                    .get(name.as_str())
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
                n.record.jwks.keys.len().to_string(),
                status.to_owned(),
            ]
        })
        .collect();
    table::print(&["NODE", "UPDATED", "PODS", "KEYS", "STATUS"], &nodes);
    println!();
    let mut rows = Vec::new();
    for p in d.pods.iter().map(|p| cluster_row(p, conflicts)) {
        let p = &p;
        let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let conflicts = strings(&p["conflicts"]);
        let apps = strings(&p["apps"]).join(",");
        for a in marked(&strings(&p["addresses"]), |a| {
            conflicts.iter().any(|c| c == a)
        }) {
            rows.push(vec![
                text(&p["node"]),
                text(&p["uuid"]),
                text(&p["state"]),
                p["netns"]["path"].as_str().unwrap_or("-").to_owned(),
                a,
                apps.clone(),
            ]);
        }
    }
    table::print(&["NODE", "POD", "STATE", "NETNS", "ADDRESS", "APPS"], &rows);
}

/// A pod's addresses for the table, each marked when `in_conflict`; `-`
/// for none.
fn marked(addresses: &[String], in_conflict: impl Fn(&str) -> bool) -> Vec<String> {
    if addresses.is_empty() {
        return vec!["-".into()];
    }
    addresses
        .iter()
        .map(|a| {
            if in_conflict(a) {
                format!("{a} (CONFLICT)")
            } else {
                a.clone()
            }
        })
        .collect()
}
