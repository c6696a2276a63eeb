//! The `--json` documents (docs/json.md): `imprint.provision/1`,
//! `imprint.batch/1`, `imprint.verify/1` and `imprint.verify-clean/1`.
//! They carry no secret.
//!
//! Fields are declared in alphabetical order: that is the order the
//! documents have always been printed in (they were first built as
//! `serde_json::Value` maps, which sort their keys), and readers may
//! compare the text.

use serde::Serialize;

use crate::admin::Provisioned;
use crate::image::disk::PartitionId;
use crate::io::output::sidecar_path;
use crate::pipeline::batch::{BatchReport, Outcome};
use crate::pipeline::dry_run::PlannedDevice;
use crate::pipeline::{OutputReport, Report};
use crate::verify::{Check, CleanReport, VerifyReport};

/// Where provisioning puts the credentials, in every image.
const DEVICE_CONF_PATH: &str = "/etc/azaion/device.conf";
/// The mode of that file, in every image.
const DEVICE_CONF_MODE: &str = "0600";

/// `imprint provision --json` for one serial.
#[derive(Serialize)]
pub(crate) struct ProvisionDocument<'a> {
    account: Option<&'static str>,
    device_conf: DeviceConfDocument<'a>,
    email: &'a str,
    /// Every image written for the device (several with repeated --image);
    /// the top-level fields describe the first.
    images: Vec<ImageDocument<'a>>,
    input_kind: String,
    output: Option<String>,
    /// The partitions of a disk image stamped (of the first image); absent
    /// for other inputs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    partitions: Vec<PartitionDocument<'a>>,
    schema: &'static str,
    serial: &'a str,
    sha1sum: Option<String>,
    sha256: Option<&'a str>,
    sidecar: Option<String>,
    size: Option<u64>,
    staged: Vec<String>,
    /// Only when there is one: documents without stay as they were.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

/// One image of a provision document (fields in alphabetical order, as
/// serde_json writes maps).
#[derive(Serialize)]
struct ImageDocument<'a> {
    input_kind: String,
    output: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    partitions: Vec<PartitionDocument<'a>>,
    sha1sum: Option<String>,
    sha256: &'a str,
    sidecar: String,
    size: u64,
}

/// A partition of a disk image that got the credentials, with device.conf's
/// owner there.
#[derive(Serialize)]
struct PartitionDocument<'a> {
    gid: u32,
    name: Option<&'a str>,
    number: u32,
    uid: u32,
}

fn partitions(out: &OutputReport) -> Vec<PartitionDocument<'_>> {
    out.partitions
        .iter()
        .map(|p| PartitionDocument {
            gid: p.owner.gid,
            name: p.partition.name.as_deref(),
            number: p.partition.number,
            uid: p.owner.uid,
        })
        .collect()
}

#[derive(Serialize)]
struct DeviceConfDocument<'a> {
    gid: u32,
    group: Option<&'a str>,
    mode: &'static str,
    path: &'static str,
    uid: u32,
    user: Option<&'a str>,
}

impl<'a> ProvisionDocument<'a> {
    pub(crate) fn new(report: &'a Report) -> Self {
        let first = &report.outputs[0];
        let emitted = first.emitted.as_ref();
        ProvisionDocument {
            account: report.account.map(|a| match a {
                Provisioned::Created => "created",
                Provisioned::PasswordUpdated => "password_updated",
                Provisioned::Existing => "existing",
            }),
            device_conf: DeviceConfDocument {
                gid: first.owner.gid,
                group: first.owner.group_name.as_deref(),
                mode: DEVICE_CONF_MODE,
                path: DEVICE_CONF_PATH,
                uid: first.owner.uid,
                user: first.owner.user_name.as_deref(),
            },
            email: &report.email,
            images: report
                .outputs
                .iter()
                .filter_map(|o| {
                    let e = o.emitted.as_ref()?;
                    Some(ImageDocument {
                        input_kind: o.kind.to_string(),
                        output: e.path.display().to_string(),
                        partitions: partitions(o),
                        sha1sum: o.sha1sum.as_ref().map(|p| p.display().to_string()),
                        sha256: &e.sha256,
                        sidecar: sidecar_path(&e.path).display().to_string(),
                        size: e.size,
                    })
                })
                .collect(),
            input_kind: first.kind.to_string(),
            output: emitted.map(|e| e.path.display().to_string()),
            partitions: partitions(first),
            schema: "imprint.provision/1",
            serial: &report.serial,
            sha1sum: first.sha1sum.as_ref().map(|p| p.display().to_string()),
            sha256: emitted.map(|e| e.sha256.as_str()),
            sidecar: emitted.map(|e| sidecar_path(&e.path).display().to_string()),
            size: emitted.map(|e| e.size),
            staged: report.outputs[0]
                .staged
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            warnings: &report.warnings,
        }
    }
}

