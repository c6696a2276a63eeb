//! `manifest.json`: the list of images a batch left in its directory, with
//! the digest of each and of the base it was made from. Never a password.
//!
//! A batch rewrites it after each device; a `--skip-existing` rerun reads
//! the old one to tell outputs of the current base from outputs of an older
//! one; `imprint manifest merge` joins the manifests of a sharded run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::identity::Serial;
use crate::io::output;

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("cannot read the manifest {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an imprint manifest")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the manifest {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} was made from other base images than {first}; merge only the shards of one run"
    )]
    OtherInputs { path: PathBuf, first: PathBuf },
    #[error("{what} {name} is listed in both {first} and {second}; a serial belongs to one shard")]
    Twice {
        what: &'static str,
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("no manifests to merge")]
    Nothing,
    #[error("{path}, image {index}: {why}; merge only manifests imprint wrote, unchanged")]
    BadEntry {
        path: PathBuf,
        /// From 1, in the file's order.
        index: usize,
        why: String,
    },
    #[error("{path}: {why}; merge only manifests imprint wrote, unchanged")]
    BadManifest { path: PathBuf, why: String },
    #[error("serials {first} ({first_path}) and {second} ({second_path}) both map to the account {email}: whichever was provisioned first now carries a stale password. Reprovision one of the two devices alone (imprint provision --serial), and give the two devices serials that map to different accounts")]
    SameAccount {
        first: String,
        first_path: PathBuf,
        second: String,
        second_path: PathBuf,
        email: String,
    },
}

/// One image of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub serial: String,
    pub email: String,
    /// The image's file name, beside the manifest.
    pub output: String,
    pub sha256: String,
    pub size: u64,
    /// The input (file name) the image was made from.
    #[serde(default)]
    pub input: String,
    /// That input's SHA-256: what a `--skip-existing` rerun compares to
    /// tell an output of the current base from one of an older base.
    #[serde(default)]
    pub input_sha256: String,
}

/// A base image of the batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestInput {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub tool: String,
    /// The first input's name and digest (every input is in `inputs`).
    pub input: String,
    pub input_sha256: String,
    #[serde(default)]
    pub inputs: Vec<ManifestInput>,
    pub images: Vec<ManifestEntry>,
}

impl Manifest {
    /// A manifest of `inputs` with no image yet.
    pub fn new(inputs: Vec<ManifestInput>) -> Manifest {
        let first = inputs.first().cloned().unwrap_or(ManifestInput {
            name: String::new(),
            sha256: String::new(),
        });
        Manifest {
            tool: format!("imprint {}", env!("CARGO_PKG_VERSION")),
            input: first.name,
            input_sha256: first.sha256,
            inputs,
            images: Vec::new(),
        }
    }

