//! `rkt-mds unregister`.

use anyhow::Result;
use hyper::Method;

use rkt_mds::cli::UnregisterArgs;

use super::agent::{call, enc, expect_ok};

pub async fn run(args: UnregisterArgs) -> Result<()> {
    let reply = call(
        &args.socket.socket,
        Method::DELETE,
        &format!("/pods/{}", enc(&args.uuid)),
        None,
    )
    .await?;
    expect_ok(&reply, "unregistering")
}