/// `imprint provision --json` for a batch.
#[derive(Serialize)]
pub(crate) struct BatchDocument<'a> {
    failed: usize,
    manifest: String,
    /// The partitions stamped in each disk image input; absent when no
    /// input is a disk image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    partitions: Vec<BatchPartitions<'a>>,
    results: Vec<BatchResult<'a>>,
    schema: &'static str,
    /// Only when there is one: documents without stay as they were.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

/// The partitions of one disk image input that every serial's copy got.
#[derive(Serialize)]
struct BatchPartitions<'a> {
    input: String,
    partitions: &'a [PartitionId],
}

/// One serial of a batch, in the order given.
#[derive(Serialize)]
struct BatchResult<'a> {
    /// Why it failed; only for `"failed"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    serial: &'a str,
    status: &'static str,
}

impl<'a> BatchDocument<'a> {
    pub(crate) fn new(report: &'a BatchReport) -> Self {
        BatchDocument {
            failed: report.failed(),
            manifest: report.manifest_path.display().to_string(),
            partitions: report
                .partitions
                .iter()
                .map(|(input, partitions)| BatchPartitions {
                    input: input.display().to_string(),
                    partitions,
                })
                .collect(),
            results: report
                .outcomes
                .iter()
                .map(|(serial, outcome)| {
                    let (status, error) = match outcome {
                        Outcome::Written => ("written", None),
                        Outcome::Rebuilt => ("rebuilt", None),
                        Outcome::Skipped => ("skipped", None),
                        Outcome::Failed(why) => ("failed", Some(why.as_str())),
                    };
                    BatchResult {
                        error,
                        serial,
                        status,
                    }
                })
                .collect(),
            schema: "imprint.batch/1",
            warnings: &report.warnings,
        }
    }
}

/// `imprint verify --json`.
#[derive(Serialize)]
pub(crate) struct VerifyDocument<'a> {
    checks: Vec<CheckDocument<'a>>,
    image: String,
    /// The partitions of a disk image checked; absent for other inputs.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    partitions: &'a [PartitionId],
    passed: bool,
    schema: &'static str,
}

/// One check, in the order run.
#[derive(Serialize)]
struct CheckDocument<'a> {
    detail: &'a str,
    name: &'a str,
    /// The partition it looked in; absent for the image as a whole and
    /// for inputs without partitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<&'a PartitionId>,
    passed: bool,
}

impl<'a> VerifyDocument<'a> {
    pub(crate) fn new(report: &'a VerifyReport) -> Self {
        VerifyDocument {
            checks: report.checks.iter().map(CheckDocument::new).collect(),
            image: report.image.display().to_string(),
            partitions: &report.partitions,
            passed: report.passed(),
            schema: "imprint.verify/1",
        }
    }
}

impl<'a> CheckDocument<'a> {
    fn new(check: &'a Check) -> Self {
        CheckDocument {
            detail: &check.detail,
            name: &check.name,
            partition: check.partition.as_ref(),
            passed: check.passed,
        }
    }
}

/// `imprint verify --no-credentials --json`.
#[derive(Serialize)]
pub(crate) struct CleanDocument<'a> {
    found: Vec<FoundDocument<'a>>,
    image: String,
    passed: bool,
    schema: &'static str,
    targets: &'a [String],
}

/// One file that should not be in a base: what it is, never what it holds.
#[derive(Serialize)]
struct FoundDocument<'a> {
    gid: u32,
    mode: String,
    path: &'a str,
    size: u64,
    target: Option<&'a str>,
    template: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    uid: u32,
}

