//! Split specs: `"train=8000,test=2000"` (row counts) or `"train=0.8,test=0.2"` (fractions).
//!
//! Splits are contiguous row ranges in stored order, laid out one after another from row 0 in the order given;
//! the result is deterministic (no shuffling: shuffle before ingest if you need it).
//! - Counts: every count ≥ 1 and their sum ≤ rows (rows past the last split belong to no split).
//! - Fractions: each in (0, 1], sum ≤ 1. Each split gets `floor(f × rows)` rows; if the fractions sum to 1 the
//!   last split takes the remainder (up to `rows`). Every split must end up with ≥ 1 row.
//! - A value that parses as an unsigned integer is a row count (so `1` is one row), otherwise a fraction (`1.0`);
//!   one spec cannot mix both.
//! - Names follow the dataset name rule (`[A-Za-z0-9._-]{1,64}`) and must be unique.
//! - No split given: one split `all` = [0, rows).

use aidos_api::v1::Split;

use crate::error::{DatasetError, Result};
use crate::ingest::valid_name;

#[derive(Debug, Clone, PartialEq)]
pub enum SplitSize {
    Rows(u64),
    Fraction(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SplitSpec {
    pub name: String,
    pub size: SplitSize,
}

const FRACTION_EPS: f64 = 1e-9;

impl SplitSpec {
    /// Parses `"name=size,name=size,..."`. Checks syntax, names and values (not the row count: see [`resolve_splits`]).
    pub fn parse(spec: &str) -> Result<Vec<SplitSpec>> {
        let bad = |problem: String| DatasetError::SplitSpec { spec: spec.to_string(), problem };
        if spec.trim().is_empty() {
            return Err(bad(
                "empty: expected name=size[,name=size...], e.g. train=8000,test=2000 or train=0.8,test=0.2".into(),
            ));
        }
        let mut out: Vec<SplitSpec> = Vec::new();
        for part in spec.split(',') {
            let part = part.trim();
            let (name, value) =
                part.split_once('=').ok_or_else(|| bad(format!("{part:?} has no '=': expected name=size")))?;
            let (name, value) = (name.trim(), value.trim());
            if !valid_name(name) {
                return Err(bad(format!(
                    "split name {name:?} is invalid: expected 1 to 64 characters from A-Z a-z 0-9 . _ -"
                )));
            }
            if out.iter().any(|s| s.name == name) {
                return Err(bad(format!("split name {name:?} appears twice")));
            }
            let size = if let Ok(n) = value.parse::<u64>() {
                if n == 0 {
                    return Err(bad(format!("{name}: 0 rows: every split needs at least one row")));
                }
                SplitSize::Rows(n)
            } else {
                let f: f64 = value.parse().map_err(|_| {
                    bad(format!("{name}: {value:?} is not a row count (positive integer) or a fraction in (0, 1]"))
                })?;
                if f < 0.0 {
                    return Err(bad(format!(
                        "{name}: {value} is negative: expected a row count or a fraction in (0, 1]"
                    )));
                }
                if !(f > 0.0 && f <= 1.0) {
                    return Err(bad(format!("{name}: fraction {value} is outside (0, 1]")));
                }
                SplitSize::Fraction(f)
            };
            out.push(SplitSpec { name: name.to_string(), size });
        }
        let fractions = out.iter().filter(|s| matches!(s.size, SplitSize::Fraction(_))).count();
        if fractions != 0 && fractions != out.len() {
            return Err(bad("mixes row counts and fractions: use one or the other".into()));
        }
        let total: f64 = out.iter().map(|s| if let SplitSize::Fraction(f) = s.size { f } else { 0.0 }).sum();
        if total > 1.0 + FRACTION_EPS {
            return Err(bad(format!("fractions sum to {total}, over 1")));
        }
        Ok(out)
    }
}

/// Turns specs into row ranges for a dataset of `rows` rows (see the module doc for the rules).
pub fn resolve_splits(specs: &[SplitSpec], rows: u64) -> Result<Vec<Split>> {
    let spec_str = || {
        specs
            .iter()
            .map(|s| match s.size {
                SplitSize::Rows(n) => format!("{}={n}", s.name),
                SplitSize::Fraction(f) => format!("{}={f}", s.name),
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let bad = |problem: String| DatasetError::SplitSpec { spec: spec_str(), problem };
    if specs.is_empty() {
        return Ok(vec![Split { name: "all".into(), start: 0, end: rows }]);
    }
    let total_fraction: f64 = specs.iter().map(|s| if let SplitSize::Fraction(f) = s.size { f } else { 0.0 }).sum();
    let fractions_cover_all = (total_fraction - 1.0).abs() <= FRACTION_EPS;
    let mut out = Vec::with_capacity(specs.len());
    let mut start = 0u64;
    for (i, s) in specs.iter().enumerate() {
        let n = match s.size {
            SplitSize::Rows(n) => n,
            SplitSize::Fraction(_) if i + 1 == specs.len() && fractions_cover_all => rows - start,
            SplitSize::Fraction(f) => (f * rows as f64).floor() as u64,
        };
        if n == 0 {
            return Err(bad(format!("split {:?} would have 0 rows of the dataset's {rows}", s.name)));
        }
        let end = start.checked_add(n).filter(|&e| e <= rows).ok_or_else(|| {
            let total =
                specs.iter().fold(0u64, |a, s| a.saturating_add(if let SplitSize::Rows(n) = s.size { n } else { 0 }));
            bad(format!("the splits need {total} rows but the dataset has {rows}"))
        })?;
        out.push(Split { name: s.name.clone(), start, end });
        start = end;
    }
    Ok(out)
}
