//! IDX reader (the MNIST format), raw or gzipped (detected by the gzip magic 1f 8b).
//!
//! Layout: 2 zero bytes, a dtype code (only 0x08 = u8 is accepted), the number of dims, then each dim as a
//! big-endian u32, then the payload (product of dims bytes, row-major). [`parse_idx`] is the one parser of these
//! rules in aidos (the trainer's `IdxArray` calls it too). [`read_idx`] accepts:
//! - images: 3 dims N×H×W → `row_shape = [1, H, W]`, features = pixel / 255.0 (so in [0, 1]);
//! - labels: 1 dim N, one u8 label per row.
//!
//! The payload must be exactly the declared size: a short file (truncated) or trailing bytes are errors naming
//! the file, the offset where the payload starts, and expected vs found byte counts.

use std::path::Path;

use crate::error::{DatasetError, Result};
use crate::table::{Table, check_table_size, read_maybe_gz};

const DTYPE_U8: u8 = 0x08;

fn dtype_name(code: u8) -> &'static str {
    match code {
        0x08 => "u8",
        0x09 => "i8",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "unknown",
    }
}

/// A parsed IDX file: its dims and the u8 payload (borrowed from the decoded bytes).
#[derive(Debug)]
pub struct Idx<'a> {
    pub dims: Vec<u64>,
    pub data: &'a [u8],
}

/// Why bytes are not an acceptable IDX file. The `Display` text is this crate's wording; other readers of the
/// same files (`aidos-train`) word the same problems their own way, so the fields carry everything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdxProblem {
    #[error("file is {len} bytes, too short for the 4-byte IDX magic")]
    ShortMagic { len: usize },
    #[error(
        "bad magic {:02x} {:02x} {:02x} {:02x}: expected 00 00 <dtype> <ndims> (not an IDX file?)",
        magic[0], magic[1], magic[2], magic[3]
    )]
    BadMagic { magic: [u8; 4] },
    /// Any dtype but u8 (`name` is the IDX name of the code, or `unknown`).
    #[error("dtype code 0x{code:02x} ({name}) is not supported: expected 0x08 (u8)")]
    Dtype { code: u8, name: &'static str },
    /// `expected` 0: the caller accepts any number of dims but 0.
    #[error("{found} dims, expected {}", dims_wanted(*expected))]
    Dims { found: u8, expected: u8 },
    #[error("file ends inside the header: {len} bytes, the header needs {need}")]
    ShortHeader { len: usize, need: usize },
    /// The payload is not exactly the product of the dims (`expected` saturates at `u128::MAX`).
    #[error(
        "payload is {found} bytes, expected {} = {expected} bytes ({})",
        dims_str(dims),
        if found < expected { "file truncated" } else { "trailing bytes" }
    )]
    Payload { dims: Vec<u64>, expected: u128, found: u128 },
}

impl IdxProblem {
    /// The byte of the (decoded) file the problem is at.
    pub fn offset(&self) -> u64 {
        match self {
            IdxProblem::ShortMagic { .. } | IdxProblem::BadMagic { .. } => 0,
            IdxProblem::Dtype { .. } => 2,
            IdxProblem::Dims { .. } => 3,
            IdxProblem::ShortHeader { .. } => 4,
            IdxProblem::Payload { dims, .. } => 4 + 4 * dims.len() as u64,
        }
    }
}

fn dims_wanted(expected: u8) -> String {
    match expected {
        0 => "at least 1".into(),
        3 => "3 for an images file (idx3)".into(),
        1 => "1 for a labels file (idx1)".into(),
        n => n.to_string(),
    }
}

/// The one IDX parser (rules in the module docs). `expected_dims` 0 accepts any non-zero number of dims.
pub fn parse_idx(bytes: &[u8], expected_dims: u8) -> std::result::Result<Idx<'_>, IdxProblem> {
    if bytes.len() < 4 {
        return Err(IdxProblem::ShortMagic { len: bytes.len() });
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(IdxProblem::BadMagic { magic: [bytes[0], bytes[1], bytes[2], bytes[3]] });
    }
    if bytes[2] != DTYPE_U8 {
        return Err(IdxProblem::Dtype { code: bytes[2], name: dtype_name(bytes[2]) });
    }
    let nd = bytes[3];
    if nd == 0 || (expected_dims != 0 && nd != expected_dims) {
        return Err(IdxProblem::Dims { found: nd, expected: expected_dims });
    }
    let header = 4 + 4 * nd as usize;
    if bytes.len() < header {
        return Err(IdxProblem::ShortHeader { len: bytes.len(), need: header });
    }
    let dims: Vec<u64> =
        (0..nd as usize).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as u64).collect();
    // u32 dims: the product of three fits in u128; more may not, so it saturates (and then cannot match).
    let expected: u128 = dims.iter().fold(1u128, |a, &d| a.saturating_mul(d as u128));
    let found = (bytes.len() - header) as u128;
    if expected != found {
        return Err(IdxProblem::Payload { dims, expected, found });
    }
    Ok(Idx { dims, data: &bytes[header..] })
}

/// [`parse_idx`] with this crate's error, naming the file.
fn parse<'a>(path: &Path, bytes: &'a [u8], expected_dims: u8) -> Result<Idx<'a>> {
    parse_idx(bytes, expected_dims).map_err(|p| DatasetError::Idx {
        path: path.into(),
        offset: p.offset(),
        problem: p.to_string(),
    })
}

fn dims_str(dims: &[u64]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×")
}

/// Reads an idx3 images file and an idx1 labels file into a table.
pub fn read_idx(images: &Path, labels: &Path) -> Result<Table> {
    let mk = |p: &Path| {
        let p = p.to_path_buf();
        move |offset, problem| DatasetError::Idx { path: p.clone(), offset, problem }
    };
    let img_bytes = read_maybe_gz(images, mk(images))?;
    let img = parse(images, &img_bytes, 3)?;
    let lab_bytes = read_maybe_gz(labels, mk(labels))?;
    let lab = parse(labels, &lab_bytes, 1)?;
    let (n, h, w) = (img.dims[0], img.dims[1], img.dims[2]);
    if lab.dims[0] != n {
        return Err(DatasetError::LabelCount {
            features: images.into(),
            labels_file: labels.into(),
            rows: n,
            labels: lab.dims[0],
        });
    }
    if h == 0 || w == 0 {
        return Err(DatasetError::Idx {
            path: images.into(),
            offset: 8,
            problem: format!("image size {h}×{w} is empty"),
        });
    }
    check_table_size(images, n * h * w)?;
    let features: Vec<f32> = img.data.iter().map(|&p| p as f32 / 255.0).collect();
    let labels: Vec<u32> = lab.data.iter().map(|&l| l as u32).collect();
    Ok(Table { features, labels, row_shape: vec![1, h, w], missing: 0, format: "idx" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_and_rejects() {
        let p = Path::new("x");
        let ok = idx(&[2, 1, 2], &[0, 255, 3, 4]);
        assert_eq!(parse(p, &ok, 3).unwrap().dims, vec![2, 1, 2]);
        let e = parse(p, &ok[..ok.len() - 1], 3).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("expected 2×1×2 = 4"), "{e}");
        let e = parse(p, &idx(&[2], &[1, 2]), 3).unwrap_err().to_string();
        assert!(e.contains("1 dims, expected 3"), "{e}");
        let mut bad = ok.clone();
        bad[2] = 0x0D;
        assert!(parse(p, &bad, 3).unwrap_err().to_string().contains("0x0d (f32)"));
        let e = parse(p, &ok[..6], 3).unwrap_err().to_string();
        assert!(e.contains("inside the header"), "{e}");
    }
}
