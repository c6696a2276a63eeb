//! One provisioning pipeline for single runs, batches and staging trees.
//!
//! ```text
//! Opened::open(source, settings)   read the input once: its kind, its users,
//!                                  and where a change would go
//! opened.write(job, output)        plan the device's files and write them:
//!                                  a sealed temp image, or staged temp files
//! prepared.commit(client)          the account call, then final names and
//!                                  checksums
//! ```
//!
//! The order is the point. The admin API is called only after the image was
//! written, so a failed write never changes the server; the image gets its
//! final name only after the API accepted the password, so no image ever
//! carries a password the server does not have.

pub(crate) mod batch;
pub(crate) mod dry_run;
pub(crate) mod manifest;
mod output_dir;
mod previous;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::admin::{AdminClient, AdminConfig, AdminError, OnConflict, Provisioned};
use crate::identity::{IdentityError, Password, Serial};
use crate::image::dir::{DirError, Staged, StagingDir};
use crate::image::disk::PartitionId;
use crate::image::{self, ImageBackend, ImageError, ImageFacts, ImageKind, ImageOptions};
pub use crate::io::output::Emitted;
use crate::io::output::{self, TempOutput};
use crate::io::pin::InputPin;
use crate::owner::{Owner, OwnerSpec, UserDb};
use crate::plan::{DeviceVars, ExtraVars, ImagePath, OverlayError, OverlaySpec, Plan};
#[cfg(feature = "cli")]
pub(crate) use output_dir::as_directory;
use output_dir::scratch_dir;
pub use output_dir::UnsafeDir;
pub(crate) use output_dir::{output_dir, output_path};

