//! `rkt-mds`: the binary's edge. Parses the command line, sets up logging,
//! dispatches to one subcommand, and maps fatal errors to exit codes: 254
//! for the clients (rkt's convention); for `serve`, 2 for configuration
//! errors and 1 for failures that may pass.
#![forbid(unsafe_code)]

mod commands;

use clap::Parser;
use rkt_mds::{
    cli::{Cli, Command, LogFormat},
    listen::Activation,
};

fn main() {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    // Commands that only print what the binary knows of itself.
    match &cli.command {
        Command::Version => {
            println!("rkt-mds {}", rkt_mds::cli::LONG_VERSION);
            return;
        }
        Command::Completions(args) => {
            commands::completions::run(args.clone());
            return;
        }
        Command::Man(args) => match commands::man::run(args) {
            Ok(()) => return,
            Err(e) => fatal(e),
        },
        Command::Cluster(args) => match &args.action {
            rkt_mds::cli::ClusterAction::Roles(roles) => match commands::roles::run(roles) {
                Ok(()) => return,
                Err(e) => fatal(e),
            },
        },
        _ => {}
    }
    // Before any thread starts: reading systemd's LISTEN_* unsets them.
    let activation = match cli.command {
        Command::Serve(_) => Activation::take_from_env(),
        _ => Activation::none(),
    };
    // Held to the end: dropping it flushes the log.
    let log = init_logging(cli.debug, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => match commands::serve::run(args, activation).await {
                Ok(()) => Ok(0),
                Err(f) => {
                    tracing::error!("{}", commands::one_line(&f.error));
                    Ok(f.code)
                }
            },
            Command::Register(args) => commands::register::run(args).await.map(|()| 0),
            Command::Unregister(args) => commands::unregister::run(args).await.map(|()| 0),
            Command::Audit(args) => commands::audit::run(args).await,
            Command::Keys(args) => commands::keys::run(args).await.map(|()| 0),
            Command::Sign(args) => commands::sign::run(args).await.map(|()| 0),
            Command::Verify(args) => commands::verify::run(args).await,
            Command::Token(args) => commands::token::run(args).await.map(|()| 0),
            Command::VerifyToken(args) => commands::verify_token::run(args).await,
            Command::Jwks(args) => commands::jwks::run(args).await.map(|()| 0),
            Command::Bundle(args) => commands::bundle::run(args).await.map(|()| 0),
            Command::Version | Command::Man(_) | Command::Completions(_) | Command::Cluster(_) => {
                Ok(0)
            }
        }
    });
    drop(runtime);
    drop(log);
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => fatal(e),
    }
}

/// Exit status of a process killed by SIGPIPE, as the shell reports it.
const EXIT_BROKEN_PIPE: i32 = 128 + 13;

/// `rkt-mds audit | head`: a reader that went away ends the command
/// quietly, as it does for other command-line tools (Rust ignores SIGPIPE,
/// so a write fails with EPIPE and `println!` panics).
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("Broken pipe") {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        default(info);
    }));
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn fatal(e: anyhow::Error) -> ! {
    if is_broken_pipe(&e) {
        std::process::exit(EXIT_BROKEN_PIPE);
    }
    eprintln!("rkt-mds: {}", commands::one_line(&e));
    std::process::exit(254);
}

/// Logs go to stderr through a batching writer thread, so that no request
/// waits on a `write(2)` of its access-log line.
fn init_logging(debug: bool, format: LogFormat) -> rkt_mds::log_writer::FlushGuard {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (writer, guard) = rkt_mds::log_writer::batch_writer(std::io::stderr());
    // Access lines are written straight into the writer in the text
    // layout; in JSON they go through tracing like every other line.
    if format == LogFormat::Text {
        rkt_mds::access_log::install(writer.clone());
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.event_format(rkt_mds::log_format::LineFormat).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}
