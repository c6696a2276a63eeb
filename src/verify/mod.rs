//! `imprint verify`: read a built image back and prove the credentials in it
//! are right. Each check is reported with its result; no check ever shows
//! the password.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::admin::{self, AdminConfig};
use crate::identity::{self, PasswordPolicy, Serial};
use crate::image::disk::PartitionId;
use crate::image::resolve;
use crate::image::{self, EntryType, ImageError, ImageOptions, ImageReader};
use crate::io::output;
use crate::owner::{OwnerSpec, UserDb};
use crate::plan::ImagePath;

mod clean;
pub use clean::{check_clean, CleanReport, FoundSecret};

/// Where the runbook puts the credentials.
pub(crate) const DEVICE_CONF: &str = "/etc/azaion/device.conf";
const MAX_CONF: u64 = 64 << 10;
const MAX_DB: u64 = 16 << 20;

/// What to check beyond the file itself.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    pub serial: Option<Serial>,
    /// Expected owner; `root:root` when not given.
    pub owner: Option<OwnerSpec>,
    /// The Loader's base URL, to try the credentials with POST /login.
    pub login: Option<AdminConfig>,
    /// The form the password must have.
    pub password_policy: PasswordPolicy,
    /// How to read the image (which partition of a disk image).
    pub image: ImageOptions,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    /// The partition of a disk image the check looked in; `None` for the
    /// image as a whole (its checksum) and for other inputs.
    pub partition: Option<PartitionId>,
}

/// One report line: `pass NAME DETAIL` or `FAIL NAME DETAIL`, the detail
/// after the partition's name for a check inside a disk image.
impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed { "pass" } else { "FAIL" };
        match &self.partition {
            Some(p) => write!(f, "{verdict} {:<22} {p}: {}", self.name, self.detail),
            None => write!(f, "{verdict} {:<22} {}", self.name, self.detail),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    pub image: PathBuf,
    pub checks: Vec<Check>,
    /// The partitions of a disk image checked, in table order (empty for
    /// other inputs).
    pub partitions: Vec<PartitionId>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// The partitions with a failed check, in table order.
    pub fn failed_partitions(&self) -> Vec<PartitionId> {
        let mut failed: Vec<PartitionId> = Vec::new();
        for c in self.checks.iter().filter(|c| !c.passed) {
            if let Some(p) = &c.partition {
                if !failed.contains(p) {
                    failed.push(p.clone());
                }
            }
        }
        failed
    }
}

/// The checks of one filesystem (a disk image's partition, or the whole
/// input), added to the report under its partition.
struct Checks<'r> {
    report: &'r mut VerifyReport,
    partition: Option<PartitionId>,
}

impl Checks<'_> {
    fn add(&mut self, name: &str, passed: bool, detail: impl Into<String>) -> bool {
        self.report.checks.push(Check {
            name: name.to_string(),
            passed,
            detail: detail.into(),
            partition: self.partition.clone(),
        });
        passed
    }
}

/// Why the owner names an archive entry carries would give the file
/// another owner: GNU tar running as root without `--numeric-owner` maps
/// names through the extracting host's user database, so a name must be
/// the image's own name for the id (or absent).
fn names_problem(meta: &image::FileMeta, db: &UserDb) -> Option<String> {
    let (user, group) = meta.names.as_ref()?;
    let wrong = |name: &str, own: Option<&str>, what: &str, id: u32| {
        (!name.is_empty() && own != Some(name)).then(|| {
            format!(
                "the entry carries the {what} name {name:?}, which the image's own database gives {}; GNU tar running as root maps the name through the flashing host's database, not {id}",
                own.map_or_else(|| format!("no name for {id}"), |n| format!("{id} the name {n:?}"))
            )
        })
    };
    wrong(user, db.user_name_of(meta.uid), "user", meta.uid)
        .or_else(|| wrong(group, db.group_name_of(meta.gid), "group", meta.gid))
}

