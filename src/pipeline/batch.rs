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
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

use thiserror::Error;

use crate::admin::{AdminClient, AdminConfig};
use crate::identity::{IdentityError, Password, PasswordPolicy, Serial};
use crate::image::disk::PartitionId;
use crate::image::{ImageError, ImageOptions};
use crate::io::output;
use crate::io::pin::InputPin;
use crate::owner::OwnerSpec;
pub use crate::pipeline::manifest::{Manifest, ManifestEntry, ManifestError, ManifestInput};
use crate::pipeline::{
    self, previous, Job, Opened, PasswordOrigin, Prepared, ProvisionError, Settings, Source,
};
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
    /// The partitions stamped in each disk image input (each serial's copy
    /// of it has them all); inputs without partitions are not listed.
    pub partitions: Vec<(PathBuf, Vec<PartitionId>)>,
    /// What the caller should be told once for the run (e.g. an owner the
    /// Loader's service user cannot read); never a secret.
    pub warnings: Vec<String>,
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
    prepare_output_dir(&req, say)?;
    let client = req
        .api
        .clone()
        .map(AdminClient::new)
        .transpose()
        .map_err(ProvisionError::from)?
        .map(Arc::new);
    let (mut opened, inputs) = open_inputs(&req, say)?;
    let warnings: Vec<String> = opened
        .iter()
        .flat_map(|o| o.warnings().iter().cloned())
        .collect();
    let partitions: Vec<(PathBuf, Vec<PartitionId>)> = req
        .inputs
        .iter()
        .zip(&opened)
        .filter(|(_, o)| !o.partitions().is_empty())
        .map(|(input, o)| (input.clone(), o.partitions().to_vec()))
        .collect();
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
    let run = Run {
        manifest: Mutex::new(Manifest::new(inputs.clone())),
        req: &req,
        inputs,
        old,
        manifest_path,
        outcomes: Mutex::new(Vec::new()),
        say,
        stopped: Mutex::new(None),
    };
    // Written before any image gets its final name: the manifest then
    // always names the base of the last run that wrote into the directory,
    // which is what an image that run renamed but did not list yet (it was
    // killed in between) was made from.
    run.write_manifest()?;
    let jobs = req.jobs.max(1);
    // Sealed images wait here for an API worker; the bound keeps the number
    // of finished-but-unconfirmed temp files small.
    let (send, receive) = sync_channel::<(Prepared, bool)>(jobs);
    let receive = Mutex::new(receive);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (run, receive, client) = (&run, &receive, client.as_deref());
            scope.spawn(move || run.commit_worker(receive, client));
        }
        for serial in &req.serials {
            run.write_serial(serial, &mut opened, &send);
        }
        drop(send);
    });
    run.finish(warnings, partitions)
}

/// Checks and creates the output directory and clears it of an
/// interrupted run's temp files.
fn prepare_output_dir(req: &BatchRequest, say: &dyn Fn(&str)) -> Result<(), BatchError> {
    if req.output_dir.exists() && !req.output_dir.is_dir() {
        return Err(BatchError::OutputNotDir);
    }
    pipeline::output_dir(&req.output_dir)?;
    let stale =
        output::remove_stale_temps(&req.output_dir).map_err(|source| BatchError::StaleTemps {
            path: req.output_dir.clone(),
            source,
        })?;
    for path in stale {
        say(&format!(
            "removed {} left by an interrupted run",
            path.display()
        ));
    }
    Ok(())
}

