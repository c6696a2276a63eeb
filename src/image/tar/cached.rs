//! A tar scan as the scan cache (`src/cache/`) keeps it: what the scan
//! learned (entries at watched paths, passwd and group, header style, the
//! end of the entries, where a pixz index starts), the compressed stream's
//! boundaries before the places the plan may change, the SHA-256
//! states of kept prefixes, and what cuts inside xz blocks found by
//! decoding up to the cut (`compress/xz/cut_state.rs`: the check's state,
//! up to a MiB of the base's bytes before the cut and a few after it).
//! None of it comes from a device: only from the base image.
//!
//! Reading an entry back checks every field that the writer relies on; a
//! payload that is not exactly what [`encode`] writes is `None`, a miss.

use super::header::HeaderStyle;
use super::scan::{PrefixState, Scan, WatchedEntry};
use crate::cache::format::{Dec, Enc};
use crate::compress::boundary::Boundary;
use crate::compress::{bzip2 as bz2, gzip, xz, zstd as zst, Compression};
use crate::image::{EntryType, FileMeta};
use crate::io::prefix::PrefixKey;
use crate::io::sha256::Sha256;
use crate::plan::model::Special;

/// A kept prefix's state, as [`crate::io::prefix::PrefixCache`] holds it.
pub(super) type KeptPrefix = (PrefixKey, Sha256);

/// What changes what a scan records, beyond the input: part of the key.
pub(super) fn needs(
    codec: Compression,
    watch: &[String],
    targets: &[String],
    captured: &[String],
    max_db: u64,
) -> Vec<u8> {
    let mut e = Enc::default();
    // The payload's layout: a new one never reads an old one's entries.
    e.str("tar/4");
    e.str(codec.name());
    for list in [watch, targets, captured] {
        e.count(list.len());
        for p in list {
            e.str(p);
        }
    }
    e.u64(max_db);
    e.0
}

/// The payload for `scan` and the prefix states; `file_head` is the
/// input's first bytes (a zstd frame header is kept as the input has it).
pub(super) fn encode(
    scan: &Scan,
    kept: &[KeptPrefix],
    cuts: &[xz::CutState],
    file_head: &[u8],
) -> Option<Vec<u8>> {
    let mut e = Enc::default();
    e.u8(match scan.style {
        None => 0,
        Some(HeaderStyle::Ustar) => 1,
        Some(HeaderStyle::Pax) => 2,
        Some(HeaderStyle::Gnu) => 3,
    });
    e.u8(scan.dot_slash.map_or(0, |d| 1 + u8::from(d)));
    for list in [&scan.watched, &scan.links] {
        e.count(list.len());
        for w in list {
            put_entry(&mut e, w);
        }
    }
    let mut symlinks: Vec<(&String, &String)> = scan.symlinks.iter().collect();
    symlinks.sort();
    e.count(symlinks.len());
    for (path, target) in symlinks {
        e.str(path);
        e.str(target);
    }
    put_records(&mut e, &scan.globals);
    e.bool(scan.names_seen);
    let kept_parts = scan.kept();
    for list in [
        kept_parts.implicit_dirs,
        kept_parts.watch,
        kept_parts.capture,
    ] {
        put_strs(&mut e, list);
    }
    put_records(&mut e, kept_parts.captured);
    e.u64(scan.end_of_entries);
    e.u64(scan.total_len);
    e.bool(scan.pixz_index.is_some());
    e.u64(scan.pixz_index.unwrap_or_default());
    e.bool(scan.boundaries.is_some());
    let boundaries = scan.boundaries.as_deref().unwrap_or_default();
    e.count(boundaries.len());
    for b in boundaries {
        put_boundary(&mut e, b, file_head)?;
    }
    e.count(scan.prefix_states.len());
    for p in &scan.prefix_states {
        e.u64(p.len);
        e.bytes(&p.state.export());
    }
    e.count(kept.len());
    for ((head, from, end), state) in kept {
        e.bytes(head);
        e.u64(*from);
        e.u64(*end);
        e.bytes(&state.export());
    }
    e.count(cuts.len());
    for c in cuts {
        c.put(&mut e);
    }
    Some(e.0)
}

/// What a cached scan holds: the scan, kept prefixes' states and xz cut
/// states.
pub(super) type Cached = (Scan, Vec<KeptPrefix>, Vec<xz::CutState>);

