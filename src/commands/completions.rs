//! `rkt-mds completions SHELL`: a completion script from the clap
//! definitions (clap_complete).

use clap::CommandFactory;
use rkt_mds::cli::{Cli, CompletionsArgs};

pub fn run(args: CompletionsArgs) {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "rkt-mds", &mut std::io::stdout());
}
