//! LUKS1 and LUKS2 containers (cryptsetup's, L4T's encrypted rootfs
//! APP_ENC): found by their header wherever a container may be (a whole
//! file, inside an Android sparse image, a partition, under a codec),
//! opened with a passphrase or the volume key from a file, and read and
//! written as a volume that transforms bytes: sectors decrypted on the way
//! in, changed blocks encrypted on the way out (`crypt.rs`). Everything
//! else in the container (its headers, keyslots, untouched ciphertext) is
//! the input's.

pub(crate) mod build;
mod crypt;
mod format;
mod from_tar;
pub(crate) mod header;
mod l4t;
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
    /// L4T's passphrase (`l4t.rs`), derived from the EKB key (all zeros
    /// when none was given) and the chip's ECID (`None`: the generic
    /// passphrase), with the container's UUID as context.
    L4t {
        ekb: Arc<Zeroizing<[u8; 16]>>,
        ecid: Option<String>,
    },
}

impl fmt::Debug for LuksKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LuksKey::Passphrase(_) => f.write_str("LuksKey::Passphrase(..)"),
            LuksKey::VolumeKey(_) => f.write_str("LuksKey::VolumeKey(..)"),
            LuksKey::L4t { ecid, .. } => write!(f, "LuksKey::L4t {{ ecid: {ecid:?}, .. }}"),
        }
    }
}

impl LuksKey {
    /// A passphrase file's bytes.
    pub fn passphrase_file(path: &Path) -> Result<LuksKey, LuksError> {
        read_key_file(path).map(|k| LuksKey::Passphrase(Arc::new(k)))
    }

    /// L4T's derivation: the EKB key from a file of 32 hex digits (as
    /// NVIDIA's script reads it: surrounding blanks and a 0x prefix
    /// allowed), or all zeros; per chip with `ecid`, else generic.
    pub fn l4t(ekb_file: Option<&Path>, ecid: Option<&str>) -> Result<LuksKey, LuksError> {
        let mut ekb = Zeroizing::new([0u8; 16]);
        if let Some(path) = ekb_file {
            let text = read_key_file(path)?;
            let bad = || LuksError::EkbKey {
                path: path.to_path_buf(),
            };
            let text = std::str::from_utf8(&text).map_err(|_| bad())?.trim();
            let digits = text
                .strip_prefix("0x")
                .or_else(|| text.strip_prefix("0X"))
                .unwrap_or(text);
            hex::decode_to_slice(digits, &mut ekb[..]).map_err(|_| bad())?;
        }
        if let Some(ecid) = ecid {
            l4t::ecid_hex(ecid).map_err(|why| LuksError::Ecid { why })?;
        }
        Ok(LuksKey::L4t {
            ekb: Arc::new(ekb),
            ecid: ecid.map(str::to_string),
        })
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
    #[error("{path}: {kind} ({cipher}, UUID {uuid}): pass --luks-passphrase-file FILE, or --luks-volume-key-file FILE, or (L4T) --l4t-ekb-key FILE with --ecid ECID or --l4t-generic")]
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
    #[error("the EKB key file {path} does not hold a 16-byte key as 32 hex digits (as NVIDIA's gen_luks_passphrase.py reads it)")]
    EkbKey { path: PathBuf },
    #[error("--ecid: {why}")]
    Ecid { why: String },
    #[error("{path}: --luks-encrypt builds a new LUKS2 container from a plain ext2/3/4 image (raw or Android sparse, uncompressed) or a tarball of the rootfs (any codec), and this is {found}")]
    BuildInput { path: PathBuf, found: String },
    #[error("{path}: --luks-encrypt from a tarball needs the container's size: --luks-size BYTES, the APP_ENC partition's size (flash.sh: the rootfs size less APP's), at least {min} bytes; the filesystem inside gets all but the 16 MiB header")]
    BuildSize { path: PathBuf, min: u64 },
    #[error("{path}: --luks-encrypt from a tarball writes /etc/fstab as flash.sh does, with /boot mounted by the APP partition's UUID: pass --luks-boot-partuuid-file FILE (flash.sh's bootloader/l4t-bootpart-uuid.txt) or --luks-boot-partuuid UUID")]
    BuildBootUuid { path: PathBuf },
    #[error("{path}: its etc/fstab is not a regular file of at most 1 MiB, so it cannot be edited as flash.sh edits it (head -n -1, then the crypt_root and /boot lines); make it a plain file in the archive")]
    BuildFstab { path: PathBuf },
    #[error("{path}: {why}")]
    BuildMember { path: PathBuf, why: String },
    #[error("{path}: cannot make the new filesystem for --luks-encrypt in {scratch}: {why}")]
    BuildFilesystem {
        path: PathBuf,
        scratch: PathBuf,
        why: String,
    },
    #[error("{path}: --luks-encrypt needs the passphrase of the new keyslot: --l4t-ekb-key FILE with --ecid ECID or --l4t-generic (L4T), or --luks-passphrase-file FILE (a new container gets a new random volume key, so --luks-volume-key-file does not apply)")]
    BuildKey { path: PathBuf },
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
    _base: &Path,
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
        Some(key @ (LuksKey::Passphrase(_) | LuksKey::L4t { .. })) => {
            let pass = match key {
                LuksKey::L4t { ekb, ecid } => l4t::passphrase(ekb, ecid.as_deref(), &header.uuid)
                    .map_err(|why| LuksError::Ecid { why })?,
                LuksKey::Passphrase(pass) => Zeroizing::new(pass.to_vec()),
                LuksKey::VolumeKey(_) => unreachable!("matched above"),
            };
            register_passphrase(&pass);
            open_with_passphrase(&header, &outer, &pass, file, kind)?
        }
    };
    let volume = crypt::Crypt::new(outer, &header, &key).map_err(invalid)?;
    Ok(vec![Slot::whole(Box::new(volume))])
}

/// Makes a passphrase known to the panic scrubber (`crate::redact`), as
/// the password and the API token are: a passphrase file as read (with
/// its newline, as cryptsetup takes it) and trimmed, and L4T's derived
/// hex passphrase. Binary key material never reaches text.
pub(super) fn register_passphrase(pass: &[u8]) {
    if let Ok(text) = std::str::from_utf8(pass) {
        crate::redact::register(text);
        crate::redact::register(text.trim());
    }
}

/// The volume key from a passphrase, or the error that says why not.
fn open_with_passphrase(
    header: &header::Header,
    outer: &dyn Volume,
    pass: &[u8],
    file: &Path,
    kind: &'static str,
) -> Result<Zeroizing<Vec<u8>>, LuksError> {
    let path = file.to_path_buf();
    let uuid = header.uuid.clone();
    unlock::volume_key(header, outer, pass).map_err(|e| match e {
        unlock::Failed::Wrong => LuksError::WrongPassphrase {
            path,
            kind,
            uuid,
            keyslots: header.keyslots.len(),
        },
        unlock::Failed::NoKeyslot => LuksError::NoKeyslot { path, kind, uuid },
        unlock::Failed::Io(why) => LuksError::Unlock { path, why },
    })
}
