//! `--devices FILE`: one device a row, with its own template variables.
//! CSV (RFC 4180 quoting, read by the `csv` crate), TSV (by a `.tsv` name,
//! or tabs and no comma in the header) or JSON lines (by a
//! `.jsonl`/`.ndjson` name or a first line starting with `{`). The header
//! names the columns; one must be `serial`, the others become `{name}`
//! variables for that device. The file is UTF-8 text: other bytes are an
//! error naming their line, never replaced.

use std::collections::BTreeMap;

use thiserror::Error;

use super::ExtraVars;
use crate::identity::{IdentityError, Serial};

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DevicesError {
    #[error("{origin}: {why}")]
    Format { origin: String, why: String },
    #[error("{origin}, line {line}: {}", crate::excerpt::Cut(why))]
    Row {
        origin: String,
        line: usize,
        why: String,
    },
    #[error("{origin}, line {line}: not UTF-8 text (byte {byte} of the file); save it as UTF-8")]
    NotUtf8 {
        origin: String,
        line: usize,
        byte: usize,
    },
    #[error("{origin}, line {line}")]
    Serial {
        origin: String,
        line: usize,
        source: IdentityError,
    },
}

/// One row: the device and its variables.
pub type Device = (Serial, ExtraVars);

/// A row as read: its line number and its values by column.
type Row = (usize, BTreeMap<String, String>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Tsv,
    JsonLines,
}

