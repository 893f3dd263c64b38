//! The in-memory table every reader produces, and the input limits and file helpers the readers share.
//!
//! Invariants of a [`Table`] returned by a reader (checked by [`Table::validate`]):
//! - `features.len() == labels.len() * row_len(row_shape)`, with `row_len >= 1`;
//! - every NaN is the canonical `f32::NAN` (so equal rows hash equal whatever NaN payload the source used);
//! - `missing` counts the NaN feature values (empty/NaN cells, NaN floats).

use std::io::Read;
use std::path::Path;

use crate::error::{DatasetError, Result, io_err};

/// The largest input accepted: each input file on disk, each decompressed gzip stream, and the decoded feature
/// table (`rows × row_len × 4` bytes) must fit in 8 GiB. Ingest holds the whole table in memory (parse and
/// validate everything before writing anything), so peak memory is about twice this.
pub const MAX_INPUT_BYTES: u64 = 8 << 30;

/// The largest encoded feature chunk (`chunk_rows × row_len × 4` bytes): 1 GiB. Loading maps one chunk per
/// worker thread at a time.
pub const MAX_CHUNK_BYTES: u64 = 1 << 30;

/// Parsed rows: features as f32 row-major (`rows × row_len`), one label per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
    /// Shape of one row's features, e.g. `[1, 28, 28]` or `[13]`. Never empty; its product is the row length.
    pub row_shape: Vec<u64>,
    /// NaN feature values (missing cells).
    pub missing: u64,
    /// "idx" | "csv" | "npy" (or anything a caller building a table itself chooses).
    pub format: &'static str,
}

/// Number of values in one row of this shape (the product of the dims), or `None` on overflow.
pub fn row_len(row_shape: &[u64]) -> Option<u64> {
    row_shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

impl Table {
    pub fn rows(&self) -> u64 {
        self.labels.len() as u64
    }

    pub fn row_len(&self) -> usize {
        row_len(&self.row_shape).unwrap_or(0) as usize
    }

    /// Checks the invariants above (except NaN canonicality, which [`Table::canonicalize_nans`] establishes).
    pub fn validate(&self) -> Result<()> {
        if self.row_shape.is_empty() {
            return Err(DatasetError::Invalid("row_shape is empty".into()));
        }
        let rl = row_len(&self.row_shape)
            .ok_or_else(|| DatasetError::Invalid(format!("row_shape {:?} overflows", self.row_shape)))?;
        if rl == 0 {
            return Err(DatasetError::Invalid(format!("row_shape {:?} has no values per row", self.row_shape)));
        }
        if self.labels.is_empty() {
            return Err(DatasetError::Invalid("the input holds no rows".into()));
        }
        let expected = (self.labels.len() as u64).checked_mul(rl);
        if expected != Some(self.features.len() as u64) {
            return Err(DatasetError::Invalid(format!(
                "{} feature values for {} rows of {rl} values: expected {:?}",
                self.features.len(),
                self.labels.len(),
                expected
            )));
        }
        Ok(())
    }

    /// Rewrites every NaN as `f32::NAN` and returns how many there were.
    pub fn canonicalize_nans(&mut self) -> u64 {
        let mut n = 0;
        for v in &mut self.features {
            if v.is_nan() {
                *v = f32::NAN;
                n += 1;
            }
        }
        n
    }

    /// Rows `[start, end)` as a new table (`missing` recounted). Panics if the range is out of bounds.
    pub fn slice_rows(&self, start: usize, end: usize) -> Table {
        let rl = self.row_len();
        let features = self.features[start * rl..end * rl].to_vec();
        let missing = features.iter().filter(|v| v.is_nan()).count() as u64;
        Table {
            features,
            labels: self.labels[start..end].to_vec(),
            row_shape: self.row_shape.clone(),
            missing,
            format: self.format,
        }
    }
}

/// Refuses a file bigger than [`MAX_INPUT_BYTES`] before reading it.
pub(crate) fn check_file_size(path: &Path) -> Result<u64> {
    let size = std::fs::metadata(path).map_err(io_err(path))?.len();
    if size > MAX_INPUT_BYTES {
        return Err(DatasetError::TooLarge { path: path.into(), what: "the file", size, max: MAX_INPUT_BYTES });
    }
    Ok(size)
}

/// Whether these bytes start a gzip stream (magic 1f 8b).
pub(crate) fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Reads a whole file, gunzipping it if it starts with the gzip magic. Both the file and the decompressed stream
/// are limited to [`MAX_INPUT_BYTES`]. A corrupt or truncated gzip stream is an error naming the file; `mk` builds
/// the format-specific error from (offset, problem).
pub(crate) fn read_maybe_gz(path: &Path, mk: impl Fn(u64, String) -> DatasetError) -> Result<Vec<u8>> {
    check_file_size(path)?;
    let raw = std::fs::read(path).map_err(io_err(path))?;
    if !is_gzip(&raw) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(MAX_INPUT_BYTES as usize));
    let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]).take(MAX_INPUT_BYTES + 1);
    dec.read_to_end(&mut out).map_err(|e| {
        mk(0, format!("gzip stream is corrupt or truncated after {} decompressed bytes: {e}", out.len()))
    })?;
    if out.len() as u64 > MAX_INPUT_BYTES {
        return Err(DatasetError::TooLarge {
            path: path.into(),
            what: "the decompressed stream",
            size: out.len() as u64,
            max: MAX_INPUT_BYTES,
        });
    }
    Ok(out)
}

/// Refuses a decoded feature table bigger than [`MAX_INPUT_BYTES`] (`values` f32s).
pub(crate) fn check_table_size(path: &Path, values: u64) -> Result<()> {
    let size = values.saturating_mul(4);
    if size > MAX_INPUT_BYTES {
        return Err(DatasetError::TooLarge {
            path: path.into(),
            what: "the decoded feature table",
            size,
            max: MAX_INPUT_BYTES,
        });
    }
    Ok(())
}
