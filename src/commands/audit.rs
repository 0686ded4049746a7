//! `rkt-mds audit`: which pod holds which address, and every identity in
//! doubt; of one agent, or of the whole cluster (`--etcd`).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use hyper::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use rkt_mds::{
    cli::{AuditArgs, Endpoints},
    cluster::{rfc3339, Directory},
    pods,
};

use super::agent::{call, expect_ok, info};

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
        println!(
            "{:<36}  {:<13}  {:<28}  {:<24}  APPS",
            "POD", "STATE", "NETNS", "ADDRESS"
        );
        for p in &listing.pods {
            let ns = p.netns.as_ref().map_or("-", |n| n.path.as_str());
            let apps = p.apps.join(",");
            let addrs: Vec<String> = if p.addresses.is_empty() {
                vec!["-".into()]
            } else {
                p.addresses
                    .iter()
                    .map(|a| {
                        if p.conflicts.contains(a) {
                            format!("{a} (CONFLICT)")
                        } else {
                            a.clone()
                        }
                    })
                    .collect()
            };
            for a in addrs {
                println!(
                    "{:<36}  {:<13}  {:<28}  {:<24}  {apps}",
                    p.uuid, p.state, ns, a
                );
            }
        }
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
    let d = super::cluster::read(etcd, &args.etcd_prefix).await?;
    let now = pods::unix_now();
    let stale_after = args.etcd_lease_ttl * 3;
    let stale = d.stale_nodes(now, stale_after);
    let pods = cluster_rows(&d);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&cluster_json(&d, &pods, &stale))?
        );
    } else {
        print_cluster(&d, &pods, &stale);
    }
    if !args.check {
        return Ok(0);
    }
    let doubtful = pods
        .iter()
        .filter(|p| match p["state"].as_str().unwrap_or("") {
            "conflict" | "netns-gone" => true,
            "netns-unknown" => args.grace.is_some_and(|g| {
                now.saturating_sub(p["registered_at"].as_u64().unwrap_or(0)) >= g.as_secs()
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
            "{} stale node(s) (record older than {}s): {}",
            stale.len(),
            stale_after.as_secs(),
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

/// Each pod's entry with its `node`; an address also held on another node
/// joins its `conflicts`, and a verified pod holding one is `conflict`.
fn cluster_rows(d: &Directory) -> Vec<Value> {
    let conflicts = d.cross_node_conflicts();
    d.pods
        .iter()
        .map(|p| {
            let mut entry = p.entry.clone();
            let held_elsewhere: Vec<String> = p
                .addresses()
                .into_iter()
                .filter(|a| conflicts.contains_key(a))
                .map(|a| a.to_string())
                .collect();
            if !held_elsewhere.is_empty() {
                if entry["state"] == "verified" {
                    entry["state"] = json!("conflict");
                }
                let mut listed: Vec<Value> =
                    entry["conflicts"].as_array().cloned().unwrap_or_default();
                for a in held_elsewhere {
                    if !listed.iter().any(|v| v.as_str() == Some(a.as_str())) {
                        listed.push(json!(a));
                    }
                }
                entry["conflicts"] = Value::Array(listed);
            }
            entry["node"] = json!(p.node);
            entry
        })
        .collect()
}

fn cluster_json(d: &Directory, pods: &[Value], stale: &[&str]) -> Value {
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &d.pods {
        *per_node.entry(p.node.as_str()).or_default() += 1;
    }
    json!({
        "nodes": d.nodes.iter().map(|(name, n)| json!({
            "node": name,
            "updated": n.record.updated,
            "stale": stale.contains(&name.as_str()),
            "pods": per_node.get(name.as_str()).copied().unwrap_or(0),
            "keys": n.record.jwks.keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "pods": pods,
        "conflicts": d.cross_node_conflicts().into_iter().map(|(address, holders)| json!({
            "address": address.to_string(),
            "pods": holders.into_iter().map(|(node, uuid)| json!({"node": node, "uuid": uuid})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "unreadable": d.unreadable.iter().map(|(key, error)| json!({"key": key, "error": error})).collect::<Vec<_>>(),
    })
}

fn print_cluster(d: &Directory, pods: &[Value], stale: &[&str]) {
    let width = d
        .nodes
        .keys()
        .map(String::len)
        .chain(d.pods.iter().map(|p| p.node.len()))
        .max()
        .unwrap_or(0)
        .max(4);
    println!(
        "{:<width$}  {:<20}  {:<5}  STATUS",
        "NODE", "UPDATED", "KEYS"
    );
    for (name, n) in &d.nodes {
        let status = if stale.contains(&name.as_str()) {
            "STALE"
        } else {
            "ok"
        };
        let updated = n
            .updated
            .map_or_else(|| n.record.updated.clone(), rfc3339::format);
        println!(
            "{name:<width$}  {updated:<20}  {:<5}  {status}",
            n.record.jwks.keys.len()
        );
    }
    println!();
    println!(
        "{:<width$}  {:<36}  {:<13}  {:<28}  {:<24}  APPS",
        "NODE", "POD", "STATE", "NETNS", "ADDRESS"
    );
    for p in pods {
        let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        let node = text(&p["node"]);
        let uuid = text(&p["uuid"]);
        let state = text(&p["state"]);
        let ns = p["netns"]["path"].as_str().unwrap_or("-");
        let apps = p["apps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let conflicts = p["conflicts"].as_array().cloned().unwrap_or_default();
        let mut addrs: Vec<String> = p["addresses"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|a| {
                        if conflicts.iter().any(|c| c.as_str() == Some(a)) {
                            format!("{a} (CONFLICT)")
                        } else {
                            a.to_owned()
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        if addrs.is_empty() {
            addrs.push("-".into());
        }
        for a in addrs {
            println!("{node:<width$}  {uuid:<36}  {state:<13}  {ns:<28}  {a:<24}  {apps}");
        }
    }
}