    /// Reads a manifest; `Ok(None)` when there is none. Manifests of
    /// earlier versions lack the per-image `input` and `input_sha256`:
    /// they are taken from `inputs` by name, else from the top level.
    pub fn load(path: &Path) -> Result<Option<Manifest>, ManifestError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ManifestError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let mut manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| ManifestError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if manifest.inputs.is_empty() {
            manifest.inputs.push(ManifestInput {
                name: manifest.input.clone(),
                sha256: manifest.input_sha256.clone(),
            });
        }
        for image in &mut manifest.images {
            if image.input.is_empty() {
                image.input = manifest.input.clone();
            }
            if image.input_sha256.is_empty() {
                image.input_sha256 = manifest
                    .inputs
                    .iter()
                    .find(|i| i.name == image.input)
                    .map(|i| i.sha256.clone())
                    .unwrap_or_else(|| manifest.input_sha256.clone());
            }
        }
        Ok(Some(manifest))
    }

    /// The entry for the image named `output`, if listed.
    pub fn entry(&self, output: &str) -> Option<&ManifestEntry> {
        self.images.iter().find(|e| e.output == output)
    }

    /// Writes the manifest atomically (0600), images sorted by serial and
    /// output. Images `old` lists for serials this one does not hold are
    /// kept when their file is still beside the manifest, whatever base
    /// they were made from (each says which): a rerun for a few serials
    /// keeps the full list, and an output of an older base stays known as
    /// one until it is rebuilt.
    pub fn write(&self, path: &Path, old: Option<&Manifest>) -> Result<(), ManifestError> {
        let mut merged = self.clone();
        for entry in old.map(|o| o.images.as_slice()).unwrap_or_default() {
            let replaced = merged.images.iter().any(|m| m.serial == entry.serial);
            if !replaced && path.with_file_name(&entry.output).is_file() {
                merged.images.push(entry.clone());
            }
        }
        merged
            .images
            .sort_by(|a, b| (&a.serial, &a.output).cmp(&(&b.serial, &b.output)));
        let mut text = serde_json::to_string_pretty(&merged).expect("manifest serializes");
        text.push('\n');
        output::write_atomic(path, text.as_bytes()).map_err(|source| ManifestError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Joins the manifests of one sharded run (each shard a batch of part of
/// the serials, from the same base images) into one: every part must list
/// the same inputs, and no serial or output may appear in two parts. Each
/// shard is checked again as a batch checks its own serials (a shard comes
/// from another job, maybe another machine): every serial valid, its email
/// the one the serial maps to, no two serials of the whole run mapping to
/// one account, output names plain file names of the serial's own, and
/// every digest 64 hex digits.
pub fn merge(parts: &[PathBuf]) -> Result<Manifest, ManifestError> {
    let first_path = parts.first().ok_or(ManifestError::Nothing)?;
    let mut merged: Option<Manifest> = None;
    let mut serials: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut outputs: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut accounts: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
    for path in parts {
        let part = Manifest::load(path)?.ok_or_else(|| ManifestError::Read {
            path: path.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        check_part(path, &part)?;
        for image in &part.images {
            match accounts.get(&image.email) {
                Some((serial, first)) if *serial != image.serial => {
                    return Err(ManifestError::SameAccount {
                        first: serial.clone(),
                        first_path: first.clone(),
                        second: image.serial.clone(),
                        second_path: path.clone(),
                        email: image.email.clone(),
                    })
                }
                _ => {
                    accounts.insert(image.email.clone(), (image.serial.clone(), path.clone()));
                }
            }
        }
        let merged = merged.get_or_insert_with(|| Manifest::new(part.inputs.clone()));
        if !same_inputs(&part.inputs, &merged.inputs) {
            return Err(ManifestError::OtherInputs {
                path: path.clone(),
                first: first_path.clone(),
            });
        }
        for image in part.images {
            // One serial may have several images (one per input), but all
            // from one part.
            if let Some(other) = serials.get(&image.serial).filter(|p| *p != path) {
                return Err(ManifestError::Twice {
                    what: "serial",
                    name: image.serial,
                    first: other.clone(),
                    second: path.clone(),
                });
            }
            if let Some(other) = outputs.get(&image.output) {
                return Err(ManifestError::Twice {
                    what: "image",
                    name: image.output,
                    first: other.clone(),
                    second: path.clone(),
                });
            }
            serials.insert(image.serial.clone(), path.clone());
            outputs.insert(image.output.clone(), path.clone());
            merged.images.push(image);
        }
    }
    let mut merged = merged.ok_or(ManifestError::Nothing)?;
    merged
        .images
        .sort_by(|a, b| (&a.serial, &a.output).cmp(&(&b.serial, &b.output)));
    Ok(merged)
}

/// At most this much of a value is quoted in an error.
const QUOTED: usize = 200;

/// `value` as a quoted string of at most [`QUOTED`] characters.
fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTED) {
        Some((at, _)) => format!("{:?}...", &value[..at]),
        None => format!("{value:?}"),
    }
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The rules one shard's manifest must keep, as a batch writes it.
fn check_part(path: &Path, part: &Manifest) -> Result<(), ManifestError> {
    let bad = |why: String| ManifestError::BadManifest {
        path: path.to_path_buf(),
        why,
    };
    if !part.tool.starts_with("imprint ") {
        return Err(bad(format!(
            "its tool is {}, not imprint",
            quote(&part.tool)
        )));
    }
    for input in &part.inputs {
        if !is_sha256(&input.sha256) {
            return Err(bad(format!(
                "the input {} has the digest {}, not 64 hex digits",
                quote(&input.name),
                quote(&input.sha256)
            )));
        }
    }
    for (i, image) in part.images.iter().enumerate() {
        check_entry(image).map_err(|why| ManifestError::BadEntry {
            path: path.to_path_buf(),
            index: i + 1,
            why,
        })?;
    }
    Ok(())
}

/// One image's entry: the serial a batch accepts, its own account, a
/// plain file name of its own, and real digests.
fn check_entry(image: &ManifestEntry) -> Result<(), String> {
    let serial = Serial::parse(&image.serial).map_err(|_| {
        format!(
            "the serial {} is not one imprint accepts (uppercase letters, digits and hyphens, like AZJN-0042)",
            quote(&image.serial)
        )
    })?;
    if image.email != serial.email() {
        return Err(format!(
            "serial {serial} has the email {}, but its account is {}",
            quote(&image.email),
            serial.email()
        ));
    }
    let output = &image.output;
    let plain = !output.contains(['/', '\\', '\0'])
        && !output.chars().any(char::is_control)
        && output.starts_with(&format!("{serial}-"));
    if !plain {
        return Err(format!(
            "serial {serial} has the output {}, not a file name of the form {serial}-INPUT beside the manifest",
            quote(output)
        ));
    }
    for (what, digest) in [
        ("sha256", &image.sha256),
        ("input_sha256", &image.input_sha256),
    ] {
        if !is_sha256(digest) {
            return Err(format!(
                "serial {serial} has the {what} {}, not 64 hex digits",
                quote(digest)
            ));
        }
    }
    Ok(())
}

fn same_inputs(a: &[ManifestInput], b: &[ManifestInput]) -> bool {
    let digests = |v: &[ManifestInput]| {
        let mut d: Vec<String> = v.iter().map(|i| i.sha256.clone()).collect();
        d.sort();
        d
    };
    digests(a) == digests(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn entry(serial: &str, base: &str) -> ManifestEntry {
        let email = Serial::parse(serial).map(|s| s.email()).unwrap_or_default();
        ManifestEntry {
            serial: serial.to_string(),
            email,
            output: format!("{serial}-system.img"),
            sha256: digest('0'),
            size: 1,
            input: "system.img".into(),
            input_sha256: base.into(),
        }
    }

    fn part_of(dir: &Path, name: &str, base: &str, images: Vec<ManifestEntry>) -> PathBuf {
        let mut m = Manifest::new(vec![ManifestInput {
            name: "system.img".into(),
            sha256: base.into(),
        }]);
        m.images = images;
        let path = dir.join(name);
        m.write(&path, None).unwrap();
        path
    }

    fn part(dir: &Path, name: &str, base: &str, serials: &[&str]) -> PathBuf {
        let images = serials.iter().map(|s| entry(s, base)).collect();
        part_of(dir, name, base, images)
    }

    #[test]
    fn shards_of_one_run_merge_and_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (aa, bb) = (digest('a'), digest('b'));
        let a = part(dir.path(), "a.json", &aa, &["AZJN-0002", "AZJN-0001"]);
        let b = part(dir.path(), "b.json", &aa, &["AZJN-0003"]);
        let m = merge(&[a.clone(), b.clone()]).unwrap();
        let serials: Vec<&str> = m.images.iter().map(|e| e.serial.as_str()).collect();
        assert_eq!(serials, ["AZJN-0001", "AZJN-0002", "AZJN-0003"]);

        let other = part(dir.path(), "c.json", &bb, &["AZJN-0004"]);
        let e = merge(&[a.clone(), other]).unwrap_err().to_string();
        assert!(e.contains("c.json") && e.contains("other base"), "{e}");
        let twice = part(dir.path(), "d.json", &aa, &["AZJN-0001"]);
        let e = merge(&[a, twice]).unwrap_err().to_string();
        assert!(e.contains("AZJN-0001") && e.contains("d.json"), "{e}");
        assert!(matches!(merge(&[]), Err(ManifestError::Nothing)));
    }

    /// Each rule a batch keeps is checked again in every shard: the
    /// error names the shard, the image and what is wrong with it.
    #[test]
    fn merge_rechecks_what_a_batch_checks() {
        let dir = tempfile::tempdir().unwrap();
        let base = digest('a');
        let good = part(dir.path(), "good.json", &base, &["AZJN-0001"]);
        // Two serials of one account, in two shards and in one.
        let other = part(dir.path(), "other.json", &base, &["AZXB-0001"]);
        let e = merge(&[good.clone(), other.clone()]).unwrap_err();
        let said = e.to_string();
        assert!(matches!(e, ManifestError::SameAccount { .. }), "{said}");
        for want in [
            "AZJN-0001",
            "AZXB-0001",
            "good.json",
            "other.json",
            "azaion-jetson-0001@azaion.com",
        ] {
            assert!(said.contains(want), "{want}: {said}");
        }
        let both = part(dir.path(), "both.json", &base, &["AZJN-0007", "AZXB-0007"]);
        let said = merge(&[both]).unwrap_err().to_string();
        assert!(
            said.contains("AZXB-0007") && said.contains("both.json"),
            "{said}"
        );

        let mut hostile = entry("AZJN-0002", &base);
        hostile.serial = "AZJN-9999; rm -rf /".into();
        let mut foreign = entry("AZJN-0002", &base);
        foreign.email = "root@example.com".into();
        let mut escape = entry("AZJN-0002", &base);
        escape.output = "../../../etc/shadow".into();
        let mut slash = entry("AZJN-0002", &base);
        slash.output = "AZJN-0002-x/../../y".into();
        let mut digest_bad = entry("AZJN-0002", &base);
        digest_bad.sha256 = "not-a-digest".into();
        let mut input_bad = entry("AZJN-0002", &base);
        input_bad.input_sha256 = digest('A');
        for (image, want) in [
            (
                hostile,
                "\"AZJN-9999; rm -rf /\" is not one imprint accepts",
            ),
            (
                foreign,
                "\"root@example.com\", but its account is azaion-jetson-0002@",
            ),
            (escape, "\"../../../etc/shadow\", not a file name"),
            (slash, "\"AZJN-0002-x/../../y\", not a file name"),
            (digest_bad, "sha256 \"not-a-digest\", not 64 hex"),
            (input_bad, "input_sha256 \"AAAA"),
        ] {
            let bad = part_of(
                dir.path(),
                "bad.json",
                &base,
                vec![entry("AZJN-0000", &base), image],
            );
            let said = merge(&[good.clone(), bad.clone()]).unwrap_err().to_string();
            assert!(
                said.starts_with(&format!("{}, image 2: ", bad.display())),
                "{said}"
            );
            assert!(said.contains(want), "{want}: {said}");
        }
        // The shard's own inputs and tool, too.
        let bad = part(dir.path(), "short.json", "ab", &["AZJN-0004"]);
        let said = merge(&[bad]).unwrap_err().to_string();
        assert!(
            said.contains("short.json") && said.contains("\"ab\", not 64 hex"),
            "{said}"
        );
        let text = std::fs::read_to_string(&good)
            .unwrap()
            .replace("\"imprint ", "\"other ");
        let forged = dir.path().join("forged.json");
        std::fs::write(&forged, text).unwrap();
        let said = merge(&[forged]).unwrap_err().to_string();
        assert!(
            said.contains("forged.json") && said.contains("not imprint"),
            "{said}"
        );
    }

    /// The parser's complaint is said once, after the file's name.
    #[test]
    fn a_damaged_manifest_says_why_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, "{\"tool\": ").unwrap();
        let err = Manifest::load(&path).unwrap_err();
        let cause = serde_json::from_str::<Manifest>("{\"tool\": ")
            .unwrap_err()
            .to_string();
        let said = crate::error_chain(&err);
        assert_eq!(
            said,
            format!("{} is not an imprint manifest: {cause}", path.display())
        );
    }

    /// A manifest of an earlier version (no per-image input digest) still
    /// tells which base each image came from.
    #[test]
    fn old_manifests_get_their_input_digest_from_the_top_level() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(
            &path,
            r#"{"tool":"imprint 0.1.0","input":"b.tar","input_sha256":"ab","images":[
                {"serial":"AZJN-0001","email":"e","output":"AZJN-0001-b.tar","sha256":"cd","size":3}]}"#,
        )
        .unwrap();
        let m = Manifest::load(&path).unwrap().unwrap();
        assert_eq!(m.images[0].input, "b.tar");
        assert_eq!(m.images[0].input_sha256, "ab");
        assert_eq!(m.inputs.len(), 1);
    }
}
