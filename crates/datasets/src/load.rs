//! Loading a split (or any row range) back from the blob store.
//!
//! The manifest is checked against itself (dtype, chunk rows summing to `rows`, chunk byte sizes = rows ×
//! row_len × 4) and each blob against its `ChunkRef` (length) before decoding. Chunks overlapping the range are
//! fetched with `store.get` (memory-mapped for `LocalDirStore`) and decoded in parallel (rayon) straight from the
//! blob bytes into disjoint slices of the output vectors: no intermediate copies.

use aidos_api::v1::{ChunkRef, DatasetManifest};
use aidos_blob::{BlobId, BlobStore};
use rayon::prelude::*;

use crate::error::{DatasetError, Result};
use crate::table::{MAX_INPUT_BYTES, row_len};

/// Rows of one split (or of the whole dataset), decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedSplit {
    pub name: String,
    /// First row of the range in the dataset's stored order.
    pub start: u64,
    pub rows: u64,
    pub row_shape: Vec<u64>,
    /// `rows × row_len` values, row-major.
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
}

impl LoadedSplit {
    pub fn row_len(&self) -> usize {
        row_len(&self.row_shape).unwrap_or(0) as usize
    }
    /// Features of row `i` of this split.
    pub fn row(&self, i: usize) -> &[f32] {
        let rl = self.row_len();
        &self.features[i * rl..(i + 1) * rl]
    }
}

/// Loads the split named `split`. Unknown name: an error listing the known ones.
pub fn load_split(manifest: &DatasetManifest, split: &str, store: &dyn BlobStore) -> Result<LoadedSplit> {
    let s = manifest.splits.iter().find(|s| s.name == split).ok_or_else(|| DatasetError::UnknownSplit {
        name: split.to_string(),
        known: if manifest.splits.is_empty() {
            "none".into()
        } else {
            manifest.splits.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        },
    })?;
    load_rows(manifest, split, s.start, s.end, store)
}

/// Loads every row (named `all`, whatever the splits).
pub fn load_all(manifest: &DatasetManifest, store: &dyn BlobStore) -> Result<LoadedSplit> {
    load_rows(manifest, "all", 0, manifest.rows, store)
}

/// Loads rows `[start, end)`, naming the result `name`.
pub fn load_rows(
    manifest: &DatasetManifest,
    name: &str,
    start: u64,
    end: u64,
    store: &dyn BlobStore,
) -> Result<LoadedSplit> {
    let bad = |problem: String| DatasetError::Manifest { name: manifest.name.clone(), problem };
    if manifest.dtype != "f32" {
        return Err(bad(format!("dtype {:?}: expected \"f32\"", manifest.dtype)));
    }
    let rl = row_len(&manifest.row_shape)
        .filter(|&r| r > 0 && !manifest.row_shape.is_empty())
        .ok_or_else(|| bad(format!("row_shape {:?} is empty or overflows", manifest.row_shape)))?;
    if start > end || end > manifest.rows {
        return Err(bad(format!("row range [{start}, {end}) is outside the dataset's {} rows", manifest.rows)));
    }
    let n = end - start;
    let values = n
        .checked_mul(rl)
        .filter(|v| v.saturating_mul(4) <= MAX_INPUT_BYTES)
        .ok_or_else(|| bad(format!("{n} rows × {rl} values is over the {MAX_INPUT_BYTES}-byte load limit")))?;
    check_chunks(manifest, &manifest.feature_chunks, rl * 4, "feature").map_err(bad)?;
    check_chunks(manifest, &manifest.label_chunks, 4, "label").map_err(bad)?;

    let mut features = vec![0f32; values as usize];
    let mut labels = vec![0u32; n as usize];
    decode_range(
        manifest,
        &manifest.feature_chunks,
        rl as usize,
        start,
        end,
        &mut features,
        store,
        f32::from_le_bytes,
    )?;
    decode_range(manifest, &manifest.label_chunks, 1, start, end, &mut labels, store, u32::from_le_bytes)?;
    Ok(LoadedSplit { name: name.to_string(), start, rows: n, row_shape: manifest.row_shape.clone(), features, labels })
}

fn check_chunks(m: &DatasetManifest, chunks: &[ChunkRef], row_bytes: u64, what: &str) -> Result<(), String> {
    let mut total = 0u64;
    for (i, c) in chunks.iter().enumerate() {
        if c.rows.checked_mul(row_bytes) != Some(c.bytes) {
            return Err(format!(
                "{what} chunk {i} ({}) claims {} rows in {} bytes: expected {} bytes",
                c.blob,
                c.rows,
                c.bytes,
                c.rows as u128 * row_bytes as u128
            ));
        }
        total = total.saturating_add(c.rows);
    }
    if total != m.rows {
        return Err(format!("{what} chunks hold {total} rows, the manifest says {}", m.rows));
    }
    Ok(())
}

/// Decodes rows `[start, end)` of `chunks` (`per_row` elements of 4 bytes each) into `out`.
#[allow(clippy::too_many_arguments)]
fn decode_range<T: Send>(
    m: &DatasetManifest,
    chunks: &[ChunkRef],
    per_row: usize,
    start: u64,
    end: u64,
    out: &mut [T],
    store: &dyn BlobStore,
    decode: fn([u8; 4]) -> T,
) -> Result<()> {
    // Carve `out` into one disjoint slice per overlapping chunk.
    let mut tasks: Vec<(usize, &ChunkRef, u64, &mut [T])> = Vec::new();
    let mut rest = out;
    let mut chunk_start = 0u64;
    for (i, c) in chunks.iter().enumerate() {
        let chunk_end = chunk_start + c.rows;
        let (a, b) = (start.max(chunk_start), end.min(chunk_end));
        if a < b {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut((b - a) as usize * per_row);
            tasks.push((i, c, a - chunk_start, head));
            rest = tail;
        }
        chunk_start = chunk_end;
    }
    debug_assert!(rest.is_empty());
    tasks.into_par_iter().try_for_each(|(i, c, first_row, dest)| {
        let id = BlobId::parse(&c.blob)?;
        let bytes = store.get(&id)?;
        if bytes.len() as u64 != c.bytes {
            return Err(DatasetError::Manifest {
                name: m.name.clone(),
                problem: format!("chunk {i} ({}) is {} bytes, its ChunkRef says {}", c.blob, bytes.len(), c.bytes),
            });
        }
        let off = first_row as usize * per_row * 4;
        let src = &bytes[off..off + dest.len() * 4];
        for (d, s) in dest.iter_mut().zip(src.chunks_exact(4)) {
            *d = decode(s.try_into().unwrap());
        }
        Ok(())
    })
}
