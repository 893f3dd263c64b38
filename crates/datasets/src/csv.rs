//! CSV reader.
//!
//! - The first line is a header naming the columns (names must be unique).
//! - The label column is chosen by name: the one given, else `label` if present, else the last column. Labels
//!   must be non-negative integers that fit in u32 (`3` or `3.0`); an empty label is an error.
//! - Every other column is a numeric feature: `row_shape = [n_features]`. Cells are trimmed; an empty cell or
//!   `NaN` (any case) is a missing value, stored as NaN and counted; anything else must parse as a number.
//! - Every row must have as many fields as the header (ragged rows are errors). Line numbers in errors are
//!   1-based and count the header line.
//! - The file must be at most [`crate::MAX_INPUT_BYTES`].

use std::path::Path;

use crate::error::{DatasetError, Result, io_err};
use crate::table::{Table, check_file_size, check_table_size};

/// Reads a CSV file; `label_column` picks the label column by name (see the module doc for the default).
pub fn read_csv(path: &Path, label_column: Option<&str>) -> Result<Table> {
    check_file_size(path)?;
    let err = |line: u64, problem: String| DatasetError::Csv { path: path.into(), line, problem };
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(file);
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| err(1, format!("cannot read the header: {e}")))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if headers.is_empty() || headers.iter().all(|h| h.is_empty()) {
        return Err(err(1, "empty header: expected a header row naming the columns".into()));
    }
    for (i, h) in headers.iter().enumerate() {
        if let Some(j) = headers[..i].iter().position(|o| o == h) {
            return Err(err(1, format!("duplicate column name {h:?} (columns {} and {})", j + 1, i + 1)));
        }
    }
    let label_idx = match label_column {
        Some(name) => headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| err(1, format!("no label column {name:?}; the columns are: {}", headers.join(", "))))?,
        None => headers.iter().position(|h| h == "label").unwrap_or(headers.len() - 1),
    };
    let n_features = headers.len() - 1;
    if n_features == 0 {
        return Err(err(
            1,
            format!("only the label column {:?}: expected at least one feature column", headers[label_idx]),
        ));
    }
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut missing = 0u64;
    let mut record = csv::StringRecord::new();
    loop {
        let more = rdr.read_record(&mut record).map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            err(line, format!("malformed CSV: {e}"))
        })?;
        if !more {
            break;
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.len() != headers.len() {
            return Err(err(line, format!("{} fields, expected {} (as in the header)", record.len(), headers.len())));
        }
        for (i, cell) in record.iter().enumerate() {
            let cell = cell.trim();
            let col = || format!("column {} ({:?})", i + 1, headers[i]);
            if i == label_idx {
                labels.push(parse_label(cell).map_err(|p| err(line, format!("{}: {p}", col())))?);
                continue;
            }
            if cell.is_empty() || cell.eq_ignore_ascii_case("nan") {
                features.push(f32::NAN);
                missing += 1;
                continue;
            }
            let v: f32 = cell.parse().map_err(|_| err(line, format!("{}: {cell:?} is not a number", col())))?;
            if v.is_nan() {
                missing += 1;
                features.push(f32::NAN);
            } else {
                features.push(v);
            }
        }
        check_table_size(path, features.len() as u64)?;
    }
    if labels.is_empty() {
        return Err(err(1, "no data rows after the header".into()));
    }
    Ok(Table { features, labels, row_shape: vec![n_features as u64], missing, format: "csv" })
}

fn parse_label(cell: &str) -> Result<u32, String> {
    if cell.is_empty() {
        return Err("the label is empty: expected a non-negative integer".into());
    }
    if let Ok(v) = cell.parse::<u32>() {
        return Ok(v);
    }
    match cell.parse::<f64>() {
        Ok(v) if v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v) => Ok(v as u32),
        Ok(v) if v < 0.0 => Err(format!("label {cell:?} is negative: expected a non-negative integer")),
        Ok(v) if v.is_finite() && v.fract() == 0.0 => Err(format!("label {cell:?} is over {}", u32::MAX)),
        _ => Err(format!("label {cell:?} is not a non-negative integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(parse_label("3"), Ok(3));
        assert_eq!(parse_label("3.0"), Ok(3));
        assert!(parse_label("-1").unwrap_err().contains("negative"));
        assert!(parse_label("1.5").unwrap_err().contains("not a non-negative integer"));
        assert!(parse_label("cat").is_err());
        assert!(parse_label("").unwrap_err().contains("empty"));
    }
}
