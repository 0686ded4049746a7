//! `rkt-mds token`: inside a pod, print an identity document for an
//! audience.

use anyhow::Result;

use rkt_mds::cli::TokenArgs;

use super::agent::{enc, expect_ok, get_metadata};

pub async fn run(args: TokenArgs) -> Result<()> {
    let endpoint = match &args.app {
        Some(app) => format!(
            "apps/{}/identity/jwt?audience={}",
            enc(app),
            enc(&args.audience)
        ),
        None => format!("pod/identity/jwt?audience={}", enc(&args.audience)),
    };
    let reply = get_metadata(&endpoint).await?;
    expect_ok(&reply, "asking for an identity document")?;
    println!("{}", reply.text());
    Ok(())
}