/// Reads a devices file's bytes; `origin` is its name (its extension
/// picks the format; `-` or any other name sniffs the first line).
pub fn parse(data: impl AsRef<[u8]>, origin: &str) -> Result<Vec<Device>, DevicesError> {
    let data = data.as_ref();
    let text = std::str::from_utf8(data).map_err(|e| {
        let byte = e.valid_up_to();
        DevicesError::NotUtf8 {
            origin: origin.to_string(),
            line: line_at(data, byte),
            byte,
        }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let format = if origin.ends_with(".jsonl") || origin.ends_with(".ndjson") {
        Format::JsonLines
    } else if origin.ends_with(".tsv") {
        Format::Tsv
    } else if first.trim_start().starts_with('{') {
        Format::JsonLines
    } else if first.contains('\t') && !first.contains(',') {
        Format::Tsv
    } else {
        Format::Csv
    };
    let rows = match format {
        Format::JsonLines => json_lines(text, origin)?,
        Format::Csv => table(&records(text, b',', origin)?, origin)?,
        Format::Tsv => table(&records(text, b'\t', origin)?, origin)?,
    };
    let mut devices: Vec<Device> = Vec::with_capacity(rows.len());
    for (line, mut values) in rows {
        let row_error = |why: String| DevicesError::Row {
            origin: origin.to_string(),
            line,
            why,
        };
        let serial = values
            .remove("serial")
            .ok_or_else(|| row_error("no serial".into()))?;
        let serial = Serial::parse(serial.trim()).map_err(|source| DevicesError::Serial {
            origin: origin.to_string(),
            line,
            source,
        })?;
        if devices.iter().any(|(s, _)| s == &serial) {
            return Err(row_error(format!("{serial} is listed twice")));
        }
        let vars = ExtraVars::new(values).with_origin(format!("{origin}, line {line}"));
        devices.push((serial, vars));
    }
    if devices.is_empty() {
        return Err(DevicesError::Format {
            origin: origin.to_string(),
            why: "it lists no device".into(),
        });
    }
    Ok(devices)
}

/// Checks a column name: `serial`, or a variable name that is not built in.
fn check_column(name: &str, origin: &str) -> Result<(), DevicesError> {
    let ok = name == "serial"
        || (!ExtraVars::is_reserved(name)
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    if ok {
        return Ok(());
    }
    Err(DevicesError::Format {
        origin: origin.to_string(),
        why: format!(
            "column {name:?}: names are letters, digits, _ and -, and email, password and owner are imprint's own"
        ),
    })
}

/// The line (from 1) that byte `at` of `data` is on.
fn line_at(data: &[u8], at: usize) -> usize {
    1 + data[..at].iter().filter(|&&b| b == b'\n').count()
}

/// Records of a CSV/TSV text with the lines they start on: fields may be
/// quoted with `"` (holding separators, newlines and `""` for a quote).
fn records(text: &str, sep: u8, origin: &str) -> Result<Vec<(usize, Vec<String>)>, DevicesError> {
    check_quoting(text, sep).map_err(|(line, why)| DevicesError::Row {
        origin: origin.to_string(),
        line,
        why: why.into(),
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(sep)
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = Vec::new();
    let (mut counted, mut line) = (0, 1);
    for record in reader.records() {
        // The text is a str already: neither invalid UTF-8 nor a read
        // error can come from it.
        let record = record.map_err(|e| DevicesError::Format {
            origin: origin.to_string(),
            why: e.to_string(),
        })?;
        // A record's position is where the reader stood before it, blank
        // lines included: its own line is past those.
        let mut start = record.position().map_or(0, |p| p.byte() as usize);
        start += text[start..]
            .bytes()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        line += line_at(&text.as_bytes()[counted..start], start - counted) - 1;
        counted = start;
        records.push((line, record.iter().map(str::to_string).collect::<Vec<_>>()));
    }
    // Blank lines and `#` comments are skipped, as in a serials file.
    records.retain(|(_, r)| {
        !(r.len() == 1 && (r[0].trim().is_empty() || r[0].trim_start().starts_with('#')))
    });
    Ok(records)
}

/// The csv crate takes malformed quoting as it comes: a quote left open
/// takes the rest of the file into one field, text after a closing quote
/// joins the field. In a devices file both are mistakes: the line where
/// one is, and what.
fn check_quoting(text: &str, sep: u8) -> Result<(), (usize, &'static str)> {
    #[derive(Clone, Copy)]
    enum At {
        FieldStart,
        Unquoted,
        Quoted,
        /// Just after a quote inside a quoted field: its end, or the first
        /// of `""`.
        Closed,
    }
    let (mut at, mut line, mut opened) = (At::FieldStart, 1, 1);
    for b in text.bytes() {
        let ends_field = b == sep || b == b'\n' || b == b'\r';
        at = match (at, b) {
            (At::FieldStart, b'"') => {
                opened = line;
                At::Quoted
            }
            (At::Quoted, b'"') => At::Closed,
            (At::Quoted, _) => At::Quoted,
            (At::Closed, b'"') => At::Quoted,
            (At::Closed, _) if !ends_field => {
                return Err((line, "text after a quoted field's closing quote"))
            }
            (_, _) if ends_field => At::FieldStart,
            (_, _) => At::Unquoted,
        };
        line += usize::from(b == b'\n');
    }
    match at {
        At::Quoted => Err((opened, "a quoted field is not closed")),
        _ => Ok(()),
    }
}

/// Rows of a table whose first record is the header.
fn table(records: &[(usize, Vec<String>)], origin: &str) -> Result<Vec<Row>, DevicesError> {
    let Some(((_, header), rows)) = records.split_first() else {
        return Err(DevicesError::Format {
            origin: origin.to_string(),
            why: "it is empty; the first line names the columns, one of them serial".into(),
        });
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    for (i, name) in header.iter().enumerate() {
        check_column(name, origin)?;
        if header[..i].contains(name) {
            return Err(DevicesError::Format {
                origin: origin.to_string(),
                why: format!("column {name:?} appears twice"),
            });
        }
    }
    if !header.iter().any(|h| h == "serial") {
        return Err(DevicesError::Format {
            origin: origin.to_string(),
            why: format!(
                "no serial column (the first line names the columns: {})",
                header.join(", ")
            ),
        });
    }
    rows.iter()
        .map(|(line, fields)| {
            if fields.len() != header.len() {
                return Err(DevicesError::Row {
                    origin: origin.to_string(),
                    line: *line,
                    why: format!(
                        "{} fields, but the header names {}",
                        fields.len(),
                        header.len()
                    ),
                });
            }
            Ok((
                *line,
                header.iter().cloned().zip(fields.iter().cloned()).collect(),
            ))
        })
        .collect()
}

/// One JSON object a line, with string (or number or boolean) values.
fn json_lines(text: &str, origin: &str) -> Result<Vec<Row>, DevicesError> {
    let mut rows = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let row_error = |why: String| DevicesError::Row {
            origin: origin.to_string(),
            line: i + 1,
            why,
        };
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(l).map_err(|e| row_error(format!("not a JSON object: {e}")))?;
        let mut values = BTreeMap::new();
        for (name, value) in object {
            check_column(&name, origin)?;
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(row_error(format!(
                        "{name}: values are strings, numbers or booleans"
                    )))
                }
            };
            values.insert(name, text);
        }
        rows.push((i + 1, values));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(d: &Device, name: &str) -> String {
        d.1.get(name).unwrap().to_string()
    }

    #[test]
    fn csv_quoting_tsv_and_json_lines() {
        let csv = "\u{feff}serial,hostname,motd\r\n\
                   AZJN-0001,\"jet, one\",\"say \"\"hi\"\"\nline two\"\r\n\
                   # a comment\n\
                   \n\
                   AZJN-0002,jet-two,\n";
        let d = parse(csv, "devices.csv").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].0.as_str(), "AZJN-0001");
        assert_eq!(vars(&d[0], "hostname"), "jet, one");
        assert_eq!(vars(&d[0], "motd"), "say \"hi\"\nline two");
        assert_eq!(vars(&d[1], "motd"), "");
        let tsv = parse("serial\thostname\nAZJN-0003\ta,b\n", "-").unwrap();
        assert_eq!(vars(&tsv[0], "hostname"), "a,b");
        let jl = parse("{\"serial\":\"AZJN-0004\",\"vlan\":12}\n", "-").unwrap();
        assert_eq!(vars(&jl[0], "vlan"), "12");
    }

    #[test]
    fn bad_files_say_where() {
        for (text, says) in [
            ("hostname\nx\n", "no serial column"),
            ("serial,a\nAZJN-0001\n", "line 2: 1 fields"),
            ("serial,a\nAZJN-0001,\"x\n", "not closed"),
            ("serial,password\nAZJN-0001,x\n", "imprint's own"),
            (
                "serial\nAZJN-0001\nAZJN-0001\n",
                "line 3: AZJN-0001 is listed twice",
            ),
            ("serial\nazjn-1\n", "line 2"),
            ("serial,a,a\n", "appears twice"),
            ("", "empty"),
            (
                "serial,a\nAZJN-0001,\"x\"y\n",
                "line 2: text after a quoted field",
            ),
            // Line numbers count the blank lines and comments before.
            ("serial\n\n# c\n\nAZJN-0001,x\n", "d.csv, line 5: 2 fields"),
            ("serial\tx\n\nAZJN-0001\n", "d.csv, line 3: 1 fields"),
        ] {
            let err = parse(text, "d.csv").unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    /// Bytes that are not UTF-8 are refused where they are, in every
    /// format, never replaced.
    #[test]
    fn bytes_that_are_not_utf8_name_their_line() {
        for (data, origin) in [
            (
                &b"serial,site\nAZJN-0001,ok\nAZJN-0002,caf\xe9\n"[..],
                "d.csv",
            ),
            (
                b"serial\tsite\nAZJN-0001\tok\nAZJN-0002\tcaf\xe9\n",
                "d.tsv",
            ),
            (
                b"{\"serial\":\"AZJN-0001\"}\n\n{\"serial\":\"AZJN-0002\",\"s\":\"\xff\"}\n",
                "d.jsonl",
            ),
        ] {
            let err = parse(data, origin).unwrap_err();
            assert!(
                matches!(err, DevicesError::NotUtf8 { line: 3, .. }),
                "{err}"
            );
            let says = err.to_string();
            assert!(
                says.starts_with(&format!("{origin}, line 3: not UTF-8")),
                "{says}"
            );
        }
        // UTF-8 text that is not ASCII is as it was.
        let d = parse("serial,site\nAZJN-0001,café\n".as_bytes(), "d.csv").unwrap();
        assert_eq!(vars(&d[0], "site"), "café");
    }
}
