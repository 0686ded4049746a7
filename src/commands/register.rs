//! `rkt-mds register`: registers a pod and its apps the way rkt does.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::Path,
};

use anyhow::{bail, Context, Result};
use hyper::Method;
use ring::rand::{SecureRandom, SystemRandom};

use rkt_mds::cli::RegisterArgs;

use super::agent::{call, enc, expect_ok, info, read_json_file};

pub async fn run(args: RegisterArgs) -> Result<()> {
    let socket = &args.socket.socket;
    let manifest = read_json_file(&args.manifest)?;
    let mut apps = Vec::new();
    for spec in &args.apps {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--app {spec:?}: expected NAME=IMAGE_MANIFEST"))?;
        apps.push((name.to_owned(), read_json_file(Path::new(file))?));
    }
    let token = match &args.token {
        Some(t) => t.clone(),
        None => random_token()?,
    };
    let mut path = format!("/pods/{}?token={}", enc(&args.uuid), enc(&token));
    if let Some(ns) = &args.netns {
        path += &format!("&netns={}", enc(ns.display().to_string()));
    }
    if let Some(pid) = args.pid {
        path += &format!("&pid={pid}");
    }
    let json = "application/json";
    let reply = call(socket, Method::PUT, &path, Some((manifest, json))).await?;
    if reply.status == 409
        && reply
            .text()
            .contains("already registered with another token")
    {
        anyhow::bail!(
            "registering the pod: the agent answered 409: {}; to register it again give its token (--token TOKEN), or remove it first (rkt-mds unregister {})",
            reply.text().trim(),
            args.uuid
        );
    }
    expect_ok(&reply, "registering the pod")?;
    for (name, image) in apps {
        let reply = call(
            socket,
            Method::PUT,
            &format!("/pods/{}/{}", enc(&args.uuid), enc(&name)),
            Some((image, json)),
        )
        .await?;
        if let Err(e) = expect_ok(&reply, &format!("registering app {name}")) {
            // rkt's rule: a half-registered pod is unregistered.
            let _ = call(
                socket,
                Method::DELETE,
                &format!("/pods/{}", enc(&args.uuid)),
                None,
            )
            .await;
            return Err(e);
        }
    }
    let info = info(socket).await?;
    let port = info.public_port;
    let host = match args.host {
        Some(host) => host,
        None if args.netns.is_none() && args.pid.is_none() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        None => match host_side_address(socket, &args.uuid).await {
            Ok(host) => host,
            Err(e) => {
                // Registered, but the URL would not work from inside the pod.
                bail!(
                    "pod {} is registered, but {e:#}: give the host's address the pod reaches it at with --host ADDR",
                    args.uuid
                )
            }
        },
    };
    let host = match host {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    println!("AC_METADATA_URL=http://{host}:{port}/{token}");
    // The Workload API attests callers by address: not in token mode.
    if let Some(workload) = info
        .workload_api_port
        .filter(|_| info.identity_mode != "token")
    {
        println!("SPIFFE_ENDPOINT_SOCKET=tcp://{host}:{workload}");
    }
    Ok(())
}

/// The host's address on its route to the pod, as a runtime would give
/// it: for each of the pod's addresses (IPv4 first), the source address the
/// kernel picks to reach it (a UDP `connect` routes without sending).
async fn host_side_address(socket: &Path, uuid: &str) -> Result<IpAddr> {
    let addresses = pod_addresses(socket, uuid).await?;
    if addresses.is_empty() {
        bail!("the agent sees no address in the pod's network namespace");
    }
    let mut ordered = addresses.clone();
    ordered.sort_by_key(|a| a.is_ipv6());
    for pod in ordered {
        if pod.is_loopback() || netns::is_link_local(&pod) {
            continue;
        }
        let local = match pod {
            IpAddr::V4(_) => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)),
            IpAddr::V6(_) => UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        }
        .and_then(|s| {
            s.connect(SocketAddr::new(pod, 9))
                .and_then(|()| s.local_addr())
        });
        if let Ok(local) = local {
            let ip = local.ip();
            // A route through the loopback means the address is the
            // host's own, not the pod's.
            if !ip.is_loopback() && !ip.is_unspecified() && ip != pod {
                return Ok(ip);
            }
        }
    }
    let listed: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    bail!(
        "the host has no route to the pod's addresses ({})",
        listed.join(", ")
    )
}

/// The pod's addresses as the agent sees them in its namespace (polled
/// briefly: the first dump of a new namespace may still be under way).
async fn pod_addresses(socket: &Path, uuid: &str) -> Result<Vec<IpAddr>> {
    for _ in 0..20 {
        let reply = call(socket, Method::GET, "/pods", None).await?;
        expect_ok(&reply, "listing pods")?;
        let listing: serde_json::Value =
            serde_json::from_slice(&reply.body).context("the agent's listing is not valid")?;
        let addresses: Vec<IpAddr> = listing["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["uuid"].as_str() == Some(uuid))
            .flat_map(|p| p["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().and_then(|a| a.parse().ok()))
            .collect();
        if !addresses.is_empty() {
            return Ok(addresses);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(Vec::new())
}

fn random_token() -> Result<String> {
    let mut raw = [0u8; 16];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    Ok(hex::encode(raw))
}
