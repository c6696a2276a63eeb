//! `imprint provision`: one serial into an image or a staging directory,
//! or a batch of serials from one base image.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::identity::{Password, Serial};
use crate::image::disk::PartitionId;
use crate::io::progress;
use crate::owner::OwnerSpec;
use crate::pipeline::batch::{self, BatchRequest, Outcome};
use crate::pipeline::{self, Request, Settings, Source};
use crate::plan::OverlaySpec;

use super::args::{ChecksumKind, ProvisionArgs};
use super::report::{BatchDocument, ProvisionDocument};

pub(crate) fn run(args: ProvisionArgs) -> Result<ExitCode> {
    let mut stdin = super::stdin::Stdin::for_args(&args)?;
    let password = args
        .password_file
        .as_deref()
        .map(|path| Password::from_file(path, args.password_policy))
        .transpose()?;
    let mut settings = settings(&args, &mut stdin)?;
    let mut serials = serials(&args, &mut stdin, &mut settings)?;
    let batch_run = serials.len() != 1
        || args.serials.is_some()
        || (args.devices.is_some() && args.serial.is_empty() && args.rootfs_dir.is_none());
    if batch_run && args.luks_build.luks_encrypt {
        // L4T's passphrase is bound to one chip's ECID: a batch would give
        // every device a container only the first one can open.
        bail!("--luks-encrypt builds one device's container (its passphrase is bound to that chip's ECID); run it once per device, with one --serial");
    }
    if args.dry_run {
        return super::dry_run::run(&args, &serials, batch_run, password.as_ref(), &settings);
    }
    let api = match (&args.api_url, args.offline) {
        (Some(url), false) => Some(args.api.config(url)?),
        _ => None,
    };
    if batch_run {
        let (Some(output), false) = (&args.output, args.image.is_empty()) else {
            bail!("a batch needs --image IN and --output DIR");
        };
        return run_batch(
            BatchRequest {
                serials,
                inputs: args.image.clone(),
                output_dir: output.clone(),
                settings,
                password,
                api,
                force: args.force,
                skip_existing: args.skip_existing,
                rotate: args.rotate,
                password_policy: args.password_policy,
                jobs: args.jobs as usize,
            },
            args.quiet,
            args.json,
        );
    }
    let serial = serials.remove(0);
    let inputs = single_inputs(&args, &serial)?;
    warn_account_taken(&inputs, &serial);
    let request = Request {
        serial,
        inputs,
        password,
        settings,
        api,
    };
    run_single(request, args.quiet, args.json)
}

/// What every device of the run gets, from the flags.
fn settings(args: &ProvisionArgs, stdin: &mut super::stdin::Stdin) -> Result<Settings> {
    let mut settings = Settings::new(
        args.owner
            .as_deref()
            .unwrap_or("root:root")
            .parse::<OwnerSpec>()?,
    );
    settings.default_owner = args.owner.is_none();
    for path in &args.overlays {
        settings.overlay.extend(match stdin.take(path)? {
            Some(text) => OverlaySpec::parse(&text, "the overlay on stdin")?,
            None => OverlaySpec::load(path)?,
        });
    }
    settings.sha1sum = args.checksum.contains(&ChecksumKind::Sha1);
    settings.no_rotate = args.no_rotate;
    settings.mtime = source_date_epoch()?;
    // The slow path the fast paths are tested and benchmarked against.
    settings.options.full_rewrite = std::env::var_os("IMPRINT_FULL_REWRITE").is_some();
    settings.options.partitions = args.image_args.partition.clone();
    settings.options.luks = args.image_args.luks.key()?;
    settings.options.luks_build = args.luks_build.build(args.image.len())?;
    settings.options.cache = if args.no_cache {
        None
    } else {
        crate::cache::Cache::from_env()
    };
    Ok(settings)
}