/// The scan, prefix states and xz cut states `bytes` hold for an input
/// compressed with `codec`, if they are what [`encode`] writes.
pub(super) fn decode(bytes: &[u8], codec: Compression) -> Option<Cached> {
    let mut d = Dec::new(bytes);
    let mut scan = Scan::default();
    scan.style = match d.u8()? {
        0 => None,
        1 => Some(HeaderStyle::Ustar),
        2 => Some(HeaderStyle::Pax),
        3 => Some(HeaderStyle::Gnu),
        _ => return None,
    };
    scan.dot_slash = match d.u8()? {
        0 => None,
        1 => Some(false),
        2 => Some(true),
        _ => return None,
    };
    for _ in 0..d.count()? {
        scan.watched.push(get_entry(&mut d)?);
    }
    for _ in 0..d.count()? {
        scan.links.push(get_entry(&mut d)?);
    }
    for _ in 0..d.count()? {
        let path = d.str()?;
        scan.symlinks.insert(path, d.str()?);
    }
    scan.globals = get_records(&mut d)?;
    scan.names_seen = d.bool()?;
    let implicit_dirs = get_strs(&mut d)?;
    let watch = get_strs(&mut d)?;
    let capture = get_strs(&mut d)?;
    let captured = get_records(&mut d)?;
    scan = scan.with_kept(implicit_dirs, captured, watch, capture);
    scan.end_of_entries = d.u64()?;
    scan.total_len = d.u64()?;
    let whole = scan.end_of_entries <= scan.total_len
        && scan
            .watched
            .iter()
            .chain(&scan.links)
            .all(|w| w.end <= scan.end_of_entries);
    whole.then_some(())?;
    let has_pixz = d.bool()?;
    let pixz_at = d.u64()?;
    scan.pixz_index = if has_pixz {
        (scan.end_of_entries < pixz_at && pixz_at <= scan.total_len).then_some(Some(pixz_at))?
    } else {
        (pixz_at == 0).then_some(None)?
    };
    let has_boundaries = d.bool()?;
    let mut boundaries = Vec::new();
    for _ in 0..d.count()? {
        let b = get_boundary(&mut d)?;
        let codec_of = match b {
            Boundary::Gzip(_) => Compression::Gzip,
            Boundary::Bzip2(_) => Compression::Bzip2,
            Boundary::Zstd(_) => Compression::Zstd,
            Boundary::Xz(_) => Compression::Xz,
        };
        (b.out() <= scan.end_of_entries && codec_of == codec).then_some(())?;
        boundaries.push(b);
    }
    scan.boundaries = if has_boundaries {
        Some(boundaries)
    } else {
        boundaries.is_empty().then_some(())?;
        None
    };
    for _ in 0..d.count()? {
        let len = d.u64()?;
        let state = Sha256::import(d.bytes()?)?;
        (state.len() == len && len <= scan.total_len).then_some(())?;
        scan.prefix_states.push(PrefixState { len, state });
    }
    let mut kept = Vec::new();
    for _ in 0..d.count()? {
        let head = d.bytes()?.to_vec();
        let (from, end) = (d.u64()?, d.u64()?);
        let state = Sha256::import(d.bytes()?)?;
        let len = (head.len() as u64).checked_add(end.checked_sub(from)?)?;
        (state.len() == len).then_some(())?;
        kept.push(((head, from, end), state));
    }
    let mut cuts = Vec::new();
    for _ in 0..d.count()? {
        let c = xz::CutState::get(&mut d)?;
        // Only for a chunk boundary the scan found (in an xz input).
        let known = scan.boundaries.iter().flatten().any(|b| {
            matches!(b, Boundary::Xz(x) if x.offset == c.offset && x.out == c.out
                && x.chunk.is_some_and(|k| k.at == c.at))
        });
        known.then_some(())?;
        cuts.push(c);
    }
    d.is_done().then_some((scan, kept, cuts))
}

fn put_entry(e: &mut Enc, w: &WatchedEntry) {
    e.str(&w.path);
    e.u8(w.typeflag);
    put_meta(e, &w.meta);
    e.bool(w.linkname.is_some());
    e.str(w.linkname.as_deref().unwrap_or_default());
    put_records(e, &w.records);
    e.bytes(&w.raw_header);
    e.u64(w.start);
    e.u64(w.end);
}

fn get_entry(d: &mut Dec) -> Option<WatchedEntry> {
    let path = d.str()?;
    let typeflag = d.u8()?;
    let meta = get_meta(d)?;
    let has_link = d.bool()?;
    let linkname = Some(d.str()?).filter(|_| has_link);
    let w = WatchedEntry {
        path,
        typeflag,
        meta,
        linkname,
        records: get_records(d)?,
        raw_header: d.bytes()?.to_vec(),
        start: d.u64()?,
        end: d.u64()?,
    };
    (w.start < w.end).then_some(w)
}

fn put_records(e: &mut Enc, records: &[(String, Vec<u8>)]) {
    e.count(records.len());
    for (key, value) in records {
        e.str(key);
        e.bytes(value);
    }
}

fn get_records(d: &mut Dec) -> Option<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for _ in 0..d.count()? {
        out.push((d.str()?, d.bytes()?.to_vec()));
    }
    Some(out)
}

fn put_strs(e: &mut Enc, list: &[String]) {
    e.count(list.len());
    for s in list {
        e.str(s);
    }
}

fn get_strs(d: &mut Dec) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for _ in 0..d.count()? {
        out.push(d.str()?);
    }
    Some(out)
}

