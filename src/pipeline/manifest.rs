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
/// the same inputs, and no serial or output may appear in two parts.
pub fn merge(parts: &[PathBuf]) -> Result<Manifest, ManifestError> {
    let first_path = parts.first().ok_or(ManifestError::Nothing)?;
    let mut merged: Option<Manifest> = None;
    let mut serials: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut outputs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in parts {
        let part = Manifest::load(path)?.ok_or_else(|| ManifestError::Read {
            path: path.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
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

    fn part(dir: &Path, name: &str, base: &str, serials: &[&str]) -> PathBuf {
        let mut m = Manifest::new(vec![ManifestInput {
            name: "system.img".into(),
            sha256: base.into(),
        }]);
        for s in serials {
            m.images.push(ManifestEntry {
                serial: s.to_string(),
                email: format!("{s}@x"),
                output: format!("{s}-system.img"),
                sha256: "00".into(),
                size: 1,
                input: "system.img".into(),
                input_sha256: base.into(),
            });
        }
        let path = dir.join(name);
        m.write(&path, None).unwrap();
        path
    }

    #[test]
    fn shards_of_one_run_merge_and_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = part(dir.path(), "a.json", "aa", &["AZJN-0002", "AZJN-0001"]);
        let b = part(dir.path(), "b.json", "aa", &["AZJN-0003"]);
        let m = merge(&[a.clone(), b.clone()]).unwrap();
        let serials: Vec<&str> = m.images.iter().map(|e| e.serial.as_str()).collect();
        assert_eq!(serials, ["AZJN-0001", "AZJN-0002", "AZJN-0003"]);

        let other = part(dir.path(), "c.json", "bb", &["AZJN-0004"]);
        let e = merge(&[a.clone(), other]).unwrap_err().to_string();
        assert!(e.contains("c.json") && e.contains("other base"), "{e}");
        let twice = part(dir.path(), "d.json", "aa", &["AZJN-0001"]);
        let e = merge(&[a, twice]).unwrap_err().to_string();
        assert!(e.contains("AZJN-0001") && e.contains("d.json"), "{e}");
        assert!(matches!(merge(&[]), Err(ManifestError::Nothing)));
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