/// Opens and scans every base once, and takes their digests for the
/// manifest on other cores meanwhile (without progress: the scans report).
/// Each base is pinned first ([`InputPin`]): the digest reads the pinned
/// descriptor, and the pin is checked after the scan and after the digest,
/// so the manifest's digest is of the very file the scan read.
fn open_inputs(
    req: &BatchRequest,
    say: &dyn Fn(&str),
) -> Result<(Vec<Opened>, Vec<ManifestInput>), BatchError> {
    let pins = req
        .inputs
        .iter()
        .map(|input| pipeline::pin_input(input).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let digests: Vec<_> = pins.iter().cloned().map(digest_in_background).collect();
    let mut opened = Vec::with_capacity(req.inputs.len());
    for (input, pin) in req.inputs.iter().zip(&pins) {
        opened.push(Opened::open_pinned(
            Source::Image(input.clone()),
            Some(Arc::clone(pin)),
            req.settings.clone(),
            &req.output_dir,
            &mut |line| say(line),
        )?);
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for ((input, digest), pin) in req.inputs.iter().zip(digests).zip(&pins) {
        let sha256 = digest
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the hashing thread panicked")))
            .map_err(|source| ImageError::Open {
                path: input.clone(),
                source,
            })?;
        pipeline::check_pin(Some(pin))?;
        inputs.push(ManifestInput {
            name: file_name(input),
            sha256,
        });
    }
    Ok((opened, inputs))
}

/// What the steps of one batch share, across the writing thread and the
/// API workers.
struct Run<'a> {
    req: &'a BatchRequest,
    /// The bases, with their digests.
    inputs: Vec<ManifestInput>,
    /// The manifest an earlier run left, if any could be read.
    old: Option<Manifest>,
    manifest: Mutex<Manifest>,
    manifest_path: PathBuf,
    outcomes: Mutex<Vec<(String, Outcome)>>,
    say: &'a (dyn Fn(&str) + Sync),
    /// Set when a base changed under the batch: every later serial is
    /// failed without being written (its image would mix two bases).
    stopped: Mutex<Option<String>>,
}

/// What a serial's earlier outputs mean for this run.
enum Reuse {
    /// Every output is current: nothing to write.
    Skip(Vec<ManifestEntry>),
    /// Write every output; `ours[i]` outputs may be replaced (they are
    /// this run's earlier work), and `password_from` is the output whose
    /// password to keep.
    Write {
        ours: Vec<bool>,
        password_from: Option<usize>,
    },
}

impl Run<'_> {
    fn write_manifest(&self) -> Result<(), BatchError> {
        Ok(lock(&self.manifest).write(&self.manifest_path, self.old.as_ref())?)
    }

    /// Lists images in the manifest at once, which is rewritten atomically
    /// each time: after a crash it lists exactly what exists.
    fn record_images(&self, entries: Vec<ManifestEntry>) -> Result<(), BatchError> {
        let mut manifest = lock(&self.manifest);
        manifest.images.extend(entries);
        Ok(manifest.write(&self.manifest_path, self.old.as_ref())?)
    }

    fn record(&self, serial: &str, outcome: Outcome) {
        lock(&self.outcomes).push((serial.to_string(), outcome));
    }

    /// An API worker: commits sealed images as they come, one account
    /// call each, and lists what it committed.
    fn commit_worker(
        &self,
        receive: &Mutex<Receiver<(Prepared, bool)>>,
        client: Option<&AdminClient>,
    ) {
        loop {
            let next = lock(receive).recv();
            let Ok((prepared, kept_password)) = next else {
                break;
            };
            let serial = prepared.serial().to_string();
            let mut tell = |line: &str| (self.say)(&format!("{serial}: {line}"));
            let outcome = match prepared.commit(client, &mut tell) {
                Ok(report) => {
                    let entries = report
                        .outputs
                        .into_iter()
                        .zip(&self.inputs)
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
                    match self.record_images(entries) {
                        Ok(()) if kept_password => Outcome::Rebuilt,
                        Ok(()) => Outcome::Written,
                        Err(e) => Outcome::Failed(crate::error_chain(&e)),
                    }
                }
                Err(e) => Outcome::Failed(crate::error_chain(&e)),
            };
            self.record(&serial, outcome);
        }
    }

    /// One serial on the writing thread: skipped, or written and handed to
    /// an API worker.
    fn write_serial(
        &self,
        serial: &Serial,
        opened: &mut [Opened],
        send: &SyncSender<(Prepared, bool)>,
    ) {
        if let Some(why) = lock(&self.stopped).clone() {
            self.record(serial.as_str(), Outcome::Failed(why));
            return;
        }
        let req = self.req;
        let out_paths: Vec<PathBuf> = req
            .inputs
            .iter()
            .map(|input| {
                req.output_dir
                    .join(format!("{serial}-{}", file_name(input)))
            })
            .collect();
        let (ours, password_from) = match self.reuse(serial, &out_paths) {
            Reuse::Skip(entries) => {
                (self.say)(&format!(
                    "{serial}: every output already verifies and was made from this base; skipped"
                ));
                self.record(
                    serial.as_str(),
                    match self.record_images(entries) {
                        Ok(()) => Outcome::Skipped,
                        Err(e) => Outcome::Failed(crate::error_chain(&e)),
                    },
                );
                return;
            }
            Reuse::Write {
                ours,
                password_from,
            } => (ours, password_from),
        };
        let kept = match (&req.password, password_from) {
            (None, Some(i)) if !req.rotate => {
                previous::password_of(&out_paths[i], serial, &req.settings.options)
            }
            _ => None,
        };
        match self.prepare(serial, kept, &ours, opened) {
            Ok(p) => {
                if send.send(p).is_err() {
                    self.record(
                        serial.as_str(),
                        Outcome::Failed("the API workers stopped".into()),
                    );
                }
            }
            Err(e) => {
                let line = crate::error_chain(&e);
                (self.say)(&format!("{serial}: failed: {line}"));
                if let ProvisionError::InputChanged { path, .. } = &e {
                    // Images already handed on were checked against the
                    // base after they were written: they stand.
                    let why = format!(
                        "not written: the batch stopped when {} changed",
                        path.display()
                    );
                    (self.say)(&format!("stopping: {why}"));
                    *lock(&self.stopped) = Some(why);
                }
                self.record(serial.as_str(), Outcome::Failed(line));
            }
        }
    }

    /// With `--skip-existing`, outputs that verify are this run's to
    /// replace (they are rebuilt from the current base), and the password
    /// they carry is kept unless `--rotate`. With `--no-rotate` alone, an
    /// output that verifies (replaced only with `--force`) lends its
    /// password all the same.
    fn reuse(&self, serial: &Serial, out_paths: &[PathBuf]) -> Reuse {
        let req = self.req;
        let mut ours = vec![false; out_paths.len()];
        if !req.skip_existing {
            let settings = &req.settings;
            let password_from = settings
                .no_rotate
                .then(|| {
                    out_paths.iter().position(|out| {
                        verifies(
                            out,
                            serial,
                            &settings.owner,
                            req.password_policy,
                            &settings.options,
                        )
                    })
                })
                .flatten();
            return Reuse::Write {
                ours,
                password_from,
            };
        }
        let found: Vec<Existing> = out_paths
            .iter()
            .zip(&self.inputs)
            .map(|(out, input)| Existing::find(out, serial, input, self.old.as_ref(), req))
            .collect();
        if found.iter().all(|f| matches!(f, Existing::Current(_))) {
            return Reuse::Skip(
                found
                    .into_iter()
                    .filter_map(|f| match f {
                        Existing::Current(e) => Some(e),
                        _ => None,
                    })
                    .collect(),
            );
        }
        let mut password_from = None;
        for (i, f) in found.iter().enumerate() {
            if matches!(f, Existing::Current(_) | Existing::Stale) {
                ours[i] = true;
                password_from = password_from.or(Some(i));
            }
        }
        if password_from.is_some() {
            (self.say)(&format!(
                "{serial}: not every output was made from this base; rebuilding them{}",
                if req.rotate {
                    " with a new password (--rotate)"
                } else {
                    ", keeping the password they carry"
                }
            ));
        }
        Reuse::Write {
            ours,
            password_from,
        }
    }

    /// Writes every output of one device into temp files, with the
    /// password `kept` from an earlier output, the run's own, or a new one.
    /// Returns it sealed-to-be, and whether its password was kept.
    fn prepare(
        &self,
        serial: &Serial,
        kept: Option<Password>,
        ours: &[bool],
        opened: &mut [Opened],
    ) -> Result<(Prepared, bool), ProvisionError> {
        let req = self.req;
        let kept_password = kept.is_some();
        let (password, origin) = match (&req.password, kept) {
            (Some(p), _) => (p.clone(), PasswordOrigin::Given),
            (None, Some(p)) => (p, PasswordOrigin::Carried),
            (None, None) => (Password::generate()?, PasswordOrigin::New),
        };
        let mut prepared = Prepared::new(Job {
            serial: serial.clone(),
            password,
            on_conflict: req.settings.on_conflict(origin),
        });
        let mut tell = |line: &str| (self.say)(&format!("{serial}: {line}"));
        for ((input, opened), ours) in req.inputs.iter().zip(opened.iter_mut()).zip(ours) {
            let replace = req.force || *ours;
            let out = pipeline::output_path(input, &req.output_dir, serial, replace)?;
            opened.write(&mut prepared, Some(&out), &mut tell)?;
        }
        Ok((prepared, kept_password))
    }

    /// The report, in the order the serials were given; the manifest is
    /// written even when nothing succeeded, so a run always leaves one.
    fn finish(
        self,
        warnings: Vec<String>,
        partitions: Vec<(PathBuf, Vec<PartitionId>)>,
    ) -> Result<BatchReport, BatchError> {
        let mut outcomes = self
            .outcomes
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let order = |s: &str| self.req.serials.iter().position(|x| x.as_str() == s);
        outcomes.sort_by_key(|(s, _)| order(s));
        lock(&self.manifest).write(&self.manifest_path, self.old.as_ref())?;
        Ok(BatchReport {
            outcomes,
            manifest_path: self.manifest_path,
            partitions,
            warnings,
        })
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The SHA-256 of a pinned input, computed on another thread.
fn digest_in_background(pin: Arc<InputPin>) -> std::thread::JoinHandle<std::io::Result<String>> {
    std::thread::spawn(move || pin.sha256())
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
