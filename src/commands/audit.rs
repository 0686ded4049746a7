//! `rkt-mds audit`: which pod holds which address, and every identity in
//! doubt.

use anyhow::{Context, Result};
use hyper::Method;
use serde::Deserialize;

use rkt_mds::{cli::AuditArgs, pods};

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
