//! Where outputs go: the output path for an input, the output directory
//! (created private, refused when another user could swap files in it).

use std::path::{Path, PathBuf};

use super::ProvisionError;
use crate::identity::Serial;

/// Why an output directory is not safe to write an image into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnsafeDir {
    #[error("it belongs to uid {uid}, not to you")]
    ForeignOwner { uid: u32 },
    #[error("others can write to it (mode {mode:o}) and it has no sticky bit")]
    OpenToOthers { mode: u32 },
}

/// Where an output's large scratch files may go: its own directory.
pub(super) fn scratch_dir(output: Option<&Path>) -> PathBuf {
    output
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Works out the final output path: a file, or a directory (existing, or
/// named with a trailing `/`, then created) in which the name is
/// `<serial>-<input name>`.
pub(crate) fn output_path(
    input: &Path,
    output: &Path,
    serial: &Serial,
    force: bool,
) -> Result<PathBuf, ProvisionError> {
    let as_dir = output.as_os_str().to_string_lossy().ends_with('/') || output.is_dir();
    let path = if as_dir {
        output_dir(output)?;
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
    check_output_dir(parent)?;
    Ok(path)
}

/// `dir` spelled as a directory (with a trailing `/`), so [`output_path`]
/// treats it as one even before it exists.
pub(crate) fn as_directory(dir: &Path) -> PathBuf {
    let mut text = dir.as_os_str().to_owned();
    if !text.to_string_lossy().ends_with('/') {
        text.push("/");
    }
    PathBuf::from(text)
}

/// Makes sure `dir` exists as a directory outputs may go into: created if
/// missing (with its parents; mode 0700 less the umask, so never writable
/// by others), and refused if another user could swap files in it.
pub(crate) fn output_dir(dir: &Path) -> Result<(), ProvisionError> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ProvisionError::CreateOutputDir {
                dir: dir.to_path_buf(),
                source,
            })?;
    }
    if !dir.is_dir() {
        return Err(ProvisionError::NoOutputDir(dir.to_path_buf()));
    }
    check_output_dir(dir)
}

/// Refuses a directory owned by another user (root aside), or writable by
/// others without the sticky bit: either could replace the image after
/// imprint wrote it.
pub(super) fn check_output_dir(dir: &Path) -> Result<(), ProvisionError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|source| ProvisionError::CreateOutputDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let me = rustix::process::geteuid().as_raw();
    let foreign_owner = meta.uid() != me && meta.uid() != 0;
    let open_to_others = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
    if foreign_owner || open_to_others {
        return Err(ProvisionError::UnsafeOutputDir {
            dir: dir.to_path_buf(),
            why: if foreign_owner {
                UnsafeDir::ForeignOwner { uid: meta.uid() }
            } else {
                UnsafeDir::OpenToOthers {
                    mode: meta.mode() & 0o7777,
                }
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_others_can_write_needs_the_sticky_bit() {
        let dir = tempfile::tempdir().unwrap();
        let set = |mode| {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(0o777);
        let err = check_output_dir(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                ProvisionError::UnsafeOutputDir {
                    why: UnsafeDir::OpenToOthers { mode: 0o777 },
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains(
                "is not safe: others can write to it (mode 777) and it has no sticky bit"
            ),
            "{err}"
        );
        set(0o1777);
        check_output_dir(dir.path()).unwrap();
        set(0o700);
        check_output_dir(dir.path()).unwrap();
    }
}
