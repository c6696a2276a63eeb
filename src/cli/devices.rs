//! `--devices FILE`: the devices of a run and their overlay variables.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::identity::Serial;
use crate::pipeline::Settings;
use crate::plan::devices;

use super::stdin::Stdin;

/// Reads the devices file into `settings` and returns the run's serials:
/// those `given` with --serial (each must have a row), else every row.
pub(crate) fn load(
    file: &Path,
    stdin: &mut Stdin,
    given: &[Serial],
    settings: &mut Settings,
) -> Result<Vec<Serial>> {
    let (data, origin) = match stdin.take_bytes(file)? {
        Some(data) => (data, "-".to_string()),
        None => (
            std::fs::read(file)
                .with_context(|| format!("cannot read the devices file {}", file.display()))?,
            file.display().to_string(),
        ),
    };
    let rows = devices::parse(&data, &origin)?;
    let serials: Vec<Serial> = if given.is_empty() {
        rows.iter().map(|(s, _)| s.clone()).collect()
    } else {
        for serial in given {
            if !rows.iter().any(|(s, _)| s == serial) {
                bail!(
                    "{serial} has no row in the devices file {}; add one or leave --devices out",
                    if origin == "-" { "(stdin)" } else { &origin }
                );
            }
        }
        given.to_vec()
    };
    let vars: BTreeMap<String, _> = rows
        .into_iter()
        .map(|(serial, vars)| (serial.to_string(), vars))
        .collect();
    settings.devices = Arc::new(vars);
    Ok(serials)
}