impl<'a> CleanDocument<'a> {
    pub(crate) fn new(report: &'a CleanReport) -> Self {
        CleanDocument {
            found: report
                .found
                .iter()
                .map(|f| FoundDocument {
                    gid: f.meta.gid,
                    mode: format!("{:04o}", f.meta.mode),
                    path: &f.path,
                    size: f.meta.size,
                    target: f.meta.target.as_deref(),
                    template: &f.template,
                    kind: match f.meta.kind {
                        crate::image::EntryType::Regular => "file",
                        crate::image::EntryType::Dir => "dir",
                        crate::image::EntryType::Symlink => "symlink",
                        crate::image::EntryType::Other => "other",
                    },
                    uid: f.meta.uid,
                })
                .collect(),
            image: report.image.display().to_string(),
            passed: report.passed(),
            schema: "imprint.verify-clean/1",
            targets: &report.targets,
        }
    }
}

/// `imprint provision --dry-run --json`.
#[derive(Serialize)]
pub(crate) struct DryRunDocument<'a> {
    devices: Vec<DryRunDevice<'a>>,
    schema: &'static str,
}

#[derive(Serialize)]
struct DryRunDevice<'a> {
    email: &'a str,
    images: Vec<DryRunImage<'a>>,
    serial: &'a str,
}

#[derive(Serialize)]
struct DryRunImage<'a> {
    entries: Vec<DryRunEntry<'a>>,
    input: String,
    input_kind: &'a str,
    output: Option<String>,
    /// The partition of a disk image the entries go into; absent for
    /// other inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<&'a PartitionId>,
}

/// One entry: never its content, only its size.
#[derive(Serialize)]
struct DryRunEntry<'a> {
    action: &'static str,
    gid: Option<u32>,
    group: Option<&'a str>,
    mode: Option<String>,
    path: &'a str,
    size: Option<u64>,
    target: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
    uid: Option<u32>,
    user: Option<&'a str>,
    /// The extended attributes it sets; absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    xattrs: Vec<DryRunXattr<'a>>,
}

/// An extended attribute: its value in hex always, and as text when it
/// is printable UTF-8 (an SELinux label; not a binary capability set).
#[derive(Serialize)]
struct DryRunXattr<'a> {
    hex: String,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

impl<'a> DryRunXattr<'a> {
    fn new((name, value): &'a (String, Vec<u8>)) -> Self {
        DryRunXattr {
            hex: value.iter().map(|b| format!("{b:02x}")).collect(),
            name,
            text: xattr_text(value),
        }
    }
}

/// An attribute's value as text, when it is printable UTF-8 (a trailing
/// NUL, as SELinux labels carry, dropped).
pub(crate) fn xattr_text(value: &[u8]) -> Option<&str> {
    let value = value.strip_suffix(b"\0").unwrap_or(value);
    std::str::from_utf8(value)
        .ok()
        .filter(|t| !t.chars().any(char::is_control))
}

impl<'a> DryRunDocument<'a> {
    pub(crate) fn new(devices: &'a [PlannedDevice]) -> Self {
        DryRunDocument {
            devices: devices
                .iter()
                .map(|d| DryRunDevice {
                    email: &d.email,
                    serial: &d.serial,
                    images: d
                        .images
                        .iter()
                        .map(|i| DryRunImage {
                            input: i.input.display().to_string(),
                            input_kind: &i.kind,
                            output: i.output.as_ref().map(|o| o.display().to_string()),
                            partition: i.partition.as_ref(),
                            entries: i
                                .entries
                                .iter()
                                .map(|e| DryRunEntry {
                                    action: e.action.name(),
                                    gid: e.owner.as_ref().map(|o| o.gid),
                                    group: e.owner.as_ref().and_then(|o| o.group_name.as_deref()),
                                    mode: e.mode.map(|m| format!("{m:04o}")),
                                    path: &e.path,
                                    size: e.size,
                                    target: e.target.as_deref(),
                                    kind: e.kind,
                                    uid: e.owner.as_ref().map(|o| o.uid),
                                    user: e.owner.as_ref().and_then(|o| o.user_name.as_deref()),
                                    xattrs: e.xattrs.iter().map(DryRunXattr::new).collect(),
                                })
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
            schema: "imprint.dry-run/1",
        }
    }
}