/// The serials of the run (`--serial`, `--serials`, `--devices`), each
/// checked against the overlay before any work: its template variables,
/// rendered paths and host source files.
fn serials(
    args: &ProvisionArgs,
    stdin: &mut super::stdin::Stdin,
    settings: &mut Settings,
) -> Result<Vec<Serial>> {
    let mut serials = args
        .serial
        .iter()
        .map(|s| Serial::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(file) = &args.serials {
        let text = match stdin.take(file)? {
            Some(text) => text,
            None => std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the serials file {}", file.display()))?,
        };
        serials.extend(batch::read_serials(&text, &file.display().to_string())?);
    }
    if let Some(file) = &args.devices {
        let given = serials.clone();
        serials = super::devices::load(file, stdin, &given, settings)?;
    }
    for serial in &serials {
        settings
            .overlay
            .check_device(serial, &settings.vars_of(serial))?;
    }
    Ok(serials)
}

/// One device's inputs, each with its output's final name (`None` for a
/// staging directory).
fn single_inputs(
    args: &ProvisionArgs,
    serial: &Serial,
) -> Result<Vec<(Source, Option<std::path::PathBuf>)>> {
    Ok(match (&args.image[..], &args.rootfs_dir, &args.output) {
        ([input], None, Some(output)) => vec![(
            Source::Image(input.clone()),
            Some(pipeline::output_path(input, output, serial, args.force)?),
        )],
        // Several images of one device: each gets `<serial>-<its name>`
        // in the output directory.
        (images @ [_, _, ..], None, Some(dir)) => {
            if dir.exists() && !dir.is_dir() {
                bail!("several --image inputs need --output to be a directory");
            }
            let dir = pipeline::as_directory(dir);
            images
                .iter()
                .map(|input| {
                    let out = pipeline::output_path(input, &dir, serial, args.force)?;
                    Ok((Source::Image(input.clone()), Some(out)))
                })
                .collect::<Result<Vec<_>>>()?
        }
        ([], Some(dir), None) => vec![(Source::StagingDir(dir.clone()), None)],
        _ => bail!("give --image IN --output OUT, or --rootfs-dir DIR"),
    })
}

/// A batch's manifest in an output's directory that gives this account to
/// another serial: that serial's image stops logging in.
fn warn_account_taken(inputs: &[(Source, Option<std::path::PathBuf>)], serial: &Serial) {
    for (_, out) in inputs {
        let dir = out.as_deref().and_then(std::path::Path::parent);
        if let Some(other) = dir.and_then(|d| batch::account_taken_by(d, serial)) {
            eprintln!(
                "imprint: warning: manifest.json in that directory already holds {} for {other}, whose image will stop logging in once {serial} is provisioned",
                serial.email()
            );
        }
    }
}

/// One device end to end, and its result line (or document).
fn run_single(request: Request, quiet: bool, json: bool) -> Result<ExitCode> {
    #[cfg(feature = "test-hooks")]
    super::panic::panic_if_asked(&request);
    let quiet = quiet || json;
    super::show_progress(!quiet);
    let report = pipeline::run(request, &mut |line| {
        progress::finish();
        if !quiet {
            eprintln!("imprint: {line}");
        }
    });
    progress::finish();
    let report = report?;
    warn(&report.warnings);
    if json {
        super::print_json(&ProvisionDocument::new(&report))?;
        return Ok(ExitCode::SUCCESS);
    }
    for out in &report.outputs {
        let owner = format!("{}:{}", out.owner.uid, out.owner.gid);
        match &out.emitted {
            Some(image) => outln!(
                "{}: wrote {} ({} bytes, sha256 {}), {}mode 0600",
                report.serial,
                image.path.display(),
                image.size,
                image.sha256,
                stamped(out)
            ),
            None => {
                for f in &out.staged {
                    outln!("{}: wrote {} (owner {owner})", report.serial, f.display());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where device.conf went in an image and whose it is: `device.conf owner
/// 1001:1001, ` for an image without partitions; for a disk image the
/// partitions too, each with its owner where they differ (each partition
/// has its own /etc/passwd).
fn stamped(out: &crate::pipeline::OutputReport) -> String {
    let ids = |o: &crate::owner::Owner| format!("{}:{}", o.uid, o.gid);
    let parts = &out.partitions;
    if parts.is_empty() {
        return format!("device.conf owner {}, ", ids(&out.owner));
    }
    let list: Vec<PartitionId> = parts.iter().map(|p| p.partition.clone()).collect();
    let first = ids(&parts[0].owner);
    if parts.iter().all(|p| ids(&p.owner) == first) {
        return format!("{}, device.conf owner {first}, ", PartitionId::list(&list));
    }
    let owners: Vec<String> = parts
        .iter()
        .map(|p| format!("{} in {}", ids(&p.owner), p.partition))
        .collect();
    format!(
        "{}, device.conf owner {}, ",
        PartitionId::list(&list),
        owners.join(", ")
    )
}

/// SOURCE_DATE_EPOCH, the reproducible-builds time for new entries.
fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a whole number of seconds")
        })?)),
        _ => Ok(None),
    }
}

fn run_batch(req: BatchRequest, quiet: bool, json: bool) -> Result<ExitCode> {
    let total = req.serials.len();
    super::show_progress(!quiet && !json);
    let report = batch::run(req, &|line| {
        if !quiet && !json {
            eprintln!("imprint: {line}");
        }
    });
    progress::finish();
    let report = report?;
    warn(&report.warnings);
    let failed = report.failed();
    let code = if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if json {
        super::print_json(&BatchDocument::new(&report))?;
        return Ok(code);
    }
    for (serial, outcome) in &report.outcomes {
        match outcome {
            Outcome::Written => outln!("{serial}: written"),
            Outcome::Rebuilt => outln!("{serial}: rebuilt from the new base, password kept"),
            Outcome::Skipped => outln!("{serial}: skipped (already built and verified)"),
            Outcome::Failed(why) => outln!("{serial}: FAILED: {why}"),
        }
    }
    let skipped = report
        .outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Skipped)
        .count();
    let stamped: String = report
        .partitions
        .iter()
        .map(|(input, parts)| {
            let name = input.file_name().unwrap_or_default().to_string_lossy();
            format!("; {name}: {}", PartitionId::list(parts))
        })
        .collect();
    outln!(
        "{} of {total} written, {skipped} skipped, {failed} failed; manifest {}{stamped}",
        total - failed - skipped,
        report.manifest_path.display()
    );
    Ok(code)
}

/// Warnings go to stderr whatever --quiet and --json say (the JSON
/// documents carry them too).
fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("imprint: warning: {w}");
    }
}
