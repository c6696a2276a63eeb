//! Many devices from one base image: the image is opened and scanned once,
//! images are written one after another, and the API calls run on a few
//! worker threads while the next image is being written.
//!
//! A failing serial does not stop the others. Every finished image is
//! listed in `manifest.json` beside them (no password, ever). With
//! `--skip-existing`, an output is kept only if it verifies and the
//! manifest says it was made from this very base; one made from an older
//! base is rebuilt with the password it carries (or a new one, `--rotate`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

use thiserror::Error;

use crate::admin::{AdminClient, AdminConfig};
use crate::identity::{self, IdentityError, Password, PasswordPolicy, Serial};
use crate::image::{self, ImageError, ImageOptions};
use crate::io::output;
use crate::owner::OwnerSpec;
pub use crate::pipeline::manifest::{Manifest, ManifestEntry, ManifestError, ManifestInput};
use crate::pipeline::{self, Job, Opened, Prepared, ProvisionError, Settings, Source};
use crate::plan::ImagePath;
use crate::verify::{self, Expectations};

#[derive(Debug, Error)]
pub enum BatchError {
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
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot clear {path} of an interrupted run's temp files")]
    StaleTemps {
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
    /// With `skip_existing`: outputs rebuilt from a changed base get new
    /// passwords instead of keeping the ones they carry.
    pub rotate: bool,
    /// The form a skipped output's password must have to count as done.
    pub password_policy: PasswordPolicy,
    /// API calls in flight at once (and images waiting for them).
    pub jobs: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// Rebuilt from a changed base with the password its old image had.
    Rebuilt,
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

/// True when `path` verifies for `serial` (checksum included).
fn verifies(
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

/// What a `--skip-existing` run finds at an output's path.
enum Existing {
    /// Nothing there: written as usual.
    Missing,
    /// Verifies, and the manifest says it was made from this very input:
    /// kept as it is.
    Current(ManifestEntry),
    /// Verifies, but was made from another input, or no manifest says from
    /// which: rebuilt from this input, with the password it carries (the
    /// device may already be flashed with it) unless `--rotate`.
    Stale,
    /// Does not verify: replaced only with `--force`.
    Broken,
}

impl Existing {
    fn find(
        out: &Path,
        serial: &Serial,
        input: &ManifestInput,
        old: Option<&Manifest>,
        req: &BatchRequest,
    ) -> Existing {
        if out.symlink_metadata().is_err() {
            return Existing::Missing;
        }
        let settings = &req.settings;
        if !verifies(
            out,
            serial,
            &settings.owner,
            req.password_policy,
            &settings.options,
        ) {
            return Existing::Broken;
        }
        let (Ok(Some(sha256)), Ok(meta)) = (output::read_sidecar(out), std::fs::metadata(out))
        else {
            return Existing::Broken;
        };
        let current = match old.and_then(|m| m.entry(&file_name(out))) {
            Some(e) => {
                e.serial == serial.as_str() && e.input_sha256 == input.sha256 && e.sha256 == sha256
            }
            // Not listed: renamed by a run killed before it listed it,
            // taken to be the last run that wrote here (runs write the
            // manifest before any image), so made from the manifest's base.
            // Not proven: if a run for other serials and another base came
            // in between, such an image is taken as current. Listed images
            // always carry their own base.
            None => old.is_some_and(|m| m.inputs.iter().any(|i| i.sha256 == input.sha256)),
        };
        if !current {
            return Existing::Stale;
        }
        Existing::Current(ManifestEntry {
            serial: serial.to_string(),
            email: serial.email(),
            output: file_name(out),
            sha256,
            size: meta.len(),
            input: input.name.clone(),
            input_sha256: input.sha256.clone(),
        })
    }
}

/// The password in the device.conf of a built image (one that verified).
fn read_password(path: &Path, options: &ImageOptions) -> Option<Password> {
    let mut reader = image::open_reader(path, options).ok()?;
    let conf = ImagePath::parse(pipeline::DEVICE_CONF)?;
    let (_, content) = reader.lookup(&conf, 64 << 10).ok()??;
    // The file holds the password: wiped once parsed.
    let content = zeroize::Zeroizing::new(content?);
    identity::parse_device_conf(&content).password
}

/// The serial that `output_dir`'s manifest already gives `serial`'s account
/// to, if it is another one (two serials, one account: the earlier image's
/// password would go stale).
pub fn account_taken_by(output_dir: &Path, serial: &Serial) -> Option<String> {
    let manifest = Manifest::load(&output_dir.join("manifest.json")).ok()??;
    let email = serial.email();
    manifest
        .images
        .into_iter()
        .find(|e| e.email == email && e.serial != serial.as_str())
        .map(|e| e.serial)
}

pub fn run(req: BatchRequest, say: &(dyn Fn(&str) + Sync)) -> Result<BatchReport, BatchError> {
    check_unique(&req.serials)?;
    if req.output_dir.exists() && !req.output_dir.is_dir() {
        return Err(BatchError::OutputNotDir);
    }
    pipeline::output_dir(&req.output_dir)?;
    for stale in
        output::remove_stale_temps(&req.output_dir).map_err(|source| BatchError::StaleTemps {
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
    // What an earlier run left: which base each existing output came from.
    // An unreadable one only costs rebuilds (its outputs count as stale).
    let old = Manifest::load(&manifest_path).unwrap_or_else(|e| {
        say(&format!(
            "{}; its images count as stale",
            crate::error_chain(&e)
        ));
        None
    });
    let manifest = Mutex::new(Manifest::new(inputs.clone()));
    // Written before any image gets its final name: the manifest then
    // always names the base of the last run that wrote into the directory,
    // which is what an image that run renamed but did not list yet (it was
    // killed in between) was made from.
    lock(&manifest).write(&manifest_path, old.as_ref())?;
    // Recorded images go into the manifest at once, which is rewritten
    // atomically each time: after a crash it lists exactly what exists.
    let record_images = |entries: Vec<ManifestEntry>| -> Result<(), BatchError> {
        let mut manifest = lock(&manifest);
        manifest.images.extend(entries);
        Ok(manifest.write(&manifest_path, old.as_ref())?)
    };

    let outcomes = Mutex::new(Vec::new());
    let jobs = req.jobs.max(1);
    // Sealed images wait here for an API worker; the bound keeps the number
    // of finished-but-unconfirmed temp files small.
    let (send, receive) = sync_channel::<(Prepared, bool)>(jobs);
    let receive = Mutex::new(receive);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (receive, client, outcomes, record_images, inputs) =
                (&receive, &client, &outcomes, &record_images, &inputs);
            scope.spawn(move || loop {
                let next = lock(receive).recv();
                let Ok((prepared, kept_password)) = next else {
                    break;
                };
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
                                    input: input.name.clone(),
                                    input_sha256: input.sha256.clone(),
                                })
                            })
                            .collect();
                        match record_images(entries) {
                            Ok(()) if kept_password => Outcome::Rebuilt,
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
            // With --skip-existing, outputs that verify are this run's to
            // replace (they are rebuilt from the current base), and the
            // password they carry is kept unless --rotate.
            let mut ours = vec![false; out_paths.len()];
            let mut keep_from = None;
            if req.skip_existing {
                let found: Vec<Existing> = out_paths
                    .iter()
                    .zip(&inputs)
                    .map(|(out, input)| Existing::find(out, serial, input, old.as_ref(), &req))
                    .collect();
                if found.iter().all(|f| matches!(f, Existing::Current(_))) {
                    let entries = found
                        .into_iter()
                        .filter_map(|f| match f {
                            Existing::Current(e) => Some(e),
                            _ => None,
                        })
                        .collect();
                    say(&format!(
                        "{serial}: every output already verifies and was made from this base; skipped"
                    ));
                    record(match record_images(entries) {
                        Ok(()) => Outcome::Skipped,
                        Err(e) => Outcome::Failed(crate::error_chain(&e)),
                    });
                    continue;
                }
                for (i, f) in found.iter().enumerate() {
                    if matches!(f, Existing::Current(_) | Existing::Stale) {
                        ours[i] = true;
                        keep_from = keep_from.or(Some(i));
                    }
                }
                if keep_from.is_some() {
                    say(&format!(
                        "{serial}: not every output was made from this base; rebuilding them{}",
                        if req.rotate {
                            " with a new password (--rotate)"
                        } else {
                            ", keeping the password they carry"
                        }
                    ));
                }
            }
            let prepared = (|| -> Result<(Prepared, bool), ProvisionError> {
                let kept = match (&req.password, keep_from) {
                    (None, Some(i)) if !req.rotate => {
                        read_password(&out_paths[i], &req.settings.options)
                    }
                    _ => None,
                };
                let kept_password = kept.is_some();
                let password = match (&req.password, kept) {
                    (Some(p), _) => p.clone(),
                    (None, Some(p)) => p,
                    (None, None) => Password::generate()?,
                };
                let mut prepared = Prepared::new(Job {
                    serial: serial.clone(),
                    password,
                });
                let mut tell = |line: &str| say(&format!("{serial}: {line}"));
                for ((input, opened), ours) in req.inputs.iter().zip(opened.iter_mut()).zip(&ours) {
                    let replace = req.force || *ours;
                    let out = pipeline::output_path(input, &req.output_dir, serial, replace)?;
                    opened.write(&mut prepared, Some(&out), &mut tell)?;
                }
                Ok((prepared, kept_password))
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
    lock(&manifest).write(&manifest_path, old.as_ref())?;
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
