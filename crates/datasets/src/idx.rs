//! IDX reader (the MNIST format), raw or gzipped (detected by the gzip magic 1f 8b).
//!
//! Layout: 2 zero bytes, a dtype code (only 0x08 = u8 is accepted), the number of dims, then each dim as a
//! big-endian u32, then the payload (product of dims bytes, row-major). Accepted:
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
struct Idx<'a> {
    dims: Vec<u64>,
    data: &'a [u8],
}

fn parse<'a>(path: &Path, bytes: &'a [u8], expected_dims: u8) -> Result<Idx<'a>> {
    let err = |offset: u64, problem: String| DatasetError::Idx { path: path.into(), offset, problem };
    if bytes.len() < 4 {
        return Err(err(0, format!("file is {} bytes, too short for the 4-byte IDX magic", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(err(
            0,
            format!(
                "bad magic {:02x} {:02x} {:02x} {:02x}: expected 00 00 <dtype> <ndims> (not an IDX file?)",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    if bytes[2] != DTYPE_U8 {
        return Err(err(
            2,
            format!("dtype code 0x{:02x} ({}) is not supported: expected 0x08 (u8)", bytes[2], dtype_name(bytes[2])),
        ));
    }
    let nd = bytes[3];
    if nd != expected_dims {
        let kind = if expected_dims == 3 { "an images file (idx3)" } else { "a labels file (idx1)" };
        return Err(err(3, format!("{nd} dims, expected {expected_dims} for {kind}")));
    }
    let header = 4 + 4 * nd as usize;
    if bytes.len() < header {
        return Err(err(4, format!("file ends inside the header: {} bytes, the header needs {header}", bytes.len())));
    }
    let dims: Vec<u64> =
        (0..nd as usize).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as u64).collect();
    // u32 dims: the product of three fits in u128, check against the actual length in u128 to avoid overflow.
    let expected: u128 = dims.iter().map(|&d| d as u128).product();
    let found = (bytes.len() - header) as u128;
    if expected != found {
        let what = if found < expected { "file truncated" } else { "trailing bytes" };
        return Err(err(
            header as u64,
            format!("payload is {found} bytes, expected {} = {expected} bytes ({what})", dims_str(&dims)),
        ));
    }
    Ok(Idx { dims, data: &bytes[header..] })
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
