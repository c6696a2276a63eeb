//! Many devices from one base image: the image is opened and scanned once,
//! images are written one after another, and the API calls run on a few
//! worker threads while the next image is being written.
//!
//! A failing serial does not stop the others. Every finished image is
//! listed in `manifest.json` beside them (no password, ever).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use thiserror::Error;

use crate::admin::{AdminClient, AdminConfig};
use crate::identity::{IdentityError, Password, Serial};
use crate::image::{self, ImageError};
use crate::io::output;
use crate::owner::OwnerSpec;
use crate::pipeline::{self, Prepared, ProvisionError, Request, Target};
use crate::plan::OverlaySpec;
use crate::verify::{self, Expectations};

#[derive(Debug, Error)]
pub enum BatchError {
    #[error("cannot read the serials file {path}: {source}")]
    ReadSerials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {error}")]
    BadSerial {
        path: String,
        line: usize,
        error: IdentityError,
    },
    #[error("serial {0} is listed twice")]
    Duplicate(String),
    #[error("no serials given")]
    Empty,
    #[error("a batch writes into a directory: --output must be an existing directory")]
    OutputNotDir,
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("cannot write the manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads serials, one a line; blank lines and `#` comments are skipped.
pub fn read_serials(text: &str, origin: &str) -> Result<Vec<Serial>, BatchError> {
    let mut serials = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        serials.push(Serial::parse(line).map_err(|error| BatchError::BadSerial {
            path: origin.to_string(),
            line: i + 1,
            error,
        })?);
    }
    Ok(serials)
}

/// Rejects an empty list and duplicates (two images for one account would
/// leave one of them with a stale password).
pub fn check_unique(serials: &[Serial]) -> Result<(), BatchError> {
    if serials.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut seen = BTreeSet::new();
    for s in serials {
        if !seen.insert(s.as_str()) {
            return Err(BatchError::Duplicate(s.to_string()));
        }
    }
    Ok(())
}

pub struct BatchRequest {
    pub serials: Vec<Serial>,
    pub input: PathBuf,
    pub output_dir: PathBuf,
    /// What every device gets, as in [`Request`].
    pub owner: OwnerSpec,
    /// One password for all (offline test batches); `None` generates one
    /// per device.
    pub password: Option<Password>,
    pub overlay: OverlaySpec,
    pub api: Option<AdminConfig>,
    pub sha1sum: bool,
    /// How the images are written, as in [`Request`].
    pub write: image::WriteOptions,
    pub force: bool,
    pub skip_existing: bool,
    /// API calls in flight at once (and images waiting for them).
    pub jobs: usize,
}

/// One line of the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestEntry {
    pub serial: String,
    pub email: String,
    pub output: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub tool: String,
    pub input: String,
    pub input_sha256: String,
    pub images: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Written,
    Skipped,
    Failed(String),
}

#[derive(Debug)]
pub struct BatchReport {
    pub outcomes: Vec<(String, Outcome)>,
    pub manifest_path: PathBuf,
}

impl BatchReport {
    pub fn failed(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
            .count()
    }
}

/// True when `path` exists and verifies for `serial` (checksum included).
fn already_done(path: &Path, serial: &Serial, owner: &OwnerSpec) -> bool {
    if !path.is_file() || !output::sidecar_path(path).is_file() {
        return false;
    }
    let expect = Expectations {
        serial: Some(serial.clone()),
        owner: Some(owner.clone()),
        login: None,
    };
    verify::verify(path, &expect).is_ok_and(|r| r.passed())
}