/// Runs every check, on every partition [`Expectations::image`] selects
/// for a disk image. An image that cannot be read at all is an error; a
/// readable image with wrong contents is a report with failed checks.
///
/// An image without credentials fails (`input` is a rootfs tar that was
/// never stamped):
///
/// ```
/// use imprint::{Expectations, Serial};
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
/// let expect = Expectations {
///     serial: Some(Serial::parse("AZJN-0042")?),
///     ..Expectations::default()
/// };
/// let report = imprint::verify(&input, &expect)?;
/// assert!(!report.passed());
/// for check in report.checks.iter().filter(|c| !c.passed) {
///     eprintln!("{}: {}", check.name, check.detail);
/// }
/// # Ok(())
/// # }
/// ```
pub fn verify(path: &Path, expect: &Expectations) -> Result<VerifyReport, ImageError> {
    let mut report = VerifyReport {
        image: path.to_path_buf(),
        checks: Vec::new(),
        partitions: Vec::new(),
    };
    if path.is_file() {
        check_sidecar(
            path,
            &mut Checks {
                report: &mut report,
                partition: None,
            },
        )?;
    }
    for (partition, mut reader) in image::open_readers(path, &expect.image)? {
        let partition = partition.map(|p| p.id());
        report.partitions.extend(partition.clone());
        let mut checks = Checks {
            report: &mut report,
            partition,
        };
        check_filesystem(reader.as_mut(), expect, &mut checks)?;
    }
    Ok(report)
}

/// Every check of device.conf in one filesystem (a partition of a disk
/// image, or the whole input).
fn check_filesystem(
    reader: &mut dyn ImageReader,
    expect: &Expectations,
    report: &mut Checks,
) -> Result<(), ImageError> {
    let (conf, passwd, group) = read_files(reader)?;
    let Some((meta, content)) = conf else {
        let place = if report.partition.is_some() {
            "this partition"
        } else {
            "the image"
        };
        report.add("present", false, format!("{DEVICE_CONF} is not in {place}"));
        return Ok(());
    };
    report.add("present", true, DEVICE_CONF);
    if !check_file(report, &meta) {
        return Ok(());
    }
    let db = UserDb::parse(passwd.as_deref(), group.as_deref());
    check_owner(report, &meta, &db, expect.owner.as_ref());
    // The file holds the password: wiped when this check is done with it.
    let content = match content {
        Some(c) if meta.size <= MAX_CONF => zeroize::Zeroizing::new(c),
        _ => {
            report.add(
                "contents",
                false,
                format!("{} bytes is too large for device.conf", meta.size),
            );
            return Ok(());
        }
    };
    let parsed = identity::parse_device_conf(&content);
    check_credentials(report, &parsed, expect);
    if let Some(result) = reader.fsck() {
        match result {
            Ok(()) => report.add("e2fsck", true, "e2fsck -fn found no problems"),
            Err(why) => report.add("e2fsck", false, why),
        };
    }
    if let Some(login) = &expect.login {
        check_login(report, &parsed, login);
    }
    Ok(())
}

/// The `checksum` check, when the image has a sidecar (or a sidecar
/// without its line).
fn check_sidecar(path: &Path, report: &mut Checks) -> Result<(), ImageError> {
    match output::read_sidecar(path) {
        Ok(Some(recorded)) => {
            let actual = output::sha256_file(path).map_err(|source| ImageError::Open {
                path: path.to_path_buf(),
                source,
            })?;
            report.add(
                "checksum",
                actual == recorded,
                if actual == recorded {
                    format!(
                        "sha256 {actual} matches {}",
                        output::sidecar_path(path).display()
                    )
                } else {
                    format!("sha256 is {actual} but the sidecar says {recorded}")
                },
            );
        }
        Ok(None) if output::sidecar_path(path).exists() => {
            report.add(
                "checksum",
                false,
                format!(
                    "{} has no line for this file",
                    output::sidecar_path(path).display()
                ),
            );
        }
        Ok(None) => {}
        Err(e) => {
            report.add("checksum", false, format!("cannot read the sidecar: {e}"));
        }
    }
    Ok(())
}

/// device.conf (if there) and the content of /etc/passwd and /etc/group.
type Files = (Option<image::Found>, Option<Vec<u8>>, Option<Vec<u8>>);

/// device.conf (metadata and content) and the user database, in one
/// lookup (one pass over a tar).
fn read_files(reader: &mut dyn image::ImageReader) -> Result<Files, ImageError> {
    let conf = ImagePath::parse(DEVICE_CONF).expect("constant");
    let db = ["/etc/passwd", "/etc/group"].map(|p| ImagePath::parse(p).expect("constant"));
    // Through the image's symlinks, as a chroot (and imprint's writing)
    // would go: device.conf up to its own name (a symlink there is what
    // the checks report), the user database wholly. A path that does not
    // resolve is looked up as it is, and found missing.
    let paths = resolve::with_reader_links(reader, |links| {
        let mut link = |p: &ImagePath| Ok::<_, ImageError>(links(p));
        let mut paths =
            vec![resolve::resolve_parent(&conf, &mut link)?
                .map_or_else(|_| conf.clone(), |r| r.path)];
        for p in &db {
            paths.push(resolve::resolve(p, &mut link)?.map_or_else(|_| p.clone(), |r| r.path));
        }
        Ok::<_, ImageError>(paths)
    })?;
    let mut found = reader.lookup_many(&paths, MAX_DB)?;
    let group = found.pop().flatten().and_then(|(_, c)| c);
    let passwd = found.pop().flatten().and_then(|(_, c)| c);
    let conf = found.pop().flatten();
    Ok((conf, passwd, group))
}