/// The file the default overlay writes; its owner is what reports show.
pub(crate) const DEVICE_CONF: &str = "/etc/azaion/device.conf";

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProvisionError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Plan(#[from] OverlayError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("the output {0} is the input image; choose another output path")]
    OutputIsInput(PathBuf),
    #[error("the output {0} already exists; pass --force to replace it")]
    OutputExists(PathBuf),
    #[error("an image input needs an output path")]
    NoOutput,
    #[error("two inputs would both be written to {0}; give them different file names")]
    SameOutput(PathBuf),
    #[error("the output directory {0} does not exist")]
    NoOutputDir(PathBuf),
    #[error("cannot create the output directory {dir}")]
    CreateOutputDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the output directory {dir} is not safe: {why}. Another user could replace the image there; choose a directory of your own")]
    UnsafeOutputDir { dir: PathBuf, why: UnsafeDir },
    #[error("cannot create the output file in {dir}")]
    CreateOutput {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    WriteOutput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} changed while imprint was using it ({what}); nothing made from it after the change was kept or provisioned. Let whatever replaces it finish, then run again")]
    InputChanged { path: PathBuf, what: String },
    #[error("cannot finish the output {path}")]
    Commit {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<DirError> for ProvisionError {
    fn from(e: DirError) -> Self {
        ProvisionError::Image(e.into())
    }
}

/// What is read: an image file (copied with changes into a new file), or a
/// staging tree (changed in place, the runbook's flow).
#[derive(Debug, Clone)]
pub enum Source {
    Image(PathBuf),
    StagingDir(PathBuf),
}

/// What every device of a run gets: the same for one device or a batch.
#[derive(Debug, Clone)]
pub struct Settings {
    pub overlay: OverlaySpec,
    /// The owner `{owner}` entries get (device.conf by default).
    pub owner: OwnerSpec,
    /// The time new entries get (SOURCE_DATE_EPOCH); `None` takes a time
    /// from the image itself, so the same inputs give the same bytes.
    pub mtime: Option<i64>,
    pub options: ImageOptions,
    /// Also write `NAME.sha1sum`, as NVIDIA's kernel-flash tools check.
    pub sha1sum: bool,
    /// Each device's own template variables (`--devices`), by serial.
    pub devices: std::sync::Arc<std::collections::BTreeMap<String, ExtraVars>>,
    /// Create or reuse, never rotate (`--no-rotate`): a device whose
    /// password is new (none given, none carried by an earlier output)
    /// fails if its account exists, instead of getting that password.
    pub no_rotate: bool,
    /// `owner` is the default (no `--owner` given): an image with the
    /// Loader's service user then gets a warning, as that user cannot read
    /// a root-owned 0600 device.conf.
    pub default_owner: bool,
}

impl Settings {
    /// The variables of `serial` beyond the built-in ones.
    pub fn vars_of(&self, serial: &Serial) -> ExtraVars {
        self.devices
            .get(serial.as_str())
            .cloned()
            .unwrap_or_default()
    }
}

impl Settings {
    /// The default overlay, owned by `owner`, with every option off.
    pub fn new(owner: OwnerSpec) -> Settings {
        Settings {
            overlay: OverlaySpec::default_spec(),
            owner,
            mtime: None,
            options: ImageOptions::default(),
            sha1sum: false,
            devices: Default::default(),
            no_rotate: false,
            default_owner: false,
        }
    }

    /// What a device's account call does on 409 (the account exists): set
    /// the password, as the runbook does; with `no_rotate`, keep the
    /// account's password when the device's earlier output carries it,
    /// set one the caller gave, and refuse a new one.
    pub fn on_conflict(&self, origin: PasswordOrigin) -> OnConflict {
        match (self.no_rotate, origin) {
            (false, _) | (true, PasswordOrigin::Given) => OnConflict::SetPassword,
            (true, PasswordOrigin::Carried) => OnConflict::Keep,
            (true, PasswordOrigin::New) => OnConflict::Refuse,
        }
    }
}

/// Where a device's password came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordOrigin {
    /// Generated by this run.
    New,
    /// Given by the caller (`--password-file`).
    Given,
    /// Read from an earlier output of the device.
    Carried,
}

/// One device: who it is, its password, and what to do if its account
/// exists already.
pub(crate) struct Job {
    pub serial: Serial,
    pub password: Password,
    pub on_conflict: OnConflict,
}

/// What an opened input is written into: an image's format backend, or
/// a staging tree.
enum Target {
    Image(Box<dyn ImageBackend>),
    Staging(StagingDir),
}

/// An input opened and scanned once, ready to be written for any number of
/// devices.
pub(crate) struct Opened {
    /// The input image held open since before anything read it, checked
    /// after the scan and around each output's write (`None`: a staging
    /// tree, read through its own handles).
    pin: Option<Arc<InputPin>>,
    /// What every device written from this input should hear of.
    warnings: Vec<String>,
    kind: InputKind,
    target: Target,
    /// One per filesystem written into: several for the partitions of a
    /// disk image stamped together.
    facts: Vec<ImageFacts>,
    /// The partitions of a disk image written into, one per `facts`.
    partitions: Vec<PartitionId>,
    settings: Settings,
}

impl Opened {
    /// Opens `source` read-only and reads what planning needs. `scratch_dir`
    /// is where large scratch files may go (the output's directory).
    pub fn open(
        source: Source,
        settings: Settings,
        scratch_dir: &Path,
        say: &mut dyn FnMut(&str),
    ) -> Result<Opened, ProvisionError> {
        let pin = match &source {
            Source::Image(input) => Some(Arc::new(pin_input(input)?)),
            Source::StagingDir(_) => None,
        };
        Opened::open_pinned(source, pin, settings, scratch_dir, say)
    }

    /// [`Opened::open`] with the image input already pinned (`pin` is
    /// `Some` exactly for [`Source::Image`]): a batch pins its bases first
    /// and digests them through the pin while they are scanned.
    pub fn open_pinned(
        source: Source,
        pin: Option<Arc<InputPin>>,
        settings: Settings,
        scratch_dir: &Path,
        say: &mut dyn FnMut(&str),
    ) -> Result<Opened, ProvisionError> {
        let (kind, mut target) = match &source {
            Source::Image(input) => {
                let kind = image::detect(input)?;
                say(&format!("{}: {}", input.display(), kind.describe()));
                let targets = settings.overlay.targets();
                let backend =
                    image::open_backend(input, kind, &targets, scratch_dir, &settings.options)?;
                (InputKind::Image(kind), Target::Image(backend))
            }
            Source::StagingDir(root) => (
                InputKind::StagingDir,
                Target::Staging(StagingDir::open(root)?),
            ),
        };
        let (facts, partitions) = match &mut target {
            Target::Image(backend) => (backend.facts()?, backend.partitions()),
            Target::Staging(dir) => (vec![dir.facts()?], Vec::new()),
        };
        // The scan (or the scan cache's lookup) read the pinned file.
        check_pin(pin.as_deref())?;
        if !partitions.is_empty() {
            say(&format!("stamping {}", PartitionId::list(&partitions)));
        }
        // Each filesystem has its own users (the slots of a disk): warned
        // once for a message that is the same in each.
        let mut warnings: Vec<String> = facts
            .iter()
            .filter_map(|f| owner_warning(&source, f, &settings))
            .collect();
        warnings.dedup();
        warnings.extend(settings.overlay.exposed_secrets());
        Ok(Opened {
            pin,
            warnings,
            kind,
            target,
            facts,
            partitions,
            settings,
        })
    }

    /// What every device written from this input should hear of (each
    /// also goes into its [`Report::warnings`]).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The partitions of a disk image each output is written into (empty
    /// for other inputs).
    pub fn partitions(&self) -> &[PartitionId] {
        &self.partitions
    }

    /// Plans the device's files against this input and writes them into
    /// `prepared`: for an image, a new image in a temp file beside `output`
    /// (its final name); for a staging tree, temp files in the tree
    /// (`output` is not used). Nothing gets a final name before
    /// [`Prepared::commit`]; several inputs written for one device share
    /// its password and its one account call.
    pub fn write(
        &mut self,
        prepared: &mut Prepared,
        output: Option<&Path>,
        say: &mut dyn FnMut(&str),
    ) -> Result<(), ProvisionError> {
        let plans = self
            .facts
            .iter()
            .map(|facts| self.plan(facts, &prepared.job, &prepared.email))
            .collect::<Result<Vec<_>, _>>()?;
        let pending = match &mut self.target {
            Target::Image(backend) => {
                let output = output.ok_or(ProvisionError::NoOutput)?;
                check_pin(self.pin.as_deref())?;
                let dir = output.parent().unwrap_or(Path::new(".")).to_path_buf();
                let mut temp = TempOutput::create(output)
                    .map_err(|source| ProvisionError::CreateOutput { dir, source })?;
                say(&format!("writing {}", output.display()));
                // A full disk or a file-size limit names the output.
                backend.apply(&plans, &mut temp).map_err(|e| match e {
                    ImageError::Output(source) => ProvisionError::WriteOutput {
                        path: output.to_path_buf(),
                        source,
                    },
                    other => other.into(),
                })?;
                // Every byte this output took from the input came from the
                // file scanned, as it was: else the temp file is dropped
                // (removed) here, before any account call, final name,
                // sidecar or manifest line.
                check_pin(self.pin.as_deref())?;
                Pending::Image(Box::new(temp))
            }
            Target::Staging(dir) => Pending::Staged(dir.stage(crate::image::single(&plans))?),
        };
        for w in &self.warnings {
            if !prepared.warnings.contains(w) {
                prepared.warnings.push(w.clone());
            }
        }
        prepared.pending.push(PendingOutput {
            kind: self.kind,
            owner: device_conf_owner(&plans[0]),
            partitions: self
                .partitions
                .iter()
                .zip(&plans)
                .map(|(id, plan)| StampedPartition {
                    partition: id.clone(),
                    owner: device_conf_owner(plan),
                })
                .collect(),
            pending,
            sha1sum: self.settings.sha1sum,
        });
        Ok(())
    }

    /// The device's plan for one filesystem, against its own users.
    fn plan(&self, facts: &ImageFacts, job: &Job, email: &str) -> Result<Plan, ProvisionError> {
        let db = UserDb::parse(facts.passwd.as_deref(), facts.group.as_deref())
            .with_found(facts.passwd_found.clone(), facts.group_found.clone());
        let vars = DeviceVars {
            serial: job.serial.as_str(),
            email,
            password: &job.password,
        };
        let mtime = self.settings.mtime.unwrap_or(facts.reference_mtime);
        Ok(Plan::resolve_for(
            &self.settings.overlay,
            &vars,
            &self.settings.vars_of(&job.serial),
            &db,
            &self.settings.owner,
            mtime,
        )?)
    }
}

/// The Loader's service user, as the provisioning runbook names it.
const SERVICE_USER: &str = "azaion";

/// The owner rule: device.conf belongs to whoever `--owner` names, and a
/// run that did not name one (root:root) over an image that has the
/// Loader's service user is warned: that user cannot read a root-owned
/// 0600 file. Root stays the default because the image may have no such
/// user, and a guessed owner would differ from what `verify` expects.
fn owner_warning(source: &Source, facts: &ImageFacts, settings: &Settings) -> Option<String> {
    if !settings.default_owner {
        return None;
    }
    let db = UserDb::parse(facts.passwd.as_deref(), facts.group.as_deref());
    let service = db.resolve(&OwnerSpec::User(SERVICE_USER.into())).ok()?;
    let owner = db.resolve(&settings.owner).ok()?;
    if owner.uid == service.uid {
        return None;
    }
    let input = match source {
        Source::Image(p) | Source::StagingDir(p) => p.display(),
    };
    Some(format!(
        "{input}: device.conf gets owner {}:{} and mode 0600, but the image has the user {SERVICE_USER} (uid {}), which then cannot read it; pass --owner {SERVICE_USER} for the Loader's service user, or --owner {} to keep this owner and silence this warning",
        owner.uid, owner.gid, service.uid, settings.owner
    ))
}

/// The owner the plan gives device.conf, looked up by path (an extra
/// overlay may add other files before or after it).
fn device_conf_owner(plan: &Plan) -> Owner {
    let conf = ImagePath::parse(DEVICE_CONF).expect("a valid constant");
    plan.entries
        .iter()
        .find(|e| e.path == conf)
        .map(|e| e.owner.clone())
        .unwrap_or_else(Owner::root)
}

/// What waits for the account call: a sealed temp image, or staged files.
enum Pending {
    Image(Box<TempOutput>),
    Staged(Staged),
}

struct PendingOutput {
    kind: InputKind,
    owner: Owner,
    partitions: Vec<StampedPartition>,
    pending: Pending,
    sha1sum: bool,
}

/// A device's files, written but not yet under their final names. Dropped
/// without [`Prepared::commit`], its temp files are removed.
pub(crate) struct Prepared {
    job: Job,
    email: String,
    pending: Vec<PendingOutput>,
    warnings: Vec<String>,
}

impl Prepared {
    /// A device with nothing written yet; [`Opened::write`] adds outputs.
    pub fn new(job: Job) -> Prepared {
        let email = job.serial.email();
        Prepared {
            job,
            email,
            pending: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn serial(&self) -> &Serial {
        &self.job.serial
    }

    /// Makes every image durable (fsync, digest), provisions the account
    /// once (unless `client` is `None`: offline), then gives the files
    /// their final names and the images their checksums. If sealing or the
    /// API fails, nothing was renamed and the temp files are removed. A
    /// batch runs this on worker threads, so one device's fsync and API
    /// call overlap the writing of the next.
    pub fn commit(
        mut self,
        client: Option<&AdminClient>,
        say: &mut dyn FnMut(&str),
    ) -> Result<Report, ProvisionError> {
        for out in &mut self.pending {
            if let Pending::Image(temp) = &mut out.pending {
                let path = temp.final_path().to_path_buf();
                temp.seal()
                    .map_err(|source| ProvisionError::Commit { path, source })?;
            }
        }
        let account = provision_account(client, &self.email, &self.job, say)?;
        let mut outputs = Vec::with_capacity(self.pending.len());
        for out in self.pending {
            let mut report = OutputReport {
                kind: out.kind,
                owner: out.owner,
                partitions: out.partitions,
                emitted: None,
                staged: Vec::new(),
                sha1sum: None,
            };
            match out.pending {
                Pending::Image(temp) => {
                    let path = temp.final_path().to_path_buf();
                    let commit_err = |source| ProvisionError::Commit {
                        path: path.clone(),
                        source,
                    };
                    let emitted = temp.commit().map_err(commit_err)?;
                    if out.sha1sum {
                        report.sha1sum =
                            Some(output::write_sha1sum(&emitted.path).map_err(commit_err)?);
                    }
                    report.emitted = Some(emitted);
                }
                Pending::Staged(staged) => report.staged = staged.commit()?,
            }
            outputs.push(report);
        }
        Ok(Report {
            serial: self.job.serial.to_string(),
            email: self.email,
            outputs,
            account,
            warnings: self.warnings,
        })
    }
}

/// What a run did for one device. Carries no secret.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    pub serial: String,
    pub email: String,
    /// One per input, in the order written.
    pub outputs: Vec<OutputReport>,
    /// `None` when offline.
    pub account: Option<Provisioned>,
    /// What the caller should be told (e.g. an owner the Loader's service
    /// user cannot read); never a secret.
    pub warnings: Vec<String>,
}

/// What an input was. Its text (`Display`) is what reports and `--json`
/// (`input_kind`) say, e.g. "tar archive (gzip)" or "staging directory".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputKind {
    /// An image file, of this kind.
    Image(ImageKind),
    /// A staging directory, written in place.
    StagingDir,
}

impl std::fmt::Display for InputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputKind::Image(kind) => f.write_str(&kind.describe()),
            InputKind::StagingDir => f.write_str("staging directory"),
        }
    }
}

