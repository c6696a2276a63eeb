//! `--devices FILE`: one device a row, with its own template variables.
//! CSV (RFC 4180 quoting), TSV (by a `.tsv` name, or tabs and no comma in
//! the header)
//! or JSON lines (by a `.jsonl`/`.ndjson` name or a first line starting
//! with `{`). The header names the columns; one must be `serial`, the
//! others become `{name}` variables for that device.

use std::collections::BTreeMap;

use thiserror::Error;

use super::ExtraVars;
use crate::identity::{IdentityError, Serial};

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DevicesError {
    #[error("{origin}: {why}")]
    Format { origin: String, why: String },
    #[error("{origin}, line {line}: {why}")]
    Row {
        origin: String,
        line: usize,
        why: String,
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

/// Reads a devices file; `origin` is its name (its extension picks the
/// format; `-` or any other name sniffs the first line).
pub fn parse(text: &str, origin: &str) -> Result<Vec<Device>, DevicesError> {
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
        Format::Csv => table(&split_csv(text, b',', origin)?, origin)?,
        Format::Tsv => table(&split_csv(text, b'\t', origin)?, origin)?,
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
        devices.push((serial, ExtraVars::new(values)));
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

/// Records of a CSV/TSV text with their line numbers: fields may be
/// quoted with `"` (holding separators, newlines and `""` for a quote).
fn split_csv(text: &str, sep: u8, origin: &str) -> Result<Vec<(usize, Vec<String>)>, DevicesError> {
    let bytes = text.as_bytes();
    let mut records = Vec::new();
    let mut record: Vec<String> = Vec::new();
    let mut field: Vec<u8> = Vec::new();
    let (mut line, mut record_line) = (1usize, 1usize);
    let mut i = 0;
    let mut quoted_field = false;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' && field.is_empty() && !quoted_field {
            // A quoted field, up to its closing quote.
            quoted_field = true;
            i += 1;
            loop {
                match bytes.get(i) {
                    None => {
                        return Err(DevicesError::Row {
                            origin: origin.to_string(),
                            line: record_line,
                            why: "a quoted field is not closed".into(),
                        })
                    }
                    Some(b'"') if bytes.get(i + 1) == Some(&b'"') => {
                        field.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        line += usize::from(c == b'\n');
                        field.push(c);
                        i += 1;
                    }
                }
            }
            continue;
        }
        match b {
            _ if b == sep => {
                record.push(String::from_utf8_lossy(&field).into_owned());
                field.clear();
                quoted_field = false;
            }
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {}
            b'\n' => {
                record.push(String::from_utf8_lossy(&field).into_owned());
                field.clear();
                quoted_field = false;
                records.push((record_line, std::mem::take(&mut record)));
                line += 1;
                record_line = line;
            }
            _ if quoted_field => {
                return Err(DevicesError::Row {
                    origin: origin.to_string(),
                    line: record_line,
                    why: "text after a quoted field's closing quote".into(),
                })
            }
            _ => field.push(b),
        }
        i += 1;
    }
    if !field.is_empty() || !record.is_empty() || quoted_field {
        record.push(String::from_utf8_lossy(&field).into_owned());
        records.push((record_line, record));
    }
    // Blank lines and `#` comments are skipped, as in a serials file.
    records.retain(|(_, r)| {
        !(r.len() == 1 && (r[0].trim().is_empty() || r[0].trim_start().starts_with('#')))
    });
    Ok(records)
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
        ] {
            let err = parse(text, "d.csv").unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }
}
