//! imprint: stamp a device's identity into a root-filesystem image without
//! extracting or mounting it.
//!
//! The flow, as `main.rs` drives it: validate the serial ([`identity`]),
//! open the image ([`image`]), resolve the overlay into a [`plan::Plan`]
//! against the image's own users ([`owner`]), write a new image into a temp
//! file ([`io::output`]), provision the account ([`admin`]), then commit the
//! image and its checksum. [`verify`] reads a built image back.
//!
//! # Provision and verify from Rust
//!
//! A build tool can do what `imprint provision` and `imprint verify` do
//! without the CLI. Here a tarball is stamped offline (the caller supplies
//! the password) and checked:
//!
//! ```
//! use imprint::identity::{Password, Serial};
//! use imprint::plan::OverlaySpec;
//! use imprint::pipeline::{self, Request, Target};
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
//!     target: Target::Image { input: input.clone(), output: output.clone() },
//!     owner: "azaion".parse()?,
//!     password: Some(Password::from_plain("0123456789abcdef0123456789abcdef")),
//!     overlay: OverlaySpec::default_spec(),
//!     api: None, // offline; Some(AdminConfig) provisions the account first
//!     sha1sum: false,
//!     write: imprint::image::WriteOptions::default(),
//! };
//! let report = provision::run(&request, &mut |line| eprintln!("{line}"))?;
//! let emitted = report.emitted.expect("an image was written");
//! assert_eq!((report.owner.uid, report.owner.gid), (1001, 1001));
//!
//! let checks = verify::verify(&emitted.path, &Expectations {
//!     serial: Some(Serial::parse("AZJN-0042")?),
//!     owner: Some("azaion".parse()?),
//!     login: None,
//! })?;
//! assert!(checks.passed(), "{:?}", checks.checks);
//! # Ok(())
//! # }
//! ```
//!
//! Online, [`admin::AdminConfig`] names the admin API; [`stub::StubServer`]
//! is a stand-in on 127.0.0.1 for tests:
//!
//! ```
//! use imprint::admin::{AdminClient, AdminConfig, Provisioned};
//! use imprint::identity::Password;
//! use imprint::stub::StubServer;
//!
//! let server = StubServer::start().unwrap();
//! let client = AdminClient::new(AdminConfig::new(&server.url())).unwrap();
//! let password = Password::generate().unwrap();
//! let email = "azaion-jetson-0042@azaion.com";
//! assert_eq!(client.provision(email, &password).unwrap(), Provisioned::Created);
//! assert_eq!(client.provision(email, &password).unwrap(), Provisioned::PasswordUpdated);
//! assert_eq!(server.password_of(email).as_deref(), Some(password.expose()));
//! ```
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

pub mod admin;
pub mod compress;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod image;
pub mod io;
pub mod owner;
pub mod pipeline;
pub mod plan;
pub mod redact;
pub mod stub;
pub mod verify;
