//! `rkt-mds sign`: inside a pod, sign a file as this pod.

use anyhow::{Context, Result};

use rkt_mds::cli::SignArgs;

use super::agent::{expect_ok, post_form};

pub async fn run(args: SignArgs) -> Result<()> {
    let content = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let reply = post_form("pod/hmac/sign", &[("content", &content)]).await?;
    expect_ok(&reply, "signing")?;
    match args.output {
        Some(out) => std::fs::write(&out, &reply.body)
            .with_context(|| format!("cannot write {}", out.display()))?,
        None => println!("{}", reply.text()),
    }
    Ok(())
}
