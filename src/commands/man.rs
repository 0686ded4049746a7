//! `rkt-mds man`: man pages from the clap definitions (clap_mangen), so
//! the pages never disagree with `--help`.

use std::{io::Write, path::Path};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use rkt_mds::cli::{Cli, ManArgs};

pub fn run(args: &ManArgs) -> Result<()> {
    let mut root = Cli::command();
    root.build();
    if let Some(dir) = &args.out_dir {
        return write_all(&root, dir);
    }
    let page = match &args.subcommand {
        None => root,
        Some(name) => match root.find_subcommand(name) {
            Some(sub) => page_of(sub),
            None => bail!(
                "no subcommand {name:?}; one of: {}",
                root.get_subcommands()
                    .map(|s| s.get_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .and_then(|()| out.flush())
        .context("cannot write the man page")
}

/// A subcommand's page is `rkt-mds-NAME(1)`.
fn page_of(sub: &clap::Command) -> clap::Command {
    let name = format!("rkt-mds-{}", sub.get_name());
    sub.clone().name(name.clone()).bin_name(name)
}

fn write_all(root: &clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut pages = vec![root.clone()];
    pages.extend(root.get_subcommands().map(page_of));
    for page in pages {
        let path = dir.join(format!("{}.1", page.get_name()));
        let mut bytes = Vec::new();
        clap_mangen::Man::new(page).render(&mut bytes)?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