/// What was written for one input.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OutputReport {
    /// What the input was.
    pub kind: InputKind,
    /// device.conf's owner (in the first partition written into).
    pub owner: Owner,
    /// The partitions of a disk image written into, in table order, each
    /// with device.conf's owner there (looked up in its own /etc/passwd);
    /// empty for other inputs.
    pub partitions: Vec<StampedPartition>,
    /// The image written, with its digest; `None` for a staging directory.
    pub emitted: Option<Emitted>,
    /// Files written into a staging directory.
    pub staged: Vec<PathBuf>,
    /// The `NAME.sha1sum` written, if asked for.
    pub sha1sum: Option<PathBuf>,
}

/// A partition of a disk image that got the device's credentials.
#[derive(Debug, Clone)]
pub struct StampedPartition {
    pub partition: PartitionId,
    /// device.conf's owner in this partition.
    pub owner: Owner,
}

/// One device end to end, as `imprint provision --serial` runs it.
pub struct Request {
    pub serial: Serial,
    /// What to write, each with its image's final name (`None` for a
    /// staging directory). Every input gets the same credentials.
    pub inputs: Vec<(Source, Option<PathBuf>)>,
    /// A caller-supplied password; `None` generates one.
    pub password: Option<Password>,
    pub settings: Settings,
    /// `None` is offline: no API call (the caller supplies the password).
    pub api: Option<AdminConfig>,
}

