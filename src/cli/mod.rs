//! The `imprint` command line: flags in, lines or JSON out. The work itself
//! is the library's; each subcommand here turns flags into a request and
//! the library's report into output for a person or a script.

/// `println!` that ends quietly when the reader has gone (`imprint verify
/// IMG | head -1`): the work goes on and the exit code stays the work's;
/// any other write error is returned.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))?
    };
}

pub(crate) mod args;
pub(crate) mod cat;
#[cfg(feature = "demo")]
mod demo;
mod devices;
mod dry_run;
pub(crate) mod ls;
pub(crate) mod manifest;
pub(crate) mod manpages;
pub(crate) mod panic;
pub(crate) mod provision;
mod quote;
mod report;
mod stdin;
mod token;
pub(crate) mod verify;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{CommandFactory, Parser};
use serde::Serialize;

use crate::io::progress;
use args::{Cli, Command};

/// Milliseconds a step runs before its progress bar appears; tests set it
/// to 0 to see bars on small inputs.
const PROGRESS_DELAY_VAR: &str = "IMPRINT_PROGRESS_DELAY_MS";

/// The `imprint` command: parse the flags, set up logging and the panic
/// report, and hand the subcommand to its module.
pub fn main() -> ExitCode {
    crate::io::heap::return_large_buffers();
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
    if let Err(e) = crate::redact::protect_process() {
        eprintln!("imprint: warning: cannot keep secrets out of core dumps: {e}");
    }
    if let Some(path) = std::env::var_os("IMPRINT_LIBEXT2FS") {
        crate::image::ext4::use_library(path.into());
    }
    panic::install_report();
    if let Err(e) = crate::io::output::install_signal_cleanup() {
        eprintln!("imprint: warning: cannot install signal handlers: {e}");
    }
    // verify, ls and cat expand compressed images into the temp directory;
    // a run killed by SIGKILL left its expansion (which may hold a
    // password) there. Ours by name, owner and a dead pid only.
    let tmp = std::env::temp_dir();
    match crate::io::output::remove_stale_temps(&tmp) {
        Ok(removed) => {
            for path in removed {
                tracing::info!("removed {} left by an interrupted run", path.display());
            }
        }
        Err(e) => tracing::debug!("cannot clear {} of stale scratch files: {e}", tmp.display()),
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
            eprintln!("imprint: error: {}", error_line(&e));
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Provision(args) => provision::run(*args),
        Command::Verify(args) => verify::run(args),
        Command::Manifest { command } => manifest::run(command),
        Command::Ls(args) => ls::run(args),
        Command::Cat(args) => cat::run(args),
        Command::Completions { shell } => {
            let mut cli = Cli::command();
            clap_complete::generate(shell, &mut cli, "imprint", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => manpages::run(dir.as_deref()),
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            demo::run(&args.dir)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Turns progress bars on when `wanted` (neither --quiet nor --json) and
/// stderr is a terminal.
fn show_progress(wanted: bool) {
    let delay = std::env::var(PROGRESS_DELAY_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(progress::DELAY);
    progress::enable(wanted && std::io::stderr().is_terminal(), delay);
}

/// Prints one `--json` document on stdout (nothing more once the reader
/// has gone).
fn print_json(document: &impl Serialize) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(document)?);
    Ok(())
}

/// One line on stdout; a closed pipe is not an error (see `outln!`).
pub(crate) fn write_line(args: std::fmt::Arguments) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// The error and its causes on one line (each error says its own part
/// once and leaves its cause to the next link).
pub(crate) fn error_line(e: &anyhow::Error) -> String {
    let causes: Vec<String> = e.chain().map(|cause| cause.to_string()).collect();
    causes.join(": ")
}
