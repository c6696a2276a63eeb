//! `imprint provision`: one serial into an image or a staging directory,
//! or a batch of serials from one base image.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use imprint::identity::{Password, Serial};
use imprint::io::progress;
use imprint::owner::OwnerSpec;
use imprint::pipeline::batch::{self, BatchRequest, Outcome};
use imprint::pipeline::{self, Request, Target};
use imprint::plan::OverlaySpec;

use super::args::{ChecksumKind, ProvisionArgs};
use super::report::{BatchDocument, ProvisionDocument};

pub(crate) fn run(args: ProvisionArgs) -> Result<ExitCode> {
    let owner: OwnerSpec = args.owner.parse()?;
    let password = args
        .password_file
        .as_deref()
        .map(Password::from_file)
        .transpose()?;
    let mut overlay = OverlaySpec::default_spec();
    for path in &args.overlays {
        overlay.extend(OverlaySpec::load(path)?);
    }
    let api = match (&args.api_url, args.offline) {
        (Some(url), false) => Some(args.api.config(url)?),
        _ => None,
    };
    let sha1sum = args.checksum.contains(&ChecksumKind::Sha1);
    let mut serials = args
        .serial
        .iter()
        .map(|s| Serial::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(file) = &args.serials {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the serials file {}", file.display()))?;
        serials.extend(batch::read_serials(&text, &file.display().to_string())?);
    }
    if serials.len() != 1 || args.serials.is_some() {
        let (Some(input), Some(output)) = (&args.image, &args.output) else {
            bail!("a batch needs --image IN and --output DIR");
        };
        return run_batch(
            BatchRequest {
                serials,
                input: input.clone(),
                output_dir: output.clone(),
                owner,
                password,
                overlay,
                api,
                sha1sum,
                force: args.force,
                skip_existing: args.skip_existing,
                jobs: args.jobs as usize,
            },
            args.quiet,
            args.json,
        );
    }
    let serial = serials.remove(0);
    let target = match (&args.image, &args.rootfs_dir, &args.output) {
        (Some(input), None, Some(output)) => Target::Image {
            input: input.clone(),
            output: pipeline::output_path(input, output, &serial, args.force)?,
        },
        (None, Some(dir), None) => Target::StagingDir(dir.clone()),
        _ => bail!("give --image IN --output OUT, or --rootfs-dir DIR"),
    };
    let request = Request {
        serial,
        target,
        owner,
        password,
        overlay,
        api,
        sha1sum,
    };
    #[cfg(feature = "test-hooks")]
    super::panic::panic_if_asked(&request);
    let quiet = args.quiet || args.json;
    super::show_progress(!quiet);
    let report = pipeline::run(&request, &mut |line| {
        progress::finish();
        if !quiet {
            eprintln!("imprint: {line}");
        }
    });
    progress::finish();
    let report = report?;
    if args.json {
        super::print_json(&ProvisionDocument::new(&report))?;
        return Ok(ExitCode::SUCCESS);
    }
    let owner = format!("{}:{}", report.owner.uid, report.owner.gid);
    match &report.emitted {
        Some(out) => println!(
            "{}: wrote {} ({} bytes, sha256 {}), device.conf owner {owner}, mode 0600",
            report.serial,
            out.path.display(),
            out.size,
            out.sha256
        ),
        None => {
            for f in &report.staged {
                println!("{}: wrote {} (owner {owner})", report.serial, f.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
            Outcome::Written => println!("{serial}: written"),
            Outcome::Skipped => println!("{serial}: skipped (already built and verified)"),
            Outcome::Failed(why) => println!("{serial}: FAILED: {why}"),
        }
    }
    let skipped = report
        .outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Skipped)
        .count();
    println!(
        "{} of {total} written, {skipped} skipped, {failed} failed; manifest {}",
        total - failed - skipped,
        report.manifest_path.display()
    );
    Ok(code)
}
