//! `imprint cat IMAGE PATH`: a file's bytes from inside any input imprint
//! reads, streamed to stdout. Symlinks are followed inside the image, as a
//! chroot at its root would.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::image::{self, EntryType, ImageError, ImageReader};
use crate::plan::ImagePath;

use super::args::CatArgs;
use super::quote::escape;

/// As the kernel's limit on symlinks followed in one lookup.
const MAX_LINKS: usize = 40;

pub(crate) fn run(args: CatArgs) -> Result<ExitCode> {
    let Some(mut path) = super::ls::image_path(Some(&args.path))? else {
        bail!("/ is a directory; `imprint ls` lists it");
    };
    let options = args.image_args.one_partition("cat")?;
    let mut reader = image::open_reader(&args.image, &options)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    for _ in 0..=MAX_LINKS {
        let meta = match reader.cat(&path, &mut out) {
            Ok(meta) => meta,
            // `imprint cat ... | head` is the reader's choice.
            Err(ImageError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                return Ok(ExitCode::SUCCESS)
            }
            Err(e) => return Err(e.into()),
        };
        let Some(meta) = meta else {
            match through_parent_link(reader.as_mut(), &path)? {
                Some(next) => {
                    path = next;
                    continue;
                }
                None => bail!(
                    "{} has no {}",
                    args.image.display(),
                    escape(&path.to_string())
                ),
            }
        };
        match (meta.kind, meta.target.as_deref()) {
            (EntryType::Regular, _) => {
                match out.flush() {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                    _ => {}
                }
                return Ok(ExitCode::SUCCESS);
            }
            (EntryType::Symlink, Some(target)) => match path.follow(target) {
                Some(next) => path = next,
                None => bail!(
                    "{} is a symlink to the image's root directory",
                    escape(&path.to_string())
                ),
            },
            (EntryType::Dir, _) => bail!(
                "{} is a directory; `imprint ls` lists it",
                escape(&path.to_string())
            ),
            _ => bail!(
                "{} is not a regular file in {}",
                escape(&path.to_string()),
                args.image.display()
            ),
        }
    }
    bail!(
        "{} has more than {MAX_LINKS} symlinks in a row at {}; it loops",
        args.image.display(),
        escape(&super::ls::arg_text(&args.path))
    )
}

/// Where `path` leads when one of its directories is a symlink (`/lib` ->
/// `usr/lib` in a merged-/usr image): the path with its first symlinked
/// directory resolved inside the image; `None` when no directory on the
/// way is a symlink.
pub(super) fn through_parent_link(
    reader: &mut dyn ImageReader,
    path: &ImagePath,
) -> Result<Option<ImagePath>> {
    let parts = path.components();
    for depth in 1..parts.len() {
        let prefix = ImagePath::parse(&format!("/{}", parts[..depth].join("/")))
            .expect("components of a valid path");
        let Some(found) = reader.list(Some(&prefix), false)? else {
            return Ok(None);
        };
        let link = match &found[..] {
            [one] if one.path == prefix.relative() => one.meta.target.as_deref(),
            _ => None,
        };
        let Some(target) = link else {
            continue;
        };
        // A link to the root (`/etc/rootlink -> /`) leads to the rest of
        // the path from the root.
        let base = prefix
            .follow(target)
            .map(|b| b.to_string())
            .unwrap_or_default();
        let rest = parts[depth..].join("/");
        return Ok(ImagePath::parse(&format!("{base}/{rest}")));
    }
    Ok(None)
}