/// Provisions one device. `say` receives progress lines (never secrets).
///
/// Offline, with the caller's password, into a new tarball (`input` is a
/// rootfs tar with an `azaion` user):
///
/// ```
/// use imprint::{InputKind, Password, Request, Serial, Settings, Source};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let input = dir.path().join("rootfs.tar");
/// # {
/// #     let mut tar = tar::Builder::new(std::fs::File::create(&input)?);
/// #     for (path, body) in [
/// #         ("etc/passwd", &b"root:x:0:0::/root:/bin/sh\nazaion:x:1001:1001::/:/bin/sh\n"[..]),
/// #         ("etc/group", &b"root:x:0:\nazaion:x:1001:\n"[..]),
/// #     ] {
/// #         let mut h = tar::Header::new_ustar();
/// #         h.set_size(body.len() as u64);
/// #         h.set_mode(0o644);
/// #         tar.append_data(&mut h, path, body)?;
/// #     }
/// #     tar.finish()?;
/// # }
/// let output = dir.path().join("AZJN-0042-rootfs.tar");
/// let report = imprint::run(
///     Request {
///         serial: Serial::parse("AZJN-0042")?,
///         inputs: vec![(Source::Image(input), Some(output.clone()))],
///         password: Some(Password::from_plain("0123456789abcdef0123456789abcdef")),
///         settings: Settings::new("azaion".parse()?),
///         api: None, // Some(AdminConfig) creates the account first
///     },
///     &mut |line| eprintln!("{line}"),
/// )?;
/// assert_eq!(report.email, "azaion-jetson-0042@azaion.com");
/// let written = &report.outputs[0];
/// assert!(matches!(written.kind, InputKind::Image(_)));
/// assert_eq!(written.kind.to_string(), "tar archive (uncompressed)");
/// assert_eq!(written.emitted.as_ref().unwrap().path, output);
/// # Ok(())
/// # }
/// ```
pub fn run(req: Request, say: &mut dyn FnMut(&str)) -> Result<Report, ProvisionError> {
    // Build the client first: a bad URL or certificate fails before any
    // work is done.
    let client = req.api.map(AdminClient::new).transpose()?;
    let (password, origin) = match req.password {
        Some(p) => (p, PasswordOrigin::Given),
        None => match reused_password(&req.inputs, &req.serial, &req.settings, say) {
            Some(p) => (p, PasswordOrigin::Carried),
            None => (Password::generate()?, PasswordOrigin::New),
        },
    };
    let outputs: Vec<&PathBuf> = req.inputs.iter().filter_map(|(_, o)| o.as_ref()).collect();
    if let Some(twice) = outputs
        .iter()
        .enumerate()
        .find_map(|(i, o)| outputs[..i].contains(o).then_some(o))
    {
        return Err(ProvisionError::SameOutput((*twice).clone()));
    }
    let mut prepared = Prepared::new(Job {
        serial: req.serial,
        password,
        on_conflict: req.settings.on_conflict(origin),
    });
    for (index, (source, output)) in req.inputs.into_iter().enumerate() {
        let mut settings = req.settings.clone();
        // Each rootfs slot's container under its own UUID (and L4T
        // passphrase, whose context that UUID is).
        settings.options.luks_build = settings
            .options
            .luks_build
            .as_ref()
            .map(|build| build.for_input(index));
        let mut opened = Opened::open(source, settings, &scratch_dir(output.as_deref()), say)?;
        opened.write(&mut prepared, output.as_deref(), say)?;
    }
    prepared.commit(client.as_ref(), say)
}

