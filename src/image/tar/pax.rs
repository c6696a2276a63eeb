//! Pax extended header records: reading them into the few values imprint
//! uses, naming the extended attributes and ACLs they carry, and deciding
//! which of a replaced entry's records the new entry keeps.
//!
//! Attributes travel in three spellings: `SCHILY.xattr.NAME=raw value`
//! (GNU tar `--xattrs`, bsdtar, star), `LIBARCHIVE.xattr.URL-ENCODED-NAME=
//! base64 value` (bsdtar writes it beside the SCHILY form) and ACLs as
//! `SCHILY.acl.access` / `SCHILY.acl.default` text.

use crate::plan::kept_on_replace;

/// One record: key and raw value bytes.
pub(super) type Record = (String, Vec<u8>);

/// The records of a pax extended header, in order. Records that do not
/// parse end the list, as GNU tar and bsdtar stop there too.
pub(super) fn parse_records(data: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(space) = rest.iter().position(|&b| b == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= space || len > rest.len() {
            break;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let key = String::from_utf8_lossy(&record[..eq]).into_owned();
            out.push((key, record[eq + 1..].to_vec()));
        }
        rest = &rest[len..];
    }
    out
}

/// One record in the pax format: `LEN KEY=VALUE\n`, LEN counting itself.
pub(super) fn encode_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len += 1;
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// The extended attribute a record carries, by its Linux name: an ACL
/// shows as `system.posix_acl_access` / `system.posix_acl_default`.
pub(super) fn xattr_name(key: &str) -> Option<String> {
    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
        return Some(name.to_string());
    }
    if let Some(encoded) = key.strip_prefix("LIBARCHIVE.xattr.") {
        return Some(url_decode(encoded));
    }
    match key {
        "SCHILY.acl.access" => Some("system.posix_acl_access".into()),
        "SCHILY.acl.default" => Some("system.posix_acl_default".into()),
        "SCHILY.acl.ace" => Some("system.nfs4_acl".into()),
        _ => None,
    }
}

/// libarchive percent-encodes attribute names in record keys.
fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The attribute names the records carry, sorted and without repeats.
pub(super) fn xattr_names<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<String> {
    let mut names: Vec<String> = records
        .into_iter()
        .filter_map(|(k, _)| xattr_name(k))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The records of a replaced entry that its replacement carries on: the
/// attributes [`kept_on_replace`] keeps (security labels), unless the
/// plan sets the same name (`set`). ACLs, user and trusted attributes and
/// everything else about the old file (times, sparse maps) go.
pub(super) fn kept_records(old: &[Record], set: &[String]) -> Vec<Record> {
    old.iter()
        .filter(|(key, _)| {
            let Some(name) = xattr_name(key) else {
                return false;
            };
            let acl = key.starts_with("SCHILY.acl.");
            !acl && kept_on_replace(&name) && !set.contains(&name)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_binary_values() {
        let mut data = encode_record("path", b"x");
        assert_eq!(data, b"9 path=x\n");
        assert_eq!(encode_record("path", b"xy"), b"11 path=xy\n");
        data.extend(encode_record("SCHILY.xattr.security.ima", b"\0\x01=\n"));
        let r = parse_records(&data);
        assert_eq!(r[0], ("path".to_string(), b"x".to_vec()));
        assert_eq!(
            r[1],
            (
                "SCHILY.xattr.security.ima".to_string(),
                b"\0\x01=\n".to_vec()
            )
        );
    }

    #[test]
    fn names_and_what_a_replacement_keeps() {
        let old: Vec<Record> = [
            ("SCHILY.xattr.security.selinux", "a"),
            ("LIBARCHIVE.xattr.security.selinux", "YQ=="),
            ("LIBARCHIVE.xattr.user.%41b", "eA=="),
            ("SCHILY.xattr.user.x", "1"),
            ("SCHILY.acl.access", "user::rw-,user:1234:r--"),
            ("SCHILY.xattr.system.posix_acl_access", "\x02"),
            ("SCHILY.xattr.security.ima", "h"),
            ("atime", "1.5"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
        assert_eq!(
            xattr_names(&old),
            [
                "security.ima",
                "security.selinux",
                "system.posix_acl_access",
                "user.Ab",
                "user.x"
            ]
        );
        let kept = kept_records(&old, &["security.ima".into()]);
        let kept: Vec<&str> = kept.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kept,
            [
                "SCHILY.xattr.security.selinux",
                "LIBARCHIVE.xattr.security.selinux"
            ]
        );
    }
}
