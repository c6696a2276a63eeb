//! `imprint man`: the manual pages, generated from the command line itself
//! (clap_mangen), so they never disagree with `--help`. packaging/deb.sh
//! puts them in the Debian package.
//!
//! Around clap_mangen's sections each page gets EXIT STATUS, ENVIRONMENT,
//! EXAMPLES (the `--help` examples, in a no-fill block so that man never
//! reflows or hyphenates a command line) and SEE ALSO. Every page another
//! page names is generated: nested subcommands get their own page
//! (imprint-manifest-merge(1)), and clap's `help` subcommand none, so no
//! page names it.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::args::Cli;

/// clap_mangen starts every rendered piece with this string definition;
/// a page needs it once.
const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success; for verify, every check passed."),
    (
        "1",
        "An error (the message on stderr names the file, the reason and what to do), \
         a verify check that failed, or a batch in which any serial failed.",
    ),
    ("2", "A bad command line."),
    (
        "129, 130, 131, 143",
        "Interrupted by SIGHUP, SIGINT, SIGQUIT or SIGTERM; temporary files are removed \
         and no output is left half written under its final name.",
    ),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "IMPRINT_API_TOKEN",
        "The admin API bearer token, read when --api-token-file is not given. \
         It is never taken from a flag value.",
    ),
    (
        "IMPRINT_LIBEXT2FS",
        "The path of the libext2fs.so.2 to load for ext4, sparse and disk images, \
         instead of the system's.",
    ),
    (
        "IMPRINT_CACHE_DIR",
        "The scan cache directory. Else $XDG_CACHE_HOME/imprint, else \
         $HOME/.cache/imprint; relative paths are ignored. --no-cache turns the cache off. \
         An existing directory keeps its mode; imprint touches only its own imprint-scan-* files there.",
    ),
    (
        "XDG_CACHE_HOME, HOME",
        "Where the scan cache is when IMPRINT_CACHE_DIR is not set. One owned by another \
         user (root run with sudo -E) is not used: the run says so and caches nothing.",
    ),
    (
        "SOURCE_DATE_EPOCH",
        "The time, in seconds since 1970, given to new entries in an image; unset, \
         the mtime of the image's /etc, so that the same inputs give the same output bytes.",
    ),
];

/// Without `dir`, the page of `imprint` on stdout; with it, `imprint.1`
/// and one `imprint-SUBCOMMAND.1` per subcommand, nested ones included
/// (`man imprint-provision`, `man imprint-manifest-merge`), written into
/// `dir`.
pub(crate) fn run(dir: Option<&Path>) -> Result<ExitCode> {
    let pages = pages(Cli::command());
    let Some(dir) = dir else {
        std::io::stdout().write_all(&pages[0].1)?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Every page, `imprint` first, as (page name, roff).
fn pages(cli: clap::Command) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    add_pages(cli, None, &mut out);
    out
}

fn add_pages(cmd: clap::Command, parent: Option<&str>, out: &mut Vec<(String, Vec<u8>)>) {
    let name = match parent {
        None => cmd.get_name().to_string(),
        Some(p) => format!("{p}-{}", cmd.get_name()),
    };
    // clap takes names as &'static str (its `string` feature is off): a
    // few short strings, once, in a process that exits next.
    let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
    let cmd = cmd
        .name(leaked)
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(true);
    out.push((name.clone(), page(&cmd, parent)));
    for sub in cmd.get_subcommands() {
        add_pages(sub.clone(), Some(&name), out);
    }
}

fn page(cmd: &clap::Command, parent: Option<&str>) -> Vec<u8> {
    let examples = cmd.get_after_help().map(|h| h.to_string());
    let man = clap_mangen::Man::new(cmd.clone().after_help(None::<&str>));
    let mut roff = Vec::new();
    let mut piece = |render: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| {
        let mut buf = Vec::new();
        render(&mut buf).expect("writing to a Vec");
        let text = if roff.is_empty() {
            &buf[..]
        } else {
            buf.strip_prefix(PREAMBLE.as_bytes()).unwrap_or(&buf)
        };
        roff.extend_from_slice(text);
    };
    piece(&|w| man.render_title(w));
    // No hyphenation: flag and file names (--login-url, device.conf) are
    // read and copied as written, never split across lines.
    piece(&|w| w.write_all(b".nh\n"));
    piece(&|w| man.render_name_section(w));
    piece(&|w| man.render_synopsis_section(w));
    piece(&|w| man.render_description_section(w));
    piece(&|w| man.render_options_section(w));
    if cmd.has_subcommands() {
        piece(&|w| man.render_subcommands_section(w));
    }
    piece(&|w| {
        w.write_all(definitions("EXIT STATUS", EXIT_STATUS).as_bytes())?;
        w.write_all(definitions("ENVIRONMENT", ENVIRONMENT).as_bytes())
    });
    if let Some(examples) = &examples {
        piece(&|w| w.write_all(examples_section(examples).as_bytes()));
    }
    if let Some(parent) = parent {
        piece(&|w| w.write_all(see_also(parent).as_bytes()));
    }
    piece(&|w| man.render_version_section(w));
    roff
}

/// Text as roff prints it: backslashes, hyphens (`\-`, so that they are
/// not hyphenation points) and apostrophes escaped; a leading `.` or `'`
/// made plain text.
fn escape(text: &str) -> String {
    let mut out = String::new();
    if text.starts_with(['.', '\'']) {
        out.push_str("\\&");
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            '\'' => out.push_str("\\*(Aq"),
            c => out.push(c),
        }
    }
    out
}

fn definitions(heading: &str, items: &[(&str, &str)]) -> String {
    let mut s = format!(".SH \"{heading}\"\n");
    for (term, text) in items {
        s.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            escape(term),
            escape(text)
        ));
    }
    s
}

/// The `--help` examples in a no-fill block: each command line stays one
/// line, its `\` continuations where they are.
fn examples_section(examples: &str) -> String {
    let mut s = String::from(".SH EXAMPLES\n.nf\n");
    let body = examples.strip_prefix("Examples:\n").unwrap_or(examples);
    for line in body.lines() {
        s.push_str(&escape(line));
        s.push('\n');
    }
    s.push_str(".fi\n");
    s
}

fn see_also(parent: &str) -> String {
    let mut refs = vec![format!("\\fB{}\\fR(1)", escape("imprint"))];
    if parent != "imprint" {
        refs.push(format!("\\fB{}\\fR(1)", escape(parent)));
    }
    format!(".SH \"SEE ALSO\"\n{}\n", refs.join(", "))
}
