//! `imprint verify`: the checks on a built image or staging directory, as
//! lines or one JSON document; the exit code says whether all passed.

use std::process::ExitCode;

use anyhow::Result;

use crate::identity::Serial;
use crate::image::disk::PartitionId;
use crate::io::progress;
use crate::verify::{self, Expectations};

use super::args::VerifyArgs;
use super::report::VerifyDocument;

pub(crate) fn run(args: VerifyArgs) -> Result<ExitCode> {
    if let Some(url) = args.login_url.as_deref() {
        if crate::admin::is_plain_http(url) && !crate::admin::is_loopback(url) {
            eprintln!(
                "imprint: warning: {url} is plain http: the device's password crosses the network unencrypted"
            );
        }
    }
    let expect = Expectations {
        password_policy: args.password_policy,
        image: args.image_args.options(),
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
            println!("{c}");
        }
        let failed = report.failed_partitions();
        let verdict = match (report.passed(), &report.partitions[..], &failed[..]) {
            (true, [], _) => "all checks passed".to_string(),
            (true, checked, _) => format!("all checks passed in {}", PartitionId::list(checked)),
            (false, _, []) => "verification FAILED".to_string(),
            (false, _, failed) => format!("verification FAILED: {}", PartitionId::list(failed)),
        };
        println!("{}: {verdict}", args.image.display());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