fn put_meta(e: &mut Enc, m: &FileMeta) {
    e.u8(match m.kind {
        EntryType::Regular => 0,
        EntryType::Dir => 1,
        EntryType::Symlink => 2,
        // 4.. name the special kind (older entries say 3: unknown).
        EntryType::Other => match m.special {
            None => 3,
            Some(Special::Fifo) => 4,
            Some(Special::Socket) => 5,
            Some(Special::CharDevice) => 6,
            Some(Special::BlockDevice) => 7,
        },
    });
    e.u32(m.mode);
    e.u32(m.uid);
    e.u32(m.gid);
    e.i64(m.mtime);
    e.u64(m.size);
    e.u32(m.links);
    e.bool(m.target.is_some());
    e.str(m.target.as_deref().unwrap_or_default());
    put_strs(e, &m.xattrs);
    e.bool(m.names.is_some());
    let (user, group) = m.names.clone().unwrap_or_default();
    e.str(&user);
    e.str(&group);
}

fn get_meta(d: &mut Dec) -> Option<FileMeta> {
    let kind = d.u8()?;
    let special = match kind {
        4 => Some(Special::Fifo),
        5 => Some(Special::Socket),
        6 => Some(Special::CharDevice),
        7 => Some(Special::BlockDevice),
        _ => None,
    };
    Some(FileMeta {
        special,
        kind: match kind {
            0 => EntryType::Regular,
            1 => EntryType::Dir,
            2 => EntryType::Symlink,
            3..=7 => EntryType::Other,
            _ => return None,
        },
        mode: d.u32()?,
        uid: d.u32()?,
        gid: d.u32()?,
        mtime: d.i64()?,
        size: d.u64()?,
        links: d.u32()?,
        target: {
            let has = d.bool()?;
            Some(d.str()?).filter(|_| has)
        },
        xattrs: get_strs(d)?,
        names: {
            let has = d.bool()?;
            let names = (d.str()?, d.str()?);
            Some(names).filter(|_| has)
        },
    })
}

const GZIP: u8 = 1;
const BZIP2: u8 = 2;
const ZSTD: u8 = 3;
const XZ: u8 = 4;
/// An LZMA2 chunk start inside an xz block.
const XZ_CHUNK: u8 = 5;
/// A deflate window: 32 KiB at most.
const WINDOW: usize = 32 * 1024;

fn put_boundary(e: &mut Enc, b: &Boundary, file_head: &[u8]) -> Option<()> {
    match b {
        Boundary::Gzip(g) => {
            e.u8(GZIP);
            e.u64(g.bit);
            e.u64(g.out);
            e.u32(g.crc);
            e.bytes(&g.window);
        }
        Boundary::Bzip2(z) => {
            let (level, crc) = z.parts();
            e.u8(BZIP2);
            e.u64(z.bit);
            e.u64(z.out);
            e.u8(level);
            e.u32(crc);
        }
        // The rest (the kept blocks' records, the filters) is read from
        // the input's own index when the output is written.
        // A chunk start is checked against the input's chunks when used.
        Boundary::Xz(x) => {
            e.u8(if x.chunk.is_some() { XZ_CHUNK } else { XZ });
            e.u64(x.offset);
            e.u64(x.out);
            if let Some(c) = x.chunk {
                e.u64(c.at);
                e.u64(c.dict_start);
            }
        }
        Boundary::Zstd(z) => {
            let parts = z.export(file_head)?;
            e.u8(ZSTD);
            e.u64(parts.offset);
            e.u64(parts.out);
            e.bytes(&parts.hash);
            e.bytes(&parts.data);
            e.bytes(&parts.header);
        }
    }
    Some(())
}

fn get_boundary(d: &mut Dec) -> Option<Boundary> {
    Some(match d.u8()? {
        GZIP => {
            let g = gzip::Boundary {
                bit: d.u64()?,
                out: d.u64()?,
                crc: d.u32()?,
                window: d.bytes()?.to_vec(),
            };
            // A window shorter than 32 KiB only at the stream's start.
            let window_ok = g.window.len() == WINDOW || g.window.len() as u64 == g.out;
            (window_ok && g.bit >= 80).then_some(())?;
            Boundary::Gzip(g)
        }
        BZIP2 => {
            let (bit, out) = (d.u64()?, d.u64()?);
            Boundary::Bzip2(bz2::Boundary::from_parts(bit, out, d.u8()?, d.u32()?)?)
        }
        ZSTD => Boundary::Zstd(zst::Boundary::import(zst::BoundaryParts {
            offset: d.u64()?,
            out: d.u64()?,
            hash: d.bytes()?.to_vec(),
            data: d.bytes()?.to_vec(),
            header: d.bytes()?.to_vec(),
        })?),
        XZ => Boundary::Xz(xz::Boundary {
            offset: d.u64()?,
            out: d.u64()?,
            chunk: None,
        }),
        XZ_CHUNK => Boundary::Xz(xz::Boundary {
            offset: d.u64()?,
            out: d.u64()?,
            chunk: Some(xz::ChunkCut {
                at: d.u64()?,
                dict_start: d.u64()?,
            }),
        }),
        _ => return None,
    })
}
