//! One device, end to end: open the image, plan, write a new image into a
//! temp file, provision the account, then commit.
//!
//! The order is the point. The admin API is called only after the image was
//! written, so a failed write never changes the server; the image is renamed
//! to its final name only after the API accepted the password, so no image
//! ever carries a password the server does not have.

pub mod batch;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::admin::{AdminClient, AdminConfig, AdminError, Provisioned};
use crate::identity::{IdentityError, Password, Serial};
use crate::image::dir::{DirError, StagingDir};
use crate::image::{self, ImageBackend, ImageError, ImageFacts};
use crate::io::output::{self, Emitted, TempOutput};
use crate::owner::{Owner, OwnerSpec, UserDb};
use crate::plan::{choose_mtime, DeviceVars, OverlayError, OverlaySpec, Plan};

#[derive(Debug, Error)]
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
    #[error("the output directory {0} does not exist")]
    NoOutputDir(PathBuf),
    #[error("cannot create the output file in {dir}: {source}")]
    CreateOutput {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot finish the output {path}: {source}")]
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

/// Where the device's files go.
#[derive(Debug, Clone)]
pub enum Target {
    /// Read `input`, write a new image to `output` (the final name).
    Image { input: PathBuf, output: PathBuf },
    /// Write into a staging tree in place (the runbook's flow).
    StagingDir(PathBuf),
}

/// Everything one provisioning run needs.
pub struct Request {
    pub serial: Serial,
    pub target: Target,
    pub owner: OwnerSpec,
    /// A caller-supplied password; `None` generates one.
    pub password: Option<Password>,
    pub overlay: OverlaySpec,
    /// `None` is offline: no API call (the caller supplies the password).
    pub api: Option<AdminConfig>,
    /// Also write `NAME.sha1sum`, as NVIDIA's kernel-flash tools check.
    pub sha1sum: bool,
}

/// What a run did. Carries no secret.
#[derive(Debug, Clone)]
pub struct Report {
    pub serial: String,
    pub email: String,
    pub kind: String,
    pub owner: Owner,
    /// The image written, with its digest; `None` for a staging directory.
    pub emitted: Option<Emitted>,
    /// Files written into a staging directory.
    pub staged: Vec<PathBuf>,
    /// `None` when offline.
    pub account: Option<Provisioned>,
    /// The `NAME.sha1sum` written, if asked for.
    pub sha1sum: Option<PathBuf>,
}

/// Works out the final output path: a file, or a directory (existing, or
/// named with a trailing `/`) in which the name is `<serial>-<input name>`.
pub fn output_path(
    input: &Path,
    output: &Path,
    serial: &Serial,
    force: bool,
) -> Result<PathBuf, ProvisionError> {
    let as_dir = output.as_os_str().to_string_lossy().ends_with('/') || output.is_dir();
    let path = if as_dir {
        if !output.is_dir() {
            return Err(ProvisionError::NoOutputDir(output.to_path_buf()));
        }
        let name = input.file_name().unwrap_or_default().to_string_lossy();
        output.join(format!("{serial}-{name}"))
    } else {
        output.to_path_buf()
    };
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    };
    if same(input, &path) {
        return Err(ProvisionError::OutputIsInput(path));
    }
    if path.symlink_metadata().is_ok() && !force {
        return Err(ProvisionError::OutputExists(path));
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(ProvisionError::NoOutputDir(parent.to_path_buf()));
    }
    Ok(path)
}

fn plan_for(
    req: &Request,
    facts: &ImageFacts,
    email: &str,
    password: &Password,
) -> Result<Plan, ProvisionError> {
    let db = UserDb::parse(facts.passwd.as_deref(), facts.group.as_deref());
    let vars = DeviceVars {
        serial: req.serial.as_str(),
        email,
        password,
    };
    Ok(Plan::resolve(
        &req.overlay,
        &vars,
        &db,
        &req.owner,
        choose_mtime(facts.reference_mtime),
    )?)
}

/// The owner the plan gives the first file entry (device.conf by default).
fn file_owner(plan: &Plan) -> Owner {
    plan.entries
        .iter()
        .rev()
        .find(|e| e.content().is_some())
        .map(|e| e.owner.clone())
        .unwrap_or_else(Owner::root)
}

/// An image written for one device into a sealed temp file, waiting for
/// the API to accept its password before it gets its final name.
pub struct Prepared {
    pub serial: Serial,
    pub email: String,
    password: Password,
    kind: String,
    owner: Owner,
    temp: TempOutput,
    sha1sum: bool,
}

