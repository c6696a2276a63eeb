//! `-` for a file flag (`--serials -`, `--devices -`, `--overlay -`):
//! standard input, read once, so only one of them may take it.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::args::ProvisionArgs;

/// Standard input, for the one flag that names it.
pub(crate) struct Stdin {
    taken: bool,
}

/// What `-` reads at most: a serials, devices or overlay file is far
/// smaller, and a runaway pipe must not fill memory.
pub(crate) const MAX_BYTES: u64 = 64 << 20;

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

impl Stdin {
    /// Refuses more than one flag reading stdin.
    pub(crate) fn for_args(args: &ProvisionArgs) -> Result<Stdin> {
        let mut readers: Vec<&str> = Vec::new();
        if args.serials.as_deref().is_some_and(is_stdin) {
            readers.push("--serials -");
        }
        if args.devices.as_deref().is_some_and(is_stdin) {
            readers.push("--devices -");
        }
        for p in &args.overlays {
            if is_stdin(p) {
                readers.push("--overlay -");
            }
        }
        if readers.len() > 1 {
            bail!(
                "{} each read standard input, which can be read only once: give all but one as files",
                readers.join(", ")
            );
        }
        Ok(Stdin { taken: false })
    }

    /// The text of standard input if `path` is `-`, else `None`.
    pub(crate) fn take(&mut self, path: &Path) -> Result<Option<String>> {
        self.take_bytes(path)?
            .map(|bytes| {
                String::from_utf8(bytes)
                    .context("cannot read standard input (it must be UTF-8 text)")
            })
            .transpose()
    }

    /// The bytes of standard input if `path` is `-`, else `None`: for a
    /// reader that says itself where they are not text.
    pub(crate) fn take_bytes(&mut self, path: &Path) -> Result<Option<Vec<u8>>> {
        if !is_stdin(path) {
            return Ok(None);
        }
        if self.taken {
            bail!("standard input was already read for another flag");
        }
        self.taken = true;
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
        if bytes.len() as u64 > MAX_BYTES {
            bail!(
                "standard input is larger than {} MiB, more than any serials, devices or overlay file; check what is piped in",
                MAX_BYTES >> 20
            );
        }
        Ok(Some(bytes))
    }
}