/// Opens an image input once, before anything else reads it.
pub(crate) fn pin_input(input: &Path) -> Result<InputPin, ProvisionError> {
    InputPin::open(input).map_err(|source| {
        ProvisionError::Image(ImageError::Open {
            path: input.to_path_buf(),
            source,
        })
    })
}

/// Fails when the pinned input is no longer the file it was.
pub(crate) fn check_pin(pin: Option<&InputPin>) -> Result<(), ProvisionError> {
    match pin.map(InputPin::check) {
        Some(Err(changed)) => Err(ProvisionError::InputChanged {
            path: pin.map(|p| p.path().to_path_buf()).unwrap_or_default(),
            what: changed.to_string(),
        }),
        _ => Ok(()),
    }
}

/// With `--no-rotate`, the password an earlier output of this device
/// carries: the image about to be replaced (`--force`), or the staging
/// tree's device.conf, when it names this device's account.
fn reused_password(
    inputs: &[(Source, Option<PathBuf>)],
    serial: &Serial,
    settings: &Settings,
    say: &mut dyn FnMut(&str),
) -> Option<Password> {
    if !settings.no_rotate {
        return None;
    }
    inputs.iter().find_map(|(source, output)| {
        let earlier = match (source, output) {
            (_, Some(out)) if out.is_file() => out.as_path(),
            (Source::StagingDir(dir), None) => dir.as_path(),
            _ => return None,
        };
        let p = previous::password_of(earlier, serial, &settings.options)?;
        say(&format!(
            "reusing the password {} carries (--no-rotate)",
            earlier.display()
        ));
        Some(p)
    })
}

