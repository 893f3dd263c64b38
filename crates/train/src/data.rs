//! In-memory datasets, reading IDX (MNIST) files (parsed by `aidos_datasets::parse_idx`), normalisation and
//! deterministic batching.
//!
//! Invariants:
//! * `Dataset.features` is row-major: `len() == labels.len() * shape.iter().product()`; `shape` is
//!   the shape of ONE sample (e.g. `[1, 28, 28]` or `[784]`). `Dataset::new` enforces it.
//! * The sample order of epoch `e` is a pure function of `(seed, e)` ([`epoch_order`]), so a
//!   resumed run sees exactly the batches an uninterrupted run would.
//! * Batching copies each selected row once (a gather into the batch buffer that becomes the
//!   tensor); nothing else is copied.

use std::io::Read;
use std::path::Path;

use aidos_datasets::IdxProblem;

use crate::error::{Result, TrainError};
use crate::rng::{self, SplitMix64};

/// Features + labels held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
    /// Shape of one sample.
    pub shape: Vec<usize>,
}

/// How to scale raw pixel values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalization {
    /// Leave values untouched.
    None,
    /// `x / 255`.
    Scale255,
    /// `(x / 255 - mean) / std` (MNIST: mean 0.1307, std 0.3081).
    Standardize { mean: f32, std: f32 },
}

impl Dataset {
    /// Validates that `features.len() == labels.len() * prod(shape)`.
    pub fn new(features: Vec<f32>, labels: Vec<u32>, shape: Vec<usize>) -> Result<Self> {
        let row: usize = shape.iter().product();
        if shape.is_empty() || row == 0 {
            return Err(TrainError::Dataset(format!("sample shape {shape:?} must be non-empty with all dims > 0")));
        }
        if !features.len().is_multiple_of(row) {
            return Err(TrainError::Dataset(format!(
                "{} feature values is not a whole number of samples of shape {shape:?} ({row} values each)",
                features.len()
            )));
        }
        let rows = features.len() / row;
        if rows != labels.len() {
            return Err(TrainError::Dataset(format!(
                "label count mismatch: {} labels for {rows} feature rows",
                labels.len()
            )));
        }
        Ok(Dataset { features, labels, shape })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per sample.
    pub fn row_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// `max(label) + 1` (0 for an empty dataset).
    pub fn num_classes(&self) -> usize {
        self.labels.iter().max().map_or(0, |&m| m as usize + 1)
    }

    /// Feature row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let r = self.row_len();
        &self.features[i * r..(i + 1) * r]
    }

    /// Apply a normalisation in place.
    pub fn normalize(&mut self, norm: Normalization) {
        match norm {
            Normalization::None => {}
            Normalization::Scale255 => self.features.iter_mut().for_each(|x| *x /= 255.0),
            Normalization::Standardize { mean, std } => {
                let inv = 1.0 / std;
                self.features.iter_mut().for_each(|x| *x = (*x / 255.0 - mean) * inv);
            }
        }
    }

    /// Split into `[0, at)` and `[at, len)`.
    pub fn split_at(mut self, at: usize) -> Result<(Dataset, Dataset)> {
        if at > self.len() {
            return Err(TrainError::Dataset(format!(
                "split point {at} is past the end of a {}-sample dataset",
                self.len()
            )));
        }
        let tail_f = self.features.split_off(at * self.row_len());
        let tail_l = self.labels.split_off(at);
        let tail = Dataset { features: tail_f, labels: tail_l, shape: self.shape.clone() };
        Ok((self, tail))
    }

    /// Copy of samples `[start, end)`.
    pub fn subset(&self, start: usize, end: usize) -> Result<Dataset> {
        if start > end || end > self.len() {
            return Err(TrainError::Dataset(format!(
                "subset {start}..{end} out of range for a {}-sample dataset",
                self.len()
            )));
        }
        let r = self.row_len();
        Ok(Dataset {
            features: self.features[start * r..end * r].to_vec(),
            labels: self.labels[start..end].to_vec(),
            shape: self.shape.clone(),
        })
    }

    /// Gather the rows `idx` into a new feature buffer + labels (one copy per row).
    pub fn gather(&self, idx: &[u32]) -> (Vec<f32>, Vec<u32>) {
        let r = self.row_len();
        let mut f = Vec::with_capacity(idx.len() * r);
        let mut l = Vec::with_capacity(idx.len());
        for &i in idx {
            let i = i as usize;
            f.extend_from_slice(&self.features[i * r..(i + 1) * r]);
            l.push(self.labels[i]);
        }
        (f, l)
    }

