//! `rkt-mds unregister`: removes a pod's registration and says what it
//! removed.

use anyhow::Result;
use hyper::Method;
use serde_json::Value;

use rkt_mds::cli::UnregisterArgs;

use super::agent::{call, enc, expect_ok};

pub async fn run(args: UnregisterArgs) -> Result<()> {
    // What is about to go, for the line that says so (best effort: the
    // DELETE decides).
    let entry = match call(&args.socket.socket, Method::GET, "/pods", None).await {
        Ok(reply) if reply.status == 200 => serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| {
                v["pods"]
                    .as_array()?
                    .iter()
                    .find(|p| p["uuid"].as_str() == Some(args.uuid.as_str()))
                    .cloned()
            }),
        _ => None,
    };
    let reply = call(
        &args.socket.socket,
        Method::DELETE,
        &format!("/pods/{}", enc(&args.uuid)),
        None,
    )
    .await?;
    expect_ok(&reply, "unregistering")?;
    println!("{}", removed_line(&args.uuid, entry.as_ref()));
    Ok(())
}

fn removed_line(uuid: &str, entry: Option<&Value>) -> String {
    let Some(e) = entry else {
        return format!("unregistered pod {uuid}");
    };
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "unregistered pod {uuid}: state {}, netns {}, addresses {}, apps {}",
        e["state"].as_str().unwrap_or("-"),
        e["netns"]["path"].as_str().unwrap_or("-"),
        list(&e["addresses"]),
        list(&e["apps"]),
    )
}
