//! `rkt-mds`: the binary's edge. Parses the command line, sets up logging,
//! and maps fatal errors to exit code 254 (rkt's convention).
#![forbid(unsafe_code)]

mod commands;

use clap::Parser;
use rkt_mds::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    init_logging(cli.debug);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => commands::serve(args).await.map(|()| 0),
            Command::Register(args) => commands::register(args).await.map(|()| 0),
            Command::Unregister(args) => commands::unregister(args).await.map(|()| 0),
            Command::Audit(args) => commands::audit(args).await,
            Command::Keys(args) => commands::keys(args).await.map(|()| 0),
            Command::Sign(args) => commands::sign(args).await.map(|()| 0),
            Command::Verify(args) => commands::verify(args).await,
        }
    });
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => fatal(e),
    }
}

fn fatal(e: anyhow::Error) -> ! {
    eprintln!("rkt-mds: {e:#}");
    std::process::exit(254);
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
