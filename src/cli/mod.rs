//! The `imprint` command line: flags in, lines or JSON out. The work itself
//! is the library's; each subcommand here turns flags into a request and
//! the library's report into output for a person or a script.

pub(crate) mod args;
pub(crate) mod cat;
mod devices;
mod dry_run;
pub(crate) mod ls;
pub(crate) mod manifest;
pub(crate) mod manpages;
pub(crate) mod panic;
pub(crate) mod provision;
mod report;
mod stdin;
mod token;
pub(crate) mod verify;

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use imprint::io::progress;

/// Milliseconds a step runs before its progress bar appears; tests set it
/// to 0 to see bars on small inputs.
const PROGRESS_DELAY_VAR: &str = "IMPRINT_PROGRESS_DELAY_MS";

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

/// Prints one `--json` document on stdout.
fn print_json(document: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(document)?);
    Ok(())
}

/// The error and its causes on one line (each error says its own part
/// once and leaves its cause to the next link).
pub(crate) fn error_line(e: &anyhow::Error) -> String {
    let causes: Vec<String> = e.chain().map(|cause| cause.to_string()).collect();
    causes.join(": ")
}