pub fn run(req: BatchRequest, say: &(dyn Fn(&str) + Sync)) -> Result<BatchReport, BatchError> {
    check_unique(&req.serials)?;
    if !req.output_dir.is_dir() {
        return Err(BatchError::OutputNotDir);
    }
    let client = req
        .api
        .clone()
        .map(AdminClient::new)
        .transpose()
        .map_err(ProvisionError::from)?
        .map(Arc::new);
    let kind = image::detect(&req.input)?;
    say(&format!("{}: {}", req.input.display(), kind.describe()));
    let mut backend = image::open_backend(
        &req.input,
        kind,
        &req.overlay.targets(),
        &req.output_dir,
        &req.write,
    )?;
    // The manifest's digest of the base image is taken on another core
    // while the scan decompresses (without progress: the scan reports).
    let input_digest = {
        let input = req.input.clone();
        std::thread::spawn(move || -> std::io::Result<String> {
            use sha2::Digest;
            let mut hasher = sha2::Sha256::new();
            std::io::copy(&mut std::fs::File::open(&input)?, &mut hasher)?;
            Ok(hex::encode(hasher.finalize()))
        })
    };
    let facts = backend.facts()?;
    let input_sha256 = input_digest
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the hashing thread panicked")))
        .map_err(|source| ImageError::Open {
            path: req.input.clone(),
            source,
        })?;

    let outcomes = Mutex::new(Vec::new());
    let written = Mutex::new(Vec::new());
    let jobs = req.jobs.max(1);
    // Sealed images wait here for an API worker; the bound keeps the number
    // of finished-but-unconfirmed temp files small.
    let (send, receive) = sync_channel::<Prepared>(jobs);
    let receive = Mutex::new(receive);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (receive, client, outcomes, written) = (&receive, &client, &outcomes, &written);
            scope.spawn(move || loop {
                let next = receive.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok(prepared) = next else { break };
                let serial = prepared.serial.to_string();
                let mut tell = |line: &str| say(&format!("{serial}: {line}"));
                let result = pipeline::finish(prepared, client.as_deref(), &mut tell);
                let outcome = match result {
                    Ok(report) => {
                        if let Some(e) = report.emitted {
                            written
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(ManifestEntry {
                                    serial: report.serial.clone(),
                                    email: report.email.clone(),
                                    output: e
                                        .path
                                        .file_name()
                                        .unwrap_or_default()
                                        .to_string_lossy()
                                        .into_owned(),
                                    sha256: e.sha256,
                                    size: e.size,
                                });
                        }
                        Outcome::Written
                    }
                    Err(e) => Outcome::Failed(e.to_string()),
                };
                outcomes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((serial, outcome));
            });
        }
        for serial in &req.serials {
            let record = |o: Outcome| {
                outcomes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((serial.to_string(), o))
            };
            let name = req.input.file_name().unwrap_or_default().to_string_lossy();
            let out_path = req.output_dir.join(format!("{serial}-{name}"));
            if req.skip_existing && already_done(&out_path, serial, &req.owner) {
                say(&format!(
                    "{serial}: {} already verifies; skipped",
                    out_path.display()
                ));
                record(Outcome::Skipped);
                continue;
            }
            let prepared = (|| -> Result<Prepared, ProvisionError> {
                let out = pipeline::output_path(&req.input, &req.output_dir, serial, req.force)?;
                let password = match &req.password {
                    Some(p) => p.clone(),
                    None => Password::generate()?,
                };
                let device = Request {
                    serial: serial.clone(),
                    target: Target::Image {
                        input: req.input.clone(),
                        output: out.clone(),
                    },
                    owner: req.owner.clone(),
                    password: None,
                    overlay: req.overlay.clone(),
                    api: None,
                    sha1sum: req.sha1sum,
                    write: req.write,
                };
                let mut tell = |line: &str| say(&format!("{serial}: {line}"));
                pipeline::prepare_image(
                    &device,
                    backend.as_mut(),
                    &facts,
                    &kind.describe(),
                    &out,
                    password,
                    &mut tell,
                )
            })();
            match prepared {
                Ok(p) => {
                    if send.send(p).is_err() {
                        record(Outcome::Failed("the API workers stopped".into()));
                    }
                }
                Err(e) => {
                    say(&format!("{serial}: failed: {e}"));
                    record(Outcome::Failed(e.to_string()));
                }
            }
        }
        drop(send);
    });

    // Report in the order the serials were given.
    let mut outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
    let order = |s: &str| req.serials.iter().position(|x| x.as_str() == s);
    outcomes.sort_by_key(|(s, _)| order(s));
    let mut images = written.into_inner().unwrap_or_else(|e| e.into_inner());
    images.sort_by(|a, b| a.serial.cmp(&b.serial));
    let manifest = Manifest {
        tool: format!("imprint {}", env!("CARGO_PKG_VERSION")),
        input: req
            .input
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        input_sha256,
        images,
    };
    let manifest_path = req.output_dir.join("manifest.json");
    write_manifest(&manifest_path, &manifest)?;
    Ok(BatchReport {
        outcomes,
        manifest_path,
    })
}

/// Writes the manifest atomically; entries of earlier runs for serials not
/// in this batch are kept, so `--skip-existing` reruns keep a full list.
fn write_manifest(path: &Path, manifest: &Manifest) -> Result<(), BatchError> {
    let err = |source| BatchError::Manifest {
        path: path.to_path_buf(),
        source,
    };
    let mut merged = manifest.clone();
    if let Ok(old) = std::fs::read_to_string(path) {
        if let Ok(old) = serde_json::from_str::<serde_json::Value>(&old) {
            let kept = old["images"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    let entry = ManifestEntry {
                        serial: e["serial"].as_str()?.to_string(),
                        email: e["email"].as_str()?.to_string(),
                        output: e["output"].as_str()?.to_string(),
                        sha256: e["sha256"].as_str()?.to_string(),
                        size: e["size"].as_u64()?,
                    };
                    let replaced = merged.images.iter().any(|m| m.serial == entry.serial);
                    let same_input =
                        old["input_sha256"].as_str() == Some(manifest.input_sha256.as_str());
                    (!replaced && same_input && path.with_file_name(&entry.output).is_file())
                        .then_some(entry)
                });
            let kept: Vec<ManifestEntry> = kept.collect();
            merged.images.extend(kept);
            merged.images.sort_by(|a, b| a.serial.cmp(&b.serial));
        }
    }
    let text = serde_json::to_string_pretty(&merged).expect("manifest serializes");
    let mut temp = output::TempOutput::create(path).map_err(err)?;
    use std::io::Write;
    temp.write_all(text.as_bytes()).map_err(err)?;
    temp.write_all(b"\n").map_err(err)?;
    temp.commit_without_sidecar().map_err(err)?;
    Ok(())
}
