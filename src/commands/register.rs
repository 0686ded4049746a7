//! `rkt-mds register`: registers a pod and its apps the way rkt does.

use std::path::Path;

use anyhow::{Context, Result};
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
    let port = info(socket).await?.public_port;
    let host = match args.host {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    println!("AC_METADATA_URL=http://{host}:{port}/{token}");
    Ok(())
}

fn random_token() -> Result<String> {
    let mut raw = [0u8; 16];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    Ok(hex::encode(raw))
}
