//! `imprint man`: the manual pages, generated from the command line itself
//! (clap_mangen), so they never disagree with `--help`. packaging/deb.sh
//! puts them in the Debian package.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::args::Cli;

/// Without `dir`, the page of `imprint` on stdout; with it, `imprint.1`
/// and one `imprint-SUBCOMMAND.1` per subcommand (`man imprint-provision`)
/// written into `dir`.
pub(crate) fn run(dir: Option<&Path>) -> Result<ExitCode> {
    let cli = Cli::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cli).render(&mut std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, cmd: clap::Command| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))
    };
    write("imprint", cli.clone())?;
    for sub in cli.get_subcommands() {
        // clap takes names as &'static str (its `string` feature is off);
        // a few short strings, once, in a process that exits next.
        let name: &'static str = Box::leak(format!("imprint-{}", sub.get_name()).into_boxed_str());
        write(
            name,
            sub.clone().name(name).version(env!("CARGO_PKG_VERSION")),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
