//! `imprint verify`: the checks on a built image or staging directory, as
//! lines or one JSON document; the exit code says whether all passed.
//! `--no-credentials` checks a base instead: that no device's secret is in it.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::identity::Serial;
use crate::image::disk::PartitionId;
use crate::io::progress;
use crate::plan::OverlaySpec;
use crate::verify::{self, Expectations};

use super::args::VerifyArgs;
use super::report::{CleanDocument, VerifyDocument};

pub(crate) fn run(args: VerifyArgs) -> Result<ExitCode> {
    if args.no_credentials {
        return run_clean(&args);
    }
    if let Some(url) = args.login_url.as_deref() {
        if crate::admin::is_plain_http(url) && !crate::admin::is_loopback(url) {
            eprintln!(
                "imprint: warning: {url} is plain http: the device's password crosses the network unencrypted"
            );
        }
    }
    let expect = Expectations {
        password_policy: args.password_policy,
        image: image_options(&args)?,
        serial: args.serial.as_deref().map(Serial::parse).transpose()?,
        owner: args.owner.as_deref().map(str::parse).transpose()?,
        login: args
            .login_url
            .as_deref()
            .map(|url| args.api.config(url))
            .transpose()?,
    };
    super::show_progress(!args.json);
    let report = verify::verify(&args.image, &expect);
    progress::finish();
    let report = report?;
    if args.json {
        super::print_json(&VerifyDocument::new(&report))?;
    } else {
        for c in &report.checks {
            outln!("{c}");
        }
        let failed = report.failed_partitions();
        let verdict = match (report.passed(), &report.partitions[..], &failed[..]) {
            (true, [], _) => "all checks passed".to_string(),
            (true, checked, _) => format!("all checks passed in {}", PartitionId::list(checked)),
            (false, _, []) => "verification FAILED".to_string(),
            (false, _, failed) => format!("verification FAILED: {}", PartitionId::list(failed)),
        };
        outln!("{}: {verdict}", args.image.display());
    }
    Ok(exit_code(report.passed()))
}

fn image_options(args: &VerifyArgs) -> Result<crate::image::ImageOptions> {
    args.image_args.options()
}

/// 0 when every check passed, 1 (as for any failed check) otherwise.
fn exit_code(passed: bool) -> ExitCode {
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The clean-base check: the built-in device.conf overlay and every
/// `--overlay` name the files that hold a password.
fn run_clean(args: &VerifyArgs) -> Result<ExitCode> {
    if args
        .overlays
        .iter()
        .filter(|p| p.as_os_str() == "-")
        .count()
        > 1
    {
        anyhow::bail!("--overlay - reads standard input, which can be read only once: give the others as files");
    }
    let mut spec = OverlaySpec::default_spec();
    for path in &args.overlays {
        spec.extend(if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the overlay on standard input (it must be UTF-8 text)")?;
            OverlaySpec::parse(&text, "the overlay on stdin")?
        } else {
            OverlaySpec::load(path)?
        });
    }
    super::show_progress(!args.json);
    let report = verify::check_clean(&args.image, &spec, &image_options(args)?);
    progress::finish();
    let report = report?;
    if args.json {
        super::print_json(&CleanDocument::new(&report))?;
    } else {
        for c in report.checks() {
            outln!("{c}");
        }
        let image = args.image.display();
        if report.passed() {
            outln!("{image}: clean, no device credentials in it");
        } else {
            let found: Vec<&str> = report.found.iter().map(|f| f.path.as_str()).collect();
            outln!(
                "{image}: NOT CLEAN: {} holds a device's credentials; every image or OTA payload built from this base would carry them. Use the pristine base, or remove the file from the staging tree, and check again",
                found.join(", ")
            );
        }
    }
    Ok(exit_code(report.passed()))
}
