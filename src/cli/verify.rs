//! `imprint verify`: the checks on a built image or staging directory, as
//! lines or one JSON document; the exit code says whether all passed.

use std::process::ExitCode;

use anyhow::Result;

use crate::identity::Serial;
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
        image: crate::image::ImageOptions {
            partition: args.partition.clone(),
            luks: args.luks.key()?,
            ..Default::default()
        },
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
        println!(
            "{}: {}",
            args.image.display(),
            if report.passed() {
                "all checks passed"
            } else {
                "verification FAILED"
            }
        );
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
