//! Telling inputs apart by their bytes, never their names, outside in:
//! the compression (gzip, bzip2, zstd, xz magic), then what the bytes
//! inside are (an Android sparse image, a partitioned disk, an ext2/3/4
//! filesystem, a tar stream). A compressed input is looked at through its
//! first decompressed bytes, so a `system.img.zst` (whose ext4 image starts
//! with zeros, which would read as an empty tar) is seen for what it is.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::formats::content_of;
use super::{disk, ImageError};
use crate::compress::{trailing, unsupported, zstd, Compression};

/// How much of an input (decompressed, if it is compressed) detection
/// reads: a GPT header on a 4 KiB-sector disk sits at byte 4096.
const HEAD: usize = 64 * 1024;

/// What the (decompressed) bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Tar,
    Ext4,
    Sparse,
    Disk(disk::Scheme),
    /// A container row of the format table (`formats.rs`) names itself.
    /// Only the test container (`xor_test.rs`) detects as one until the
    /// first real one (LUKS, issue 24) lands.
    #[cfg_attr(not(test), allow(dead_code))]
    Container(&'static str),
}

/// An input's layers: its compression and what is inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageKind {
    pub(crate) compression: Compression,
    pub(crate) content: Content,
}

impl ImageKind {
    /// How reports and `--json` (`input_kind`) name it.
    pub fn describe(self) -> String {
        let inner = match self.content {
            Content::Tar => return format!("tar archive ({})", self.compression.name()),
            Content::Ext4 => "raw ext2/3/4 image".to_string(),
            Content::Sparse => "Android sparse image".to_string(),
            Content::Disk(scheme) => format!("{} disk image", scheme.name()),
            Content::Container(name) => name.to_string(),
        };
        match self.compression {
            Compression::None => inner,
            c => format!("{inner} ({})", c.name()),
        }
    }
}

/// Reads up to `HEAD` bytes.
fn read_head(reader: &mut dyn Read) -> std::io::Result<Vec<u8>> {
    let mut head = vec![0u8; HEAD];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    head.truncate(filled);
    Ok(head)
}

/// Detects an input's layers from its first bytes.
pub fn detect(path: &Path) -> Result<ImageKind, ImageError> {
    let open_err = |source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let head = read_head(&mut file).map_err(open_err)?;
    let unknown = |found: String| ImageError::Unknown {
        path: path.to_path_buf(),
        found,
    };
    let Some(compression) = Compression::detect(&head) else {
        return match content_of(&head) {
            Some(content) => Ok(ImageKind {
                compression: Compression::None,
                content,
            }),
            None if head.is_empty() => Err(unknown("the file is empty".into())),
            None => match unsupported::detect(&head) {
                Some(codec) => Err(ImageError::UnreadCodec {
                    path: path.to_path_buf(),
                    codec: codec.name,
                    convert: codec.convert(path),
                }),
                None => Err(unknown("its first bytes match no known format".into())),
            },
        };
    };
    refuse_what_the_codec_refuses(path, compression, &head)?;
    let file = File::open(path).map_err(open_err)?;
    let mut decoder = compression.decoder(file);
    let inner = match read_head(&mut decoder) {
        Ok(inner) => inner,
        // A damaged stream: let the tar reader say what is wrong, in its
        // words, as it did before raw images could be compressed.
        Err(_) => {
            return Ok(ImageKind {
                compression,
                content: Content::Tar,
            })
        }
    };
    match content_of(&inner) {
        Some(content) => Ok(ImageKind {
            compression,
            content,
        }),
        // Nothing but zeros (an empty archive): the tar reader says so.
        None if inner.iter().all(|&b| b == 0) => Ok(ImageKind {
            compression,
            content: Content::Tar,
        }),
        None => Err(unknown(format!(
            "{}-compressed data that is neither a tar archive nor a filesystem or disk image",
            compression.name()
        ))),
    }
}

/// Valid-looking inputs the codec's own tool refuses, said before any
/// decoding: zero padding zstd (or xz, in lengths not a multiple of 4)
/// does not allow, and zstd windows past imprint's memory bound.
fn refuse_what_the_codec_refuses(
    path: &Path,
    compression: Compression,
    head: &[u8],
) -> Result<(), ImageError> {
    let open_err = |source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    if let Some(p) = trailing::padding_refused(&file, compression).map_err(open_err)? {
        return Err(ImageError::Padding {
            path: path.to_path_buf(),
            codec: compression.name(),
            data_end: p.data_end,
            zeros: p.zeros,
            rule: p.rule,
        });
    }
    if compression == Compression::Zstd {
        if let Some(window) = zstd::window_needed(head).filter(|&w| w > zstd::MAX_WINDOW) {
            return Err(ImageError::ZstdWindow {
                path: path.to_path_buf(),
                window_mib: window.div_ceil(1 << 20),
                max_mib: zstd::MAX_WINDOW >> 20,
            });
        }
    }
    Ok(())
}