/// The `regular file` and `mode` checks; false when the file is not one
/// whose content is worth reading.
fn check_file(report: &mut Checks, meta: &image::FileMeta) -> bool {
    if !report.add(
        "regular file",
        meta.kind == EntryType::Regular && meta.links <= 1,
        match meta.kind {
            EntryType::Regular if meta.links > 1 => format!(
                "a regular file, but {} names reach it (hard links): every other name gives the password to whoever reads that name",
                meta.links
            ),
            kind => format!("{kind:?}").to_lowercase(),
        },
    ) {
        return false;
    }
    let acls: Vec<&str> = meta
        .xattrs
        .iter()
        .map(String::as_str)
        .filter(|x| x.starts_with("system.posix_acl_"))
        .collect();
    report.add(
        "mode",
        meta.mode == 0o600 && acls.is_empty(),
        if acls.is_empty() {
            format!("{:04o} (expected 0600)", meta.mode)
        } else {
            format!(
                "{:04o} with an ACL ({}) that can grant others access (expected 0600 and no ACL)",
                meta.mode,
                acls.join(", ")
            )
        },
    );
    true
}

/// The `owner` check: the ids `expected` names in the image's own
/// database (root:root when not given), and names that map to them.
fn check_owner(
    report: &mut Checks,
    meta: &image::FileMeta,
    db: &UserDb,
    expected: Option<&OwnerSpec>,
) {
    let spec = expected.cloned().unwrap_or(OwnerSpec::User("root".into()));
    match db.resolve(&spec) {
        Ok(owner) => {
            let ids = meta.uid == owner.uid && meta.gid == owner.gid;
            let names = names_problem(meta, db);
            let detail = format!(
                "{}:{} (expected {}:{} for {spec})",
                meta.uid, meta.gid, owner.uid, owner.gid
            );
            match names {
                Some(why) if ids => report.add("owner", false, format!("{detail}, but {why}")),
                _ => report.add("owner", ids, detail),
            }
        }
        Err(e) => report.add("owner", false, e.to_string()),
    };
}

/// The `email`, `password` and `email matches serial` checks.
fn check_credentials(report: &mut Checks, parsed: &identity::DeviceConf, expect: &Expectations) {
    let email_ok = parsed
        .email
        .as_deref()
        .is_some_and(|e| e.starts_with("azaion-jetson-") && e.ends_with("@azaion.com"));
    report.add(
        "email",
        email_ok,
        match &parsed.email {
            Some(e) => e.clone(),
            None => format!("{} is missing", identity::EMAIL_KEY),
        },
    );
    let password_ok = parsed
        .password
        .as_ref()
        .is_some_and(|p| expect.password_policy.accepts(p.expose()));
    report.add(
        "password",
        password_ok,
        match &parsed.password {
            None => format!("{} is missing", identity::PASSWORD_KEY),
            Some(p) if password_ok => format!("present, {} characters", p.expose().len()),
            Some(p) => match expect.password_policy {
                PasswordPolicy::Runbook => format!(
                    "present, {} characters, but not 32 lowercase hex characters (pass --password-policy any to accept other forms)",
                    p.expose().len()
                ),
                PasswordPolicy::Any => "present but empty or not printable ASCII".into(),
            },
        },
    );
    if let Some(serial) = &expect.serial {
        let want = serial.email();
        report.add(
            "email matches serial",
            parsed.email.as_deref() == Some(want.as_str()),
            format!("expected {want} for {serial}"),
        );
    }
}

/// The `login` check: the credentials tried at the Loader.
fn check_login(report: &mut Checks, parsed: &identity::DeviceConf, login: &AdminConfig) {
    match (&parsed.email, &parsed.password) {
        (Some(email), Some(password)) => match admin::login(login, email, password) {
            Ok(()) => report.add(
                "login",
                true,
                format!(
                    "POST {}/login accepted",
                    login.base_url.trim_end_matches('/')
                ),
            ),
            Err(e) => report.add("login", false, e.to_string()),
        },
        _ => report.add("login", false, "no credentials to try"),
    };
}
