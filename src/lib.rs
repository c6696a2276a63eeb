//! imprint: stamp a device's identity into a root-filesystem image without
//! extracting or mounting it.
//!
//! The flow, as the `imprint` command drives it and [`run`] does it:
//! validate the serial ([`identity`]), open the image ([`image`]), resolve
//! the overlay ([`plan`]) against the image's own users ([`owner`]), write
//! a new image into a temp file, provision the account ([`admin`]), then
//! give the image its final name and its checksum. [`verify()`] reads a
//! built image back; [`open_reader`] looks inside any image.
//!
//! The entry points are re-exported here: [`run`] with [`Request`],
//! [`Settings`], [`Source`] and its [`Report`]; [`verify()`] with
//! [`Expectations`] and its [`VerifyReport`]; [`open_reader`] with
//! [`ImageOptions`] and [`Inspect`]; [`OverlaySpec`], [`OwnerSpec`],
//! [`Serial`], [`Password`] and [`AdminConfig`] to fill them in; and the
//! errors each returns.
//!
//! # Provision and verify from Rust
//!
//! A build tool can do what `imprint provision` and `imprint verify` do
//! without the CLI. Here a tarball is stamped offline (the caller supplies
//! the password) and checked:
//!
//! ```
//! use imprint::identity::{Password, Serial};
//! use imprint::pipeline::{self, Request, Settings, Source};
//! use imprint::verify::{self, Expectations};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let input = dir.path().join("rootfs.tar");
//! # {
//! #     let mut tar = tar::Builder::new(std::fs::File::create(&input)?);
//! #     for (path, body) in [
//! #         ("etc/passwd", &b"root:x:0:0::/root:/bin/sh\nazaion:x:1001:1001::/:/bin/sh\n"[..]),
//! #         ("etc/group", &b"root:x:0:\nazaion:x:1001:\n"[..]),
//! #     ] {
//! #         let mut h = tar::Header::new_ustar();
//! #         h.set_size(body.len() as u64);
//! #         h.set_mode(0o644);
//! #         tar.append_data(&mut h, path, body)?;
//! #     }
//! #     tar.finish()?;
//! # }
//! let output = dir.path().join("AZJN-0042-rootfs.tar");
//! let request = Request {
//!     serial: Serial::parse("AZJN-0042")?,
//!     inputs: vec![(Source::Image(input.clone()), Some(output.clone()))],
//!     password: Some(Password::from_plain("0123456789abcdef0123456789abcdef")),
//!     settings: Settings::new("azaion".parse()?), // the default overlay
//!     api: None, // offline; Some(AdminConfig) provisions the account first
//! };
//! let report = pipeline::run(request, &mut |line| eprintln!("{line}"))?;
//! let written = &report.outputs[0];
//! let emitted = written.emitted.clone().expect("an image was written");
//! assert_eq!((written.owner.uid, written.owner.gid), (1001, 1001));
//!
//! let checks = verify::verify(&emitted.path, &Expectations {
//!     password_policy: Default::default(),
//!     image: Default::default(),
//!     serial: Some(Serial::parse("AZJN-0042")?),
//!     owner: Some("azaion".parse()?),
//!     login: None,
//! })?;
//! assert!(checks.passed(), "{:?}", checks.checks);
//! # Ok(())
//! # }
//! ```
//!
//! Online, [`admin::AdminConfig`] names the admin API; `stub::StubServer`
//! (feature `demo`) is a stand-in on 127.0.0.1 for tests, with an example.
//!
//! Extra files go in through overlay specs, the same TOML `--overlay` reads:
//!
//! ```
//! use imprint::plan::OverlaySpec;
//!
//! let mut spec = OverlaySpec::default_spec();
//! spec.extend(OverlaySpec::parse(r#"
//!     [[entry]]
//!     path = "/etc/azaion/serial"
//!     type = "file"
//!     mode = "0644"
//!     owner = "0:0"
//!     content = "{serial}\n"
//! "#, "example").unwrap());
//! assert_eq!(spec.targets().len(), 3);
//! ```
//!
//! # Features
//!
//! - `cli` (default): the `imprint` command, `cli::main`, and what only
//!   it needs (clap, anyhow, the log formatter); brings `demo`.
//! - `demo`: `stub`, the loopback stand-in API that `imprint demo` and
//!   the tests run against (tiny_http).
//! - `fuzzing`: the harnesses the fuzz crate in `fuzz/` calls (tempfile).
//! - `test-hooks`: for the integration tests only, which turn it on; lets
//!   them make the command panic with secrets in the message.
//!
//! A library user depends on imprint with `default-features = false`: the
//! library alone, with no command line and no HTTP server.

// Without the `cli` feature, what only the command line uses (batches,
// dry runs, manifests, signal and process set-up) is compiled but unused.
// Dead code is still found where CI looks for it: clippy with the default
// features, `cli` on.
#![cfg_attr(not(feature = "cli"), allow(dead_code))]

pub mod admin;
pub(crate) mod cache;
#[cfg(feature = "cli")]
pub mod cli;
pub(crate) mod compress;
#[cfg(test)]
mod error_style;
pub(crate) mod excerpt;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod image;
pub(crate) mod io;
pub mod owner;
pub mod pipeline;
pub mod plan;
pub(crate) mod redact;
#[cfg(feature = "demo")]
pub mod stub;
mod sync;
pub mod verify;

// The entry points, for `use imprint::{...}`; each module has the rest of
// its part (its errors, the types its entry points take and give).
pub use admin::{AdminConfig, AdminError};
pub use identity::{IdentityError, Password, PasswordPolicy, Serial};
pub use image::{open_reader, ImageError, ImageOptions, Inspect};
pub use owner::{OwnerError, OwnerSpec};
pub use pipeline::{
    run, InputKind, OutputReport, ProvisionError, Report, Request, Settings, Source,
};
pub use plan::{OverlayError, OverlaySpec};
pub use verify::{verify, Expectations, VerifyReport};

// What a unit test needs of the machine (a tool, root) and what happens
// when it is missing: the integration tests' policy, from the same file.
#[cfg(test)]
#[path = "../tests/it/require.rs"]
mod require;

/// An error and its causes on one line, as the CLI prints them: each
/// error in imprint says its own part once and leaves the cause to the
/// next link of the chain.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}
