//! `imprint ls IMAGE [PATH]`: what is at a path inside any input imprint
//! reads, like `ls -l`, or as one JSON document (`imprint.ls/1`).

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::quote::escape;
use crate::image::{self, EntryType, ImageError, ImageReader, Listed};
use crate::plan::model::Special;
use crate::plan::{name, ImagePath};

use super::args::LsArgs;

pub(crate) fn run(args: LsArgs) -> Result<ExitCode> {
    let options = args.image_args.one_partition("ls")?;
    let mut reader = image::open_reader(&args.image, &options)?;
    let mut path = image_path(args.path.as_deref())?;
    let mut printer = Printer {
        out: std::io::BufWriter::new(std::io::stdout().lock()),
        json: args.json,
        xattrs: args.xattrs,
        started: false,
        listed_dir: String::new(),
    };
    match list(&args, reader.as_mut(), &mut path, &mut printer) {
        // `imprint ls IMG | head` is the reader's choice.
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

/// Whether `e` is a write to a reader that has gone.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let io = match c.downcast_ref::<ImageError>() {
            Some(ImageError::Output(io)) => Some(io),
            _ => c.downcast_ref::<std::io::Error>(),
        };
        io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Streams the listing: each entry is printed as the image yields it, so
/// memory does not grow with the number of entries.
fn list(
    args: &LsArgs,
    reader: &mut dyn ImageReader,
    path: &mut Option<ImagePath>,
    printer: &mut Printer<impl Write>,
) -> Result<ExitCode> {
    // A directory on the way may be a symlink (`/lib` -> `usr/lib`).
    let mut hops = 0;
    loop {
        // Names are shown relative to the directory listed, as ls does.
        printer.listed_dir = path.as_ref().map(ImagePath::relative).unwrap_or_default();
        let found = reader.list_each(path.as_ref(), args.recursive, &mut |l| {
            printer.entry(l).map_err(ImageError::Output)
        })?;
        if found {
            break;
        }
        let next = match path.as_ref() {
            Some(p) if hops < 40 => super::cat::through_parent_link(reader, p)?,
            _ => None,
        };
        let Some(next) = next else {
            bail!(
                "{} has nothing at {}",
                args.image.display(),
                escape(&arg_text(args.path.as_deref().unwrap_or(OsStr::new("/"))))
            );
        };
        *path = Some(next);
        hops += 1;
    }
    let resolved = path.as_ref().map_or("/".to_string(), |p| p.to_string());
    printer.finish(&args.image.display().to_string(), &resolved)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints entries as they come: lines like `ls -l`, or the
/// `imprint.ls/1` document with one entry a line.
struct Printer<W: Write> {
    out: W,
    json: bool,
    xattrs: bool,
    /// Whether the JSON document's head is out.
    started: bool,
    listed_dir: String,
}

impl<W: Write> Printer<W> {
    fn entry(&mut self, l: &Listed) -> std::io::Result<()> {
        if self.json {
            let doc = serde_json::to_string(&EntryDocument::new(l, self.xattrs))?;
            let sep = if self.started {
                ","
            } else {
                "{\n  \"entries\": ["
            };
            self.started = true;
            return write!(self.out, "{sep}\n    {doc}");
        }
        let m = &l.meta;
        let shown = if l.path == self.listed_dir {
            format!("/{}", l.path)
        } else {
            match l.path.strip_prefix(&self.listed_dir) {
                Some(rest) if !self.listed_dir.is_empty() => {
                    rest.trim_start_matches('/').to_string()
                }
                _ => l.path.clone(),
            }
        };
        write!(
            self.out,
            "{} {}:{} {:>9} {} {}",
            mode_string(l),
            m.uid,
            m.gid,
            m.size,
            date(m.mtime),
            escape(&shown)
        )?;
        if let Some(target) = &m.target {
            write!(self.out, " -> {}", escape(target))?;
        }
        if let Some(link) = &l.hard_link {
            write!(self.out, " link to /{}", escape(link))?;
        }
        writeln!(self.out)?;
        if self.xattrs {
            for name in &m.xattrs {
                writeln!(self.out, "    xattr {}", escape(name))?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, image: &str, path: &str) -> std::io::Result<()> {
        if self.json {
            if self.started {
                write!(self.out, "\n  ],")?;
            } else {
                write!(self.out, "{{\n  \"entries\": [],")?;
            }
            let text = |s: &str| serde_json::to_string(s).expect("a string serialises");
            let (path, escaped) = json_name(path);
            let escaped = escaped
                .map(|e| format!("\n  \"path_escaped\": {},", text(&e)))
                .unwrap_or_default();
            writeln!(
                self.out,
                "\n  \"image\": {},\n  \"path\": {},{escaped}\n  \"schema\": \"imprint.ls/1\"\n}}",
                text(image),
                text(&path)
            )?;
        }
        self.out.flush()
    }
}

/// A path argument as imprint's text for names: its bytes as the shell
/// passed them, whatever the charset (see `plan::name`).
pub(super) fn arg_text(arg: &OsStr) -> std::borrow::Cow<'_, str> {
    name::from_bytes(arg.as_bytes())
}

/// `None` for the root.
pub(super) fn image_path(arg: Option<&OsStr>) -> Result<Option<ImagePath>> {
    let Some(arg) = arg else {
        return Ok(None);
    };
    let t = arg_text(arg);
    if t.trim_matches('/').is_empty() && t.starts_with('/') {
        return Ok(None);
    }
    ImagePath::from_bytes(arg.as_bytes()).map(Some).with_context(|| {
        format!(
            "\"{}\" is not a path inside the image: give an absolute path without '..', e.g. /etc/hostname",
            escape(&t)
        )
    })
}

/// `-rw-r--r--`, with set-id and sticky bits as ls shows them.
fn mode_string(l: &Listed) -> String {
    let m = &l.meta;
    let kind = match (m.kind, &l.hard_link) {
        (_, Some(_)) => 'h',
        (EntryType::Regular, _) => '-',
        (EntryType::Dir, _) => 'd',
        (EntryType::Symlink, _) => 'l',
        (EntryType::Other, _) => m.special.map_or('?', Special::letter),
    };
    let mut s = String::from(kind);
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (m.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, m.mode & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `YYYY-MM-DD HH:MM` in UTC (the image's times are not the host's).
fn date(mtime: i64) -> String {
    let days = mtime.div_euclid(86_400);
    let secs = mtime.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// One entry of `imprint ls --json` (`imprint.ls/1`; fields in
/// alphabetical order, as the other documents). A name whose bytes are not
/// UTF-8 (a legacy charset) is text with U+FFFD where a byte is not; its
/// `*_escaped` field then spells it exactly, as `tar -tv` and the text
/// listing do (`\377`), and is absent otherwise.
#[derive(Serialize)]
struct EntryDocument {
    gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    hard_link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hard_link_escaped: Option<String>,
    mode: String,
    mtime: i64,
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_escaped: Option<String>,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_escaped: Option<String>,
    #[serde(rename = "type")]
    kind: &'static str,
    uid: u32,
    /// With `--xattrs`: the names of the file's extended attributes.
    #[serde(skip_serializing_if = "Option::is_none")]
    xattrs: Option<Vec<String>>,
}

/// A name as JSON text and, when its bytes are not UTF-8, its exact
/// escaped spelling.
fn json_name(text: &str) -> (String, Option<String>) {
    let escaped = (!name::is_utf8(text)).then(|| escape(text).into_owned());
    (name::lossy(text).into_owned(), escaped)
}

impl EntryDocument {
    fn new(l: &Listed, xattrs: bool) -> Self {
        let (path, path_escaped) = json_name(&format!("/{}", l.path));
        let hard_link = l.hard_link.as_ref().map(|p| json_name(&format!("/{p}")));
        let target = l.meta.target.as_deref().map(json_name);
        let (hard_link, hard_link_escaped) = hard_link.unzip();
        let (target, target_escaped) = target.unzip();
        EntryDocument {
            gid: l.meta.gid,
            hard_link,
            hard_link_escaped: hard_link_escaped.flatten(),
            mode: format!("{:04o}", l.meta.mode),
            mtime: l.meta.mtime,
            path,
            path_escaped,
            size: l.meta.size,
            target,
            target_escaped: target_escaped.flatten(),
            kind: match (l.meta.kind, &l.hard_link) {
                (_, Some(_)) => "hardlink",
                (EntryType::Regular, _) => "file",
                (EntryType::Dir, _) => "dir",
                (EntryType::Symlink, _) => "symlink",
                (EntryType::Other, _) => l.meta.special.map_or("other", Special::word),
            },
            uid: l.meta.uid,
            xattrs: xattrs.then(|| l.meta.xattrs.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_modes_read_like_ls() {
        assert_eq!(date(0), "1970-01-01 00:00");
        assert_eq!(date(1_700_000_123), "2023-11-14 22:15");
        assert_eq!(date(-631_152_000), "1950-01-01 00:00");
        let l = |kind, mode| Listed {
            path: "x".into(),
            meta: crate::image::FileMeta {
                kind,
                mode,
                ..Default::default()
            },
            hard_link: None,
        };
        assert_eq!(mode_string(&l(EntryType::Regular, 0o4755)), "-rwsr-xr-x");
        assert_eq!(mode_string(&l(EntryType::Dir, 0o1777)), "drwxrwxrwt");
        assert_eq!(mode_string(&l(EntryType::Symlink, 0o777)), "lrwxrwxrwx");
        assert_eq!(mode_string(&l(EntryType::Regular, 0o2640)), "-rw-r-S---");
    }
}
