//! The `imprint` command: parse the flags, set up logging and the panic
//! report, and hand the subcommand to its module in `cli/`.

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser};

mod cli;
#[cfg(feature = "demo")]
mod demo;

use cli::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .init();
    // Before any secret is read: no core dump or ptrace can copy it out.
    if let Err(e) = imprint::redact::protect_process() {
        eprintln!("imprint: warning: cannot keep secrets out of core dumps: {e}");
    }
    if let Some(path) = std::env::var_os("IMPRINT_LIBEXT2FS") {
        imprint::image::ext4::use_library(path.into());
    }
    cli::panic::install_report();
    if let Err(e) = imprint::io::output::install_signal_cleanup() {
        eprintln!("imprint: warning: cannot install signal handlers: {e}");
    }
    match run(cli.command) {
        Ok(code) => code,
        // A closed pipe (`imprint man | head`) is the reader's choice.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imprint: error: {}", cli::error_line(&e));
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Provision(args) => cli::provision::run(args),
        Command::Verify(args) => cli::verify::run(args),
        Command::Manifest { command } => cli::manifest::run(command),
        Command::Ls(args) => cli::ls::run(args),
        Command::Cat(args) => cli::cat::run(args),
        Command::Completions { shell } => {
            let mut cli = Cli::command();
            clap_complete::generate(shell, &mut cli, "imprint", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => cli::manpages::run(dir.as_deref()),
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            demo::run(&args.dir)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
