//! LUKS1 and LUKS2 containers (cryptsetup's, L4T's encrypted rootfs
//! APP_ENC): found by their header wherever a container may be (a whole
//! file, inside an Android sparse image, a partition, under a codec),
//! opened with a passphrase or the volume key from a file, and read and
//! written as a volume that transforms bytes: sectors decrypted on the way
//! in, changed blocks encrypted on the way out (`crypt.rs`). Everything
//! else in the container (its headers, keyslots, untouched ciphertext) is
//! the input's.

mod crypt;
pub(crate) mod header;
mod unlock;
mod xts;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use zeroize::Zeroizing;

use super::formats::{Format, Open, Slot};
use super::volume::Volume;
use super::{Content, ImageError, ImageOptions};

const LUKS1: &str = "LUKS1 container";
const LUKS2: &str = "LUKS2 container";

/// The row: found by its header magic, also inside partitions and sparse
/// images.
pub(super) const ROW: Format = Format {
    detect: |head| match header::detect(head)? {
        1 => Some(Content::Container(LUKS1)),
        _ => Some(Content::Container(LUKS2)),
    },
    is: |c| c == Content::Container(LUKS1) || c == Content::Container(LUKS2),
    partitioned: false,
    open: Open::Container {
        inner: open,
        nests: true,
    },
};

/// How a LUKS container is opened. Read from files only (never a flag's
/// value), held in zeroizing buffers; `Debug` shows which, never the bytes.
#[derive(Clone)]
pub enum LuksKey {
    /// A passphrase: the whole file, every byte (as `cryptsetup
    /// --key-file` reads it, a trailing newline included).
    Passphrase(Arc<Zeroizing<Vec<u8>>>),
    /// The volume key itself, raw bytes (as `cryptsetup --volume-key-file`).
    VolumeKey(Arc<Zeroizing<Vec<u8>>>),
}

impl fmt::Debug for LuksKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LuksKey::Passphrase(_) => f.write_str("LuksKey::Passphrase(..)"),
            LuksKey::VolumeKey(_) => f.write_str("LuksKey::VolumeKey(..)"),
        }
    }
}

impl LuksKey {
    /// A passphrase file's bytes.
    pub fn passphrase_file(path: &Path) -> Result<LuksKey, LuksError> {
        read_key_file(path).map(|k| LuksKey::Passphrase(Arc::new(k)))
    }

    /// A volume key file's bytes.
    pub fn volume_key_file(path: &Path) -> Result<LuksKey, LuksError> {
        read_key_file(path).map(|k| LuksKey::VolumeKey(Arc::new(k)))
    }
}

/// At most this much of a key file is read (cryptsetup's default
/// --keyfile-size limit is 8 MiB; a passphrase is far less).
const KEY_FILE_MAX: u64 = 8 << 20;

fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, LuksError> {
    use std::io::Read;
    let fail = |source| LuksError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(fail)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(KEY_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(fail)?;
    if bytes.is_empty() || bytes.len() as u64 > KEY_FILE_MAX {
        return Err(LuksError::KeyFileSize {
            path: path.to_path_buf(),
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

#[derive(Debug, Error)]
pub enum LuksError {
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("{path}: {kind} ({cipher}, UUID {uuid}): pass --luks-passphrase-file FILE, or --luks-volume-key-file FILE")]
    NeedKey {
        path: PathBuf,
        kind: &'static str,
        cipher: &'static str,
        uuid: String,
    },
    #[error("{path}: {kind} (UUID {uuid}): the passphrase opens none of its {keyslots} keyslots; check --luks-passphrase-file (every byte of the file is the passphrase, a trailing newline too)")]
    WrongPassphrase {
        path: PathBuf,
        kind: &'static str,
        uuid: String,
        keyslots: usize,
    },
    #[error("{path}: {kind} (UUID {uuid}) has no keyslot to open with a passphrase; pass its volume key with --luks-volume-key-file FILE")]
    NoKeyslot {
        path: PathBuf,
        kind: &'static str,
        uuid: String,
    },
    #[error("{path}: {kind} (UUID {uuid}): the volume key from --luks-volume-key-file is not this container's ({len} bytes; it takes {key_size} raw bytes, as `cryptsetup luksDump --dump-volume-key` shows in hex)")]
    WrongVolumeKey {
        path: PathBuf,
        kind: &'static str,
        uuid: String,
        len: usize,
        key_size: usize,
    },
    #[error("{path}: {why}")]
    Unlock { path: PathBuf, why: String },
    #[error("cannot read the LUKS key file {path}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the LUKS key file {path} has {len} bytes: it must hold 1 byte to 8 MiB")]
    KeyFileSize { path: PathBuf, len: usize },
}

/// The volume inside: the header read and checked, the key found, the
/// data segment as a decrypting volume.
fn open(
    outer: Box<dyn Volume>,
    file: &Path,
    options: &ImageOptions,
) -> Result<Vec<Slot>, ImageError> {
    let invalid = |why: String| LuksError::Invalid {
        path: file.to_path_buf(),
        why,
    };
    let len = outer.len();
    let header = header::read(&outer, len)
        .map_err(|e| invalid(format!("a LUKS container imprint cannot open: {}", e.0)))?;
    let kind = if header.version == 1 { LUKS1 } else { LUKS2 };
    if header.from_secondary {
        tracing::info!(
            image = %file.display(),
            "the primary LUKS2 header is damaged; reading its secondary copy"
        );
    }
    let key = match &options.luks {
        None => {
            return Err(LuksError::NeedKey {
                path: file.to_path_buf(),
                kind,
                cipher: header::CIPHER,
                uuid: header.uuid,
            }
            .into())
        }
        Some(LuksKey::VolumeKey(key)) => {
            if !unlock::is_volume_key(&header, key) {
                return Err(LuksError::WrongVolumeKey {
                    path: file.to_path_buf(),
                    kind,
                    uuid: header.uuid,
                    len: key.len(),
                    key_size: header.key_size,
                }
                .into());
            }
            Zeroizing::new(key.to_vec())
        }
        Some(LuksKey::Passphrase(pass)) => match unlock::volume_key(&header, &outer, pass) {
            Ok(key) => key,
            Err(unlock::Failed::Wrong) => {
                return Err(LuksError::WrongPassphrase {
                    path: file.to_path_buf(),
                    kind,
                    uuid: header.uuid,
                    keyslots: header.keyslots.len(),
                }
                .into())
            }
            Err(unlock::Failed::NoKeyslot) => {
                return Err(LuksError::NoKeyslot {
                    path: file.to_path_buf(),
                    kind,
                    uuid: header.uuid,
                }
                .into())
            }
            Err(unlock::Failed::Io(why)) => {
                return Err(LuksError::Unlock {
                    path: file.to_path_buf(),
                    why,
                }
                .into())
            }
        },
    };
    let volume = crypt::Crypt::new(outer, &header, &key).map_err(invalid)?;
    Ok(vec![Slot::whole(Box::new(volume))])
}