/// Plans and writes one device's image with an already opened backend (a
/// batch opens and scans its base image once and calls this per serial).
#[allow(clippy::too_many_arguments)]
pub fn prepare_image(
    req: &Request,
    backend: &mut dyn ImageBackend,
    facts: &ImageFacts,
    kind: &str,
    output: &Path,
    password: Password,
    say: &mut dyn FnMut(&str),
) -> Result<Prepared, ProvisionError> {
    let email = req.serial.email();
    let plan = plan_for(req, facts, &email, &password)?;
    let dir = output.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut temp = TempOutput::create(output)
        .map_err(|source| ProvisionError::CreateOutput { dir, source })?;
    say(&format!("writing {}", output.display()));
    backend.apply(&plan, &mut temp)?;
    Ok(Prepared {
        serial: req.serial.clone(),
        email,
        password,
        kind: kind.to_string(),
        owner: file_owner(&plan),
        temp,
        sha1sum: req.sha1sum,
    })
}

/// Makes the image durable (fsync, digest), provisions the account (unless
/// offline), then gives the image its final name and sidecar. A write that
/// fails here makes no API call; if the API fails, the temp file is
/// dropped: removed. A batch runs this on worker threads, so one image's
/// fsync and API call overlap the writing of the next.
pub fn finish(
    mut prepared: Prepared,
    client: Option<&AdminClient>,
    say: &mut dyn FnMut(&str),
) -> Result<Report, ProvisionError> {
    let path = prepared.temp.final_path().to_path_buf();
    prepared
        .temp
        .seal()
        .map_err(|source| ProvisionError::Commit {
            path: path.clone(),
            source,
        })?;
    let account = provision_account(client, &prepared.email, &prepared.password, say)?;
    let emitted = prepared
        .temp
        .commit()
        .map_err(|source| ProvisionError::Commit {
            path: path.clone(),
            source,
        })?;
    let sha1sum = if prepared.sha1sum {
        Some(
            output::write_sha1sum(&emitted.path)
                .map_err(|source| ProvisionError::Commit { path, source })?,
        )
    } else {
        None
    };
    Ok(Report {
        serial: prepared.serial.to_string(),
        email: prepared.email,
        kind: prepared.kind,
        owner: prepared.owner,
        emitted: Some(emitted),
        staged: Vec::new(),
        account,
        sha1sum,
    })
}

/// Provisions one device. `say` receives progress lines (never secrets).
pub fn run(req: &Request, say: &mut dyn FnMut(&str)) -> Result<Report, ProvisionError> {
    let email = req.serial.email();
    // Build the client first: a bad URL or certificate fails before any
    // work is done.
    let client = req.api.clone().map(AdminClient::new).transpose()?;
    let password = match &req.password {
        Some(p) => p.clone(),
        None => Password::generate()?,
    };
    match &req.target {
        Target::Image { input, output } => {
            let kind = image::detect(input)?;
            say(&format!("{}: {}", input.display(), kind.describe()));
            let output_dir = output
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut backend = image::open_backend(input, kind, &req.overlay.targets(), output_dir)?;
            let facts = backend.facts()?;
            let prepared = prepare_image(
                req,
                backend.as_mut(),
                &facts,
                &kind.describe(),
                output,
                password,
                say,
            )?;
            finish(prepared, client.as_ref(), say)
        }
        Target::StagingDir(root) => {
            let dir = StagingDir::open(root)?;
            let facts = dir.facts()?;
            let plan = plan_for(req, &facts, &email, &password)?;
            let staged = dir.stage(&plan)?;
            let account = provision_account(client.as_ref(), &email, &password, say)?;
            let files = staged.commit()?;
            Ok(Report {
                serial: req.serial.to_string(),
                email,
                kind: "staging directory".into(),
                owner: file_owner(&plan),
                emitted: None,
                staged: files,
                account,
                sha1sum: None,
            })
        }
    }
}

fn provision_account(
    client: Option<&AdminClient>,
    email: &str,
    password: &Password,
    say: &mut dyn FnMut(&str),
) -> Result<Option<Provisioned>, ProvisionError> {
    let Some(client) = client else {
        say("offline: no account was provisioned");
        return Ok(None);
    };
    say(&format!("provisioning account {email}"));
    let done = client.provision(email, password)?;
    say(match done {
        Provisioned::Created => "account created",
        Provisioned::PasswordUpdated => "account existed; password updated",
    });
    Ok(Some(done))
}
