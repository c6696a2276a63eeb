//! `imprint provision --dry-run`: what each image would get, per device,
//! as lines or one JSON document (`imprint.dry-run/1`). Nothing is written
//! and no API is called.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::identity::{Password, Serial};
use crate::pipeline::dry_run::{self, PlannedDevice};
use crate::pipeline::{ProvisionError, Settings, Source};

use super::args::ProvisionArgs;
use super::report::DryRunDocument;

pub(crate) fn run(
    args: &ProvisionArgs,
    serials: &[Serial],
    batch: bool,
    password: Option<&Password>,
    settings: &Settings,
) -> Result<ExitCode> {
    let inputs: Vec<Source> = match (&args.image[..], &args.rootfs_dir) {
        ([], Some(dir)) if !batch => vec![Source::StagingDir(dir.clone())],
        ([], Some(_)) => {
            bail!("a staging directory takes one device; a batch needs --image IN and --output DIR")
        }
        ([], None) => bail!("give --image IN --output OUT, or --rootfs-dir DIR"),
        (images, _) => images.iter().cloned().map(Source::Image).collect(),
    };
    let output = args.output.clone();
    // Where each input would be written: a directory for a batch or several
    // images, else --output itself (unless it names a directory).
    let as_dir = batch || inputs.len() > 1;
    let outputs = |i: usize, serial: &Serial| -> Option<PathBuf> {
        let Source::Image(input) = &inputs[i] else {
            return None;
        };
        output
            .as_deref()
            .map(|out| output_for(input, out, serial, as_dir))
    };
    if !batch {
        for (i, _) in inputs.iter().enumerate() {
            if let Some(out) = outputs(i, &serials[0]) {
                if out.symlink_metadata().is_ok() && !args.force {
                    return Err(ProvisionError::OutputExists(out).into());
                }
            }
        }
    }
    let planned = dry_run::plan(&inputs, &outputs, serials, password, settings)?;
    if args.json {
        super::print_json(&DryRunDocument::new(&planned))?;
        return Ok(ExitCode::SUCCESS);
    }
    for device in &planned {
        print_device(device)?;
    }
    if !args.quiet {
        eprintln!("imprint: dry run: nothing was written and no API was called");
    }
    Ok(ExitCode::SUCCESS)
}

/// As `pipeline::output_path` names outputs, without creating anything.
fn output_for(input: &Path, output: &Path, serial: &Serial, as_dir: bool) -> PathBuf {
    let dir = as_dir || output.as_os_str().to_string_lossy().ends_with('/') || output.is_dir();
    if !dir {
        return output.to_path_buf();
    }
    let name = input.file_name().unwrap_or_default().to_string_lossy();
    output.join(format!("{serial}-{name}"))
}

fn print_device(device: &PlannedDevice) -> std::io::Result<()> {
    for image in &device.images {
        let to = match &image.output {
            Some(out) => format!(" -> {}", out.display()),
            None => " (in place)".to_string(),
        };
        let partition = image
            .partition
            .as_ref()
            .map(|p| format!(", {p}"))
            .unwrap_or_default();
        outln!(
            "{} ({}): {}, {}{partition}{to}",
            device.serial,
            device.email,
            image.input.display(),
            image.kind
        );
        for e in &image.entries {
            let mode = e.mode.map(|m| format!("{m:04o}")).unwrap_or_default();
            let owner = e
                .owner
                .as_ref()
                .map(|o| format!("{}:{}", o.uid, o.gid))
                .unwrap_or_default();
            let size = e.size.map(|s| format!("{s} bytes")).unwrap_or_default();
            let target = e
                .target
                .as_ref()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default();
            outln!(
                "  {:<8} {:<8} {mode:<5} {owner:<11} {size:>12}  {}{target}",
                e.action.name(),
                e.kind,
                e.path
            );
        }
    }
    Ok(())
}
