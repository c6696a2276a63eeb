//! `imprint ls IMAGE [PATH]`: what is at a path inside any input imprint
//! reads, like `ls -l`, or as one JSON document (`imprint.ls/1`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::image::{self, EntryType, Listed};
use crate::plan::ImagePath;

use super::args::LsArgs;

pub(crate) fn run(args: LsArgs) -> Result<ExitCode> {
    let path = image_path(args.path.as_deref())?;
    let options = args.image_args.one_partition("ls")?;
    let mut reader = image::open_reader(&args.image, &options)?;
    let mut path = path;
    let mut listed = reader.list(path.as_ref(), args.recursive)?;
    // A directory on the way may be a symlink (`/lib` -> `usr/lib`).
    for _ in 0..40 {
        let Some(p) = path.as_ref().filter(|_| listed.is_none()) else {
            break;
        };
        let Some(next) = super::cat::through_parent_link(reader.as_mut(), p)? else {
            break;
        };
        listed = reader.list(Some(&next), args.recursive)?;
        path = Some(next);
    }
    let Some(entries) = listed else {
        bail!(
            "{} has nothing at {}",
            args.image.display(),
            args.path.as_deref().unwrap_or("/")
        );
    };
    // Names are shown relative to the directory listed, as ls does.
    let listed_dir = path.as_ref().map(ImagePath::relative).unwrap_or_default();
    let single = entries.len() == 1 && entries[0].path == listed_dir;
    let shown = |l: &Listed| -> String {
        if single {
            return format!("/{}", l.path);
        }
        match l.path.strip_prefix(&listed_dir) {
            Some(rest) if !listed_dir.is_empty() => rest.trim_start_matches('/').to_string(),
            _ => l.path.clone(),
        }
    };
    if args.json {
        super::print_json(&LsDocument {
            entries: entries.iter().map(EntryDocument::new).collect(),
            image: args.image.display().to_string(),
            path: path.map_or("/".to_string(), |p| p.to_string()),
            schema: "imprint.ls/1",
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let width = entries
        .iter()
        .map(|l| l.meta.size.to_string().len())
        .max()
        .unwrap_or(1);
    for l in &entries {
        let m = &l.meta;
        let mut line = format!(
            "{} {}:{} {:>width$} {} {}",
            mode_string(l),
            m.uid,
            m.gid,
            m.size,
            date(m.mtime),
            shown(l)
        );
        if let Some(target) = &m.target {
            line.push_str(&format!(" -> {target}"));
        }
        if let Some(link) = &l.hard_link {
            line.push_str(&format!(" link to /{link}"));
        }
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `None` for the root.
pub(super) fn image_path(text: Option<&str>) -> Result<Option<ImagePath>> {
    match text {
        None => Ok(None),
        Some(t) if t.trim_matches('/').is_empty() && t.starts_with('/') => Ok(None),
        Some(t) => ImagePath::parse(t).map(Some).with_context(|| {
            format!("{t:?} is not a path inside the image: give an absolute path without '..', e.g. /etc/hostname")
        }),
    }
}

/// `-rw-r--r--`, with set-id and sticky bits as ls shows them.
fn mode_string(l: &Listed) -> String {
    let m = &l.meta;
    let kind = match (m.kind, &l.hard_link) {
        (_, Some(_)) => 'h',
        (EntryType::Regular, _) => '-',
        (EntryType::Dir, _) => 'd',
        (EntryType::Symlink, _) => 'l',
        (EntryType::Other, _) => '?',
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

/// `imprint ls --json` (fields in alphabetical order, as the other documents).
#[derive(Serialize)]
struct LsDocument {
    entries: Vec<EntryDocument>,
    image: String,
    path: String,
    schema: &'static str,
}

#[derive(Serialize)]
struct EntryDocument {
    gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    hard_link: Option<String>,
    mode: String,
    mtime: i64,
    path: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(rename = "type")]
    kind: &'static str,
    uid: u32,
}

impl EntryDocument {
    fn new(l: &Listed) -> Self {
        EntryDocument {
            gid: l.meta.gid,
            hard_link: l.hard_link.as_ref().map(|p| format!("/{p}")),
            mode: format!("{:04o}", l.meta.mode),
            mtime: l.meta.mtime,
            path: format!("/{}", l.path),
            size: l.meta.size,
            target: l.meta.target.clone(),
            kind: match (l.meta.kind, &l.hard_link) {
                (_, Some(_)) => "hardlink",
                (EntryType::Regular, _) => "file",
                (EntryType::Dir, _) => "dir",
                (EntryType::Symlink, _) => "symlink",
                (EntryType::Other, _) => "other",
            },
            uid: l.meta.uid,
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