fn provision_account(
    client: Option<&AdminClient>,
    email: &str,
    job: &Job,
    say: &mut dyn FnMut(&str),
) -> Result<Option<Provisioned>, ProvisionError> {
    let Some(client) = client else {
        say("offline: no account was provisioned");
        return Ok(None);
    };
    say(&format!("provisioning account {email}"));
    let done = client.provision_with(email, &job.password, job.on_conflict)?;
    say(match done {
        Provisioned::Created => "account created",
        Provisioned::PasswordUpdated => "account existed; password updated",
        Provisioned::Existing => "account existed; it keeps its password (--no-rotate)",
    });
    Ok(Some(done))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An extra overlay file, after or before device.conf in the plan,
    /// does not change which owner the reports show.
    #[test]
    fn reports_device_conf_owner_whatever_else_the_overlay_writes() {
        let db = UserDb::parse(
            Some(b"root:x:0:0::/:/bin/sh\nazaion:x:1001:996::/:/bin/sh\n"),
            Some(b"root:x:0:\nazaion:x:996:\n"),
        );
        let password = Password::from_plain("0123456789abcdef0123456789abcdef");
        let vars = DeviceVars {
            serial: "AZJN-0042",
            email: "azaion-jetson-0042@azaion.com",
            password: &password,
        };
        for extra in ["/etc/azaion/z-extra", "/etc/azaion/a-extra", "/etc/motd"] {
            let mut spec = OverlaySpec::default_spec();
            let text = format!(
                "[[entry]]\npath = \"{extra}\"\ntype = \"file\"\nmode = \"0644\"\nowner = \"0:0\"\ncontent = \"x\"\n"
            );
            spec.extend(OverlaySpec::parse(&text, "extra").unwrap());
            let owner = "azaion".parse().unwrap();
            let plan = Plan::resolve(&spec, &vars, &db, &owner, 0).unwrap();
            let reported = device_conf_owner(&plan);
            assert_eq!((reported.uid, reported.gid), (1001, 996), "{extra}");
        }
    }
}
