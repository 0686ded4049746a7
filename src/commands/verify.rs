//! `rkt-mds verify`: inside a pod, verify another pod's signature.

use anyhow::{bail, Context, Result};

use rkt_mds::cli::VerifyArgs;

use super::agent::post_form;

/// Exit 0 valid, 1 invalid, 2 on any error.
pub async fn run(args: VerifyArgs) -> Result<i32> {
    match try_verify(&args).await {
        Ok(None) => {
            println!("valid");
            Ok(0)
        }
        Ok(Some(reason)) => {
            println!("invalid: {reason}");
            Ok(1)
        }
        Err(e) => {
            eprintln!("rkt-mds verify: {e:#}");
            Ok(2)
        }
    }
}

/// `None` when valid, else why not.
async fn try_verify(args: &VerifyArgs) -> Result<Option<String>> {
    let content = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let signature = match args.signature.strip_prefix('@') {
        Some(file) => {
            std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
        }
        None => args.signature.clone(),
    };
    let fields: [(&str, &[u8]); 3] = [
        ("content", &content),
        ("uuid", args.uuid.as_bytes()),
        ("signature", signature.trim().as_bytes()),
    ];
    let reply = post_form("pod/hmac/verify", &fields).await?;
    match reply.status {
        200 => Ok(None),
        403 => Ok(Some(match reply.text().trim() {
            "" => "the signature does not match this content and pod".to_owned(),
            text => text.to_owned(),
        })),
        s => bail!("the agent answered {s}: {}", reply.text()),
    }
}
