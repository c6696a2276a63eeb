//! Many devices from one base image: the image is opened and scanned once,
//! images are written one after another, and the API calls run on a few
//! worker threads while the next image is being written.
//!
//! A failing serial does not stop the others. Every finished image is
//! listed in `manifest.json` beside them (no password, ever).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

use serde::Serialize;
use thiserror::Error;

use crate::admin::{AdminClient, AdminConfig};
use crate::identity::{IdentityError, Password, PasswordPolicy, Serial};
use crate::image::{ImageError, ImageOptions};
use crate::io::output;
use crate::owner::OwnerSpec;
use crate::pipeline::{self, Job, Opened, Prepared, ProvisionError, Settings, Source};
use crate::verify::{self, Expectations};

#[derive(Debug, Error)]
pub enum BatchError {
    #[error("cannot read the serials file {path}")]
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
    #[error("serials {first} and {second} both map to the account {email}; the second image would make the first one's password stale. Provision them in separate runs only if they are the same device")]
    SameAccount {
        first: String,
        second: String,
        email: String,
    },
    #[error("no serials given")]
    Empty,
    #[error("a batch writes into a directory: --output must be a directory")]
    OutputNotDir,
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("cannot write the manifest {path}")]
    Manifest {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads serials, one a line; blank lines and `#` comments are skipped.
pub fn read_serials(text: &str, origin: &str) -> Result<Vec<Serial>, BatchError> {
    let mut serials = Vec::new();
    // A byte-order mark (Windows editors write one) is not part of a serial.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
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

/// Rejects an empty list, duplicates, and two serials that map to one
/// account (the runbook's rule keeps only the segment after the last
/// hyphen, so `AZJN-0007` and `AZXB-0007` share an email): two images for
/// one account would leave the first with a password that no longer works.
pub fn check_unique(serials: &[Serial]) -> Result<(), BatchError> {
    if serials.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut seen = BTreeMap::new();
    for s in serials {
        if let Some(first) = seen.insert(s.email(), s) {
            return Err(if first == s {
                BatchError::Duplicate(s.to_string())
            } else {
                BatchError::SameAccount {
                    first: first.to_string(),
                    second: s.to_string(),
                    email: s.email(),
                }
            });
        }
    }
    Ok(())
}

pub struct BatchRequest {
    pub serials: Vec<Serial>,
    /// The base images; each serial gets one output per input, all with
    /// the same credentials.
    pub inputs: Vec<PathBuf>,
    pub output_dir: PathBuf,
    /// What every device gets.
    pub settings: Settings,
    /// One password for all (offline test batches); `None` generates one
    /// per device.
    pub password: Option<Password>,
    pub api: Option<AdminConfig>,
    pub force: bool,
    pub skip_existing: bool,
    /// The form a skipped output's password must have to count as done.
    pub password_policy: PasswordPolicy,
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
    /// The input (file name) the image was made from.
    pub input: String,
}

/// A base image of the batch.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestInput {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub tool: String,
    /// The first input's name and digest (every input is in `inputs`).
    pub input: String,
    pub input_sha256: String,
    pub inputs: Vec<ManifestInput>,
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
fn already_done(
    path: &Path,
    serial: &Serial,
    owner: &OwnerSpec,
    policy: PasswordPolicy,
    options: &ImageOptions,
) -> bool {
    if !path.is_file() {
        return false;
    }
    let expect = Expectations {
        password_policy: policy,
        image: options.clone(),
        serial: Some(serial.clone()),
        owner: Some(owner.clone()),
        login: None,
    };
    if !verify::verify(path, &expect).is_ok_and(|r| r.passed()) {
        return false;
    }
    // An image under its final name was renamed only after the API took
    // its password; a run killed before it wrote the checksum left it
    // without one. The image verified: finish what that run began.
    if !output::sidecar_path(path).is_file() {
        let healed = output::sha256_file(path).and_then(|sha| output::write_sidecar(path, &sha));
        if healed.is_err() {
            return false;
        }
        tracing::info!(image = %path.display(), "wrote the checksum an interrupted run left out");
    }
    true
}

/// The serial that `output_dir`'s manifest already gives `serial`'s account
/// to, if it is another one (two serials, one account: the earlier image's
/// password would go stale).
pub fn account_taken_by(output_dir: &Path, serial: &Serial) -> Option<String> {
    let text = std::fs::read_to_string(output_dir.join("manifest.json")).ok()?;
    let manifest: serde_json::Value = serde_json::from_str(&text).ok()?;
    let email = serial.email();
    manifest["images"].as_array()?.iter().find_map(|e| {
        let other = e["serial"].as_str()?;
        (e["email"].as_str()? == email && other != serial.as_str()).then(|| other.to_string())
    })
}

pub fn run(req: BatchRequest, say: &(dyn Fn(&str) + Sync)) -> Result<BatchReport, BatchError> {
    check_unique(&req.serials)?;
    if req.output_dir.exists() && !req.output_dir.is_dir() {
        return Err(BatchError::OutputNotDir);
    }
    pipeline::output_dir(&req.output_dir)?;
    for stale in
        output::remove_stale_temps(&req.output_dir).map_err(|source| BatchError::Manifest {
            path: req.output_dir.clone(),
            source,
        })?
    {
        say(&format!(
            "removed {} left by an interrupted run",
            stale.display()
        ));
    }
    let client = req
        .api
        .clone()
        .map(AdminClient::new)
        .transpose()
        .map_err(ProvisionError::from)?
        .map(Arc::new);
    // The manifest's digests of the base images are taken on other cores
    // while the scans decompress (without progress: the scans report).
    let digests: Vec<_> = req
        .inputs
        .iter()
        .cloned()
        .map(digest_in_background)
        .collect();
    let mut opened = Vec::with_capacity(req.inputs.len());
    for input in &req.inputs {
        opened.push(Opened::open(
            Source::Image(input.clone()),
            req.settings.clone(),
            &req.output_dir,
            &mut |line| say(line),
        )?);
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for (input, digest) in req.inputs.iter().zip(digests) {
        let sha256 = digest
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the hashing thread panicked")))
            .map_err(|source| ImageError::Open {
                path: input.clone(),
                source,
            })?;
        inputs.push(ManifestInput {
            name: file_name(input),
            sha256,
        });
    }
    let manifest_path = req.output_dir.join("manifest.json");
    let manifest = Mutex::new(Manifest {
        tool: format!("imprint {}", env!("CARGO_PKG_VERSION")),
        input: inputs[0].name.clone(),
        input_sha256: inputs[0].sha256.clone(),
        inputs,
        images: Vec::new(),
    });
    // Recorded images go into the manifest at once, which is rewritten
    // atomically each time: after a crash it lists exactly what exists.
    let record_images = |entries: Vec<ManifestEntry>| -> Result<(), BatchError> {
        let mut manifest = lock(&manifest);
        manifest.images.extend(entries);
        write_manifest(&manifest_path, &manifest)
    };

    let outcomes = Mutex::new(Vec::new());
    let jobs = req.jobs.max(1);
    // Sealed images wait here for an API worker; the bound keeps the number
    // of finished-but-unconfirmed temp files small.
    let (send, receive) = sync_channel::<Prepared>(jobs);
    let receive = Mutex::new(receive);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (receive, client, outcomes, record_images, inputs) =
                (&receive, &client, &outcomes, &record_images, &req.inputs);
            scope.spawn(move || loop {
                let next = lock(receive).recv();
                let Ok(prepared) = next else { break };
                let serial = prepared.serial().to_string();
                let mut tell = |line: &str| say(&format!("{serial}: {line}"));
                let result = prepared.commit(client.as_deref(), &mut tell);
                let outcome = match result {
                    Ok(report) => {
                        let entries = report
                            .outputs
                            .into_iter()
                            .zip(inputs)
                            .filter_map(|(o, input)| {
                                let e = o.emitted?;
                                Some(ManifestEntry {
                                    serial: report.serial.clone(),
                                    email: report.email.clone(),
                                    output: file_name(&e.path),
                                    sha256: e.sha256,
                                    size: e.size,
                                    input: file_name(input),
                                })
                            })
                            .collect();
                        match record_images(entries) {
                            Ok(()) => Outcome::Written,
                            Err(e) => Outcome::Failed(crate::error_chain(&e)),
                        }
                    }
                    Err(e) => Outcome::Failed(crate::error_chain(&e)),
                };
                lock(outcomes).push((serial, outcome));
            });
        }
        for serial in &req.serials {
            let record = |o: Outcome| lock(&outcomes).push((serial.to_string(), o));
            let out_paths: Vec<PathBuf> = req
                .inputs
                .iter()
                .map(|input| {
                    req.output_dir
                        .join(format!("{serial}-{}", file_name(input)))
                })
                .collect();
            if req.skip_existing {
                let done: Option<Vec<ManifestEntry>> = out_paths
                    .iter()
                    .zip(&req.inputs)
                    .map(|(out, input)| {
                        already_done(
                            out,
                            serial,
                            &req.settings.owner,
                            req.password_policy,
                            &req.settings.options,
                        )
                        .then(|| existing_entry(out, serial, input))
                        .flatten()
                    })
                    .collect();
                if let Some(entries) = done {
                    say(&format!("{serial}: every output already verifies; skipped"));
                    record(match record_images(entries) {
                        Ok(()) => Outcome::Skipped,
                        Err(e) => Outcome::Failed(crate::error_chain(&e)),
                    });
                    continue;
                }
            }
            let prepared = (|| -> Result<Prepared, ProvisionError> {
                let password = match &req.password {
                    Some(p) => p.clone(),
                    None => Password::generate()?,
                };
                let mut prepared = Prepared::new(Job {
                    serial: serial.clone(),
                    password,
                });
                let mut tell = |line: &str| say(&format!("{serial}: {line}"));
                for (input, opened) in req.inputs.iter().zip(opened.iter_mut()) {
                    let out = pipeline::output_path(input, &req.output_dir, serial, req.force)?;
                    opened.write(&mut prepared, Some(&out), &mut tell)?;
                }
                Ok(prepared)
            })();
            match prepared {
                Ok(p) => {
                    if send.send(p).is_err() {
                        record(Outcome::Failed("the API workers stopped".into()));
                    }
                }
                Err(e) => {
                    let line = crate::error_chain(&e);
                    say(&format!("{serial}: failed: {line}"));
                    record(Outcome::Failed(line));
                }
            }
        }
        drop(send);
    });

    // Report in the order the serials were given.
    let mut outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
    let order = |s: &str| req.serials.iter().position(|x| x.as_str() == s);
    outcomes.sort_by_key(|(s, _)| order(s));
    // Written even when nothing succeeded, so a run always leaves one.
    write_manifest(&manifest_path, &lock(&manifest))?;
    Ok(BatchReport {
        outcomes,
        manifest_path,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The SHA-256 of a file, computed on another thread.
fn digest_in_background(path: PathBuf) -> std::thread::JoinHandle<std::io::Result<String>> {
    std::thread::spawn(move || {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut std::fs::File::open(&path)?, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    })
}

/// The manifest line of an output a `--skip-existing` run keeps: its digest
/// from its own (just verified) sidecar.
fn existing_entry(out: &Path, serial: &Serial, input: &Path) -> Option<ManifestEntry> {
    let sha256 = output::read_sidecar(out).ok()??;
    Some(ManifestEntry {
        serial: serial.to_string(),
        email: serial.email(),
        output: file_name(out),
        sha256,
        size: std::fs::metadata(out).ok()?.len(),
        input: file_name(input),
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
                        input: e["input"].as_str().or(old["input"].as_str())?.to_string(),
                    };
                    let replaced = merged.images.iter().any(|m| m.serial == entry.serial);
                    let same_input =
                        old["input_sha256"].as_str() == Some(manifest.input_sha256.as_str());
                    (!replaced && same_input && path.with_file_name(&entry.output).is_file())
                        .then_some(entry)
                });
            let kept: Vec<ManifestEntry> = kept.collect();
            merged.images.extend(kept);
        }
    }
    merged
        .images
        .sort_by(|a, b| (&a.serial, &a.output).cmp(&(&b.serial, &b.output)));
    let mut text = serde_json::to_string_pretty(&merged).expect("manifest serializes");
    text.push('\n');
    output::write_atomic(path, text.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_files_with_a_bom_and_comments() {
        let serials = read_serials("\u{feff}AZJN-0001\n# x\n\nAZJN-0002 # y\n", "s.txt").unwrap();
        let names: Vec<&str> = serials.iter().map(Serial::as_str).collect();
        assert_eq!(names, ["AZJN-0001", "AZJN-0002"]);
    }

    #[test]
    fn two_serials_for_one_account_are_refused_naming_both() {
        let serials = read_serials("AZJN-0007\nAZXB-0007\n", "s.txt").unwrap();
        let err = check_unique(&serials).unwrap_err().to_string();
        assert!(
            err.contains("AZJN-0007") && err.contains("AZXB-0007"),
            "{err}"
        );
        assert!(err.contains("azaion-jetson-0007@azaion.com"), "{err}");
        let twice = read_serials("AZJN-0007\nAZJN-0007\n", "s.txt").unwrap();
        assert!(matches!(
            check_unique(&twice),
            Err(BatchError::Duplicate(_))
        ));
    }
}
