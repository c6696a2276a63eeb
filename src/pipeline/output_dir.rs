//! The check that an output directory is the user's own.

use std::path::Path;

use super::ProvisionError;

/// Why an output directory is not safe to write an image into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnsafeDir {
    #[error("it belongs to uid {uid}, not to you")]
    ForeignOwner { uid: u32 },
    #[error("others can write to it (mode {mode:o}) and it has no sticky bit")]
    OpenToOthers { mode: u32 },
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
