//! `rkt-mds`: the binary's edge. Parses the command line, sets up logging,
//! dispatches to one subcommand, and maps fatal errors to exit code 254
//! (rkt's convention).
#![forbid(unsafe_code)]

mod commands;

use clap::Parser;
use rkt_mds::{
    cli::{Cli, Command},
    listen::Activation,
};

fn main() {
    let cli = Cli::parse();
    // Before any thread starts: reading systemd's LISTEN_* unsets them.
    let activation = match cli.command {
        Command::Serve(_) => Activation::take_from_env(),
        _ => Activation::none(),
    };
    // Held to the end: dropping it flushes the log.
    let log = init_logging(cli.debug);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => commands::serve::run(args, activation).await.map(|()| 0),
            Command::Register(args) => commands::register::run(args).await.map(|()| 0),
            Command::Unregister(args) => commands::unregister::run(args).await.map(|()| 0),
            Command::Audit(args) => commands::audit::run(args).await,
            Command::Keys(args) => commands::keys::run(args).await.map(|()| 0),
            Command::Sign(args) => commands::sign::run(args).await.map(|()| 0),
            Command::Verify(args) => commands::verify::run(args).await,
            Command::Token(args) => commands::token::run(args).await.map(|()| 0),
            Command::VerifyToken(args) => commands::verify_token::run(args).await,
            Command::Jwks(args) => commands::jwks::run(args).await.map(|()| 0),
        }
    });
    drop(runtime);
    drop(log);
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => fatal(e),
    }
}

fn fatal(e: anyhow::Error) -> ! {
    eprintln!("rkt-mds: {e:#}");
    std::process::exit(254);
}

/// Logs go to stderr through a batching writer thread, so that no request
/// waits on a `write(2)` of its access-log line.
fn init_logging(debug: bool) -> rkt_mds::log_writer::FlushGuard {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (writer, guard) = rkt_mds::log_writer::batch_writer(std::io::stderr());
    rkt_mds::access_log::install(writer.clone());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(rkt_mds::log_format::LineFormat)
        .with_writer(writer)
        .init();
    guard
}