    /// Load an images IDX file + a labels IDX file (gzipped or raw) into a dataset whose sample
    /// shape is the image dims, `[1, h, w]` for 2-D images.
    pub fn from_idx_files(images: impl AsRef<Path>, labels: impl AsRef<Path>, norm: Normalization) -> Result<Dataset> {
        let img = IdxArray::read(images)?;
        let lab = IdxArray::read(labels)?;
        Dataset::from_idx(img, lab, norm)
    }

    /// Build a dataset from parsed IDX arrays (images: `[n, ...]`, labels: `[n]`).
    pub fn from_idx(images: IdxArray, labels: IdxArray, norm: Normalization) -> Result<Dataset> {
        if images.dims.len() < 2 {
            return Err(TrainError::Idx {
                source_name: images.source_name,
                reason: format!("images need >= 2 dims (count, ...), got {:?}", images.dims),
            });
        }
        if labels.dims.len() != 1 {
            return Err(TrainError::Idx {
                source_name: labels.source_name,
                reason: format!("labels need exactly 1 dim, got {:?}", labels.dims),
            });
        }
        let mut shape = images.dims[1..].to_vec();
        if shape.len() == 2 {
            shape.insert(0, 1);
        }
        let mut lab = Vec::with_capacity(labels.data.len());
        for (i, &v) in labels.data.iter().enumerate() {
            if v < 0.0 || v.fract() != 0.0 || v > u32::MAX as f32 {
                return Err(TrainError::Idx {
                    source_name: labels.source_name,
                    reason: format!("label #{i} = {v} is not a non-negative integer"),
                });
            }
            lab.push(v as u32);
        }
        let mut ds = Dataset::new(images.data, lab, shape)?;
        ds.normalize(norm);
        Ok(ds)
    }
}

/// Sample order for epoch `epoch`: a Fisher–Yates permutation of `0..n` seeded by
/// `(seed, epoch)`.
pub fn epoch_order(n: usize, seed: u64, epoch: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut r = SplitMix64::stream(seed, rng::SHUFFLE, epoch as u64);
    for i in (1..n).rev() {
        let j = r.below(i + 1);
        order.swap(i, j);
    }
    order
}

/// This crate's wording of an IDX problem (`aidos_datasets` words the same problems for ingest).
fn idx_reason(p: &IdxProblem) -> String {
    match p {
        IdxProblem::ShortMagic { len } => format!("truncated header: {len} bytes, need at least 4"),
        IdxProblem::BadMagic { magic: [a, b, c, d] } => {
            format!("bad magic {a:02x} {b:02x} {c:02x} {d:02x}: first two bytes must be 0")
        }
        IdxProblem::Dtype { code, name: "unknown" } => {
            format!("unknown element type 0x{code:02x} in magic (only 0x08, u8, is supported)")
        }
        IdxProblem::Dtype { code, name } => {
            format!("unsupported element type 0x{code:02x} ({name}) in magic (only 0x08, u8, is supported)")
        }
        IdxProblem::Dims { found, .. } => format!("magic says {found} dimensions"),
        IdxProblem::ShortHeader { len, need } => {
            format!("truncated header: {len} bytes, need {need} for {} dims", (need - 4) / 4)
        }
        IdxProblem::Payload { dims, expected, found } => format!(
            "{found} data bytes for dims {dims:?} (need {expected}){}",
            if found < expected { ": file is truncated" } else { ": trailing bytes" }
        ),
    }
}

/// A parsed IDX file: dims and values converted to f32 (only u8 files are accepted: the rules are
/// `aidos_datasets::parse_idx`'s).
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    /// Where it came from (file path or `<memory>`), for error messages.
    pub source_name: String,
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

impl IdxArray {
    /// Read an IDX file; gzip is detected from the content (magic `1f 8b`), not the name.
    pub fn read(path: impl AsRef<Path>) -> Result<IdxArray> {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).map_err(|source| TrainError::Io { path: path.display().to_string(), source })?;
        IdxArray::parse(&bytes, &path.display().to_string())
    }

    /// Parse IDX bytes (gzipped or raw). `source_name` is used in error messages.
    pub fn parse(bytes: &[u8], source_name: &str) -> Result<IdxArray> {
        let err = |reason: String| TrainError::Idx { source_name: source_name.to_string(), reason };
        let raw;
        let bytes = if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .map_err(|e| err(format!("corrupt or truncated gzip stream: {e}")))?;
            raw = out;
            &raw[..]
        } else {
            bytes
        };
        let idx = aidos_datasets::parse_idx(bytes, 0).map_err(|p| err(idx_reason(&p)))?;
        let dims = idx.dims.iter().map(|&d| d as usize).collect();
        let data = idx.data.iter().map(|&b| b as f32).collect();
        Ok(IdxArray { source_name: source_name.to_string(), dims, data })
    }
}
