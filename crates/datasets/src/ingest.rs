//! Ingest: parse + validate a source in memory, then write chunk blobs and return the manifest.
//!
//! Order (the invariant that matters): everything that can reject the input — reading, format validation, label
//! counts, name, options, splits — happens before the first `store.put`. A bad input writes nothing. Once writing
//! starts only the store itself can fail; blobs already written are then unreferenced (content-addressed, so a
//! retry reuses them and a GC may drop them) and no manifest is returned.
//!
//! Encoding (see the crate doc for the layout): chunk `c` holds rows `[c·chunk_rows, min((c+1)·chunk_rows, rows))`;
//! chunks are encoded, hashed and written in parallel (rayon), one chunk's bytes in memory per worker thread.

use std::collections::{BTreeMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use aidos_api::v1::{ChunkRef, DatasetManifest, DatasetStats, FeatureStats};
use aidos_blob::BlobStore;
use rayon::prelude::*;

use crate::error::{DatasetError, Result};
use crate::source::Source;
use crate::split::{SplitSpec, resolve_splits};
use crate::table::{MAX_CHUNK_BYTES, Table};

/// Default rows per chunk.
pub const DEFAULT_CHUNK_ROWS: usize = 4096;

/// Bytes of one row hash in the `row_hashes_blob`.
pub const ROW_HASH_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub struct IngestOptions {
    /// Rows per chunk (≥ 1; a chunk's features must fit in [`crate::MAX_CHUNK_BYTES`]). Part of the content
    /// hash: the same rows chunked differently hash differently.
    pub chunk_rows: usize,
    /// Empty: one split `all`.
    pub splits: Vec<SplitSpec>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self { chunk_rows: DEFAULT_CHUNK_ROWS, splits: Vec::new() }
    }
}

/// Dataset (and split) names: `[A-Za-z0-9._-]{1,64}`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn validate_name(name: &str) -> Result<()> {
    if valid_name(name) { Ok(()) } else { Err(DatasetError::BadName(name.chars().take(80).collect())) }
}

/// Reads `source`, validates it, and stores it as dataset `name` (version 0: the cluster assigns it on commit).
pub fn ingest(name: &str, source: &Source, opts: &IngestOptions, store: &dyn BlobStore) -> Result<DatasetManifest> {
    validate_name(name)?;
    check_options(opts, 1)?;
    let table = source.read()?;
    let mut m = ingest_table(name, &table, opts, store)?;
    m.source = source.source_name();
    Ok(m)
}

fn check_options(opts: &IngestOptions, row_len: u64) -> Result<()> {
    if opts.chunk_rows == 0 {
        return Err(DatasetError::Invalid("chunk_rows is 0: expected at least 1".into()));
    }
    let bytes = (opts.chunk_rows as u64).saturating_mul(row_len).saturating_mul(4);
    if bytes > MAX_CHUNK_BYTES {
        return Err(DatasetError::Invalid(format!(
            "chunk_rows {} × {row_len} values × 4 bytes = {bytes} bytes per chunk, over the {MAX_CHUNK_BYTES}-byte limit",
            opts.chunk_rows
        )));
    }
    Ok(())
}

/// Stores an in-memory table as dataset `name` (`source` left empty for the caller to fill).
pub fn ingest_table(name: &str, table: &Table, opts: &IngestOptions, store: &dyn BlobStore) -> Result<DatasetManifest> {
    // ---- validate everything first: nothing below the `write` line may reject the input.
    validate_name(name)?;
    table.validate()?;
    let row_len = table.row_len();
    check_options(opts, row_len as u64)?;
    let rows = table.rows();
    let splits = resolve_splits(&opts.splits, rows)?;
    let max_label = *table.labels.iter().max().expect("validate: at least one row");
    let num_classes = max_label
        .checked_add(1)
        .ok_or_else(|| DatasetError::Invalid(format!("label {max_label} leaves no room for num_classes (u32)")))?;
    let (features_stats, missing) = feature_stats(table);
    let mut label_histogram = BTreeMap::new();
    for &l in &table.labels {
        *label_histogram.entry(l).or_insert(0u64) += 1;
    }

    // ---- write: chunks in parallel, each encoded, row-hashed and put by one worker.
    let chunk_rows = opts.chunk_rows;
    let n_chunks = table.labels.len().div_ceil(chunk_rows);
    let written: Vec<(ChunkRef, ChunkRef, Vec<u8>)> = (0..n_chunks)
        .into_par_iter()
        .map(|c| {
            let r0 = c * chunk_rows;
            let r1 = (r0 + chunk_rows).min(table.labels.len());
            let fbytes = encode_f32(&table.features[r0 * row_len..r1 * row_len]);
            let lbytes: Vec<u8> = table.labels[r0..r1].iter().flat_map(|l| l.to_le_bytes()).collect();
            let mut hashes = Vec::with_capacity((r1 - r0) * ROW_HASH_BYTES);
            for r in 0..r1 - r0 {
                hashes.extend_from_slice(&row_hash(
                    &fbytes[r * row_len * 4..(r + 1) * row_len * 4],
                    &lbytes[r * 4..r * 4 + 4],
                ));
            }
            let n = (r1 - r0) as u64;
            let fid = store.put(&fbytes)?;
            let lid = store.put(&lbytes)?;
            Ok((
                ChunkRef { blob: fid.to_string(), rows: n, bytes: fbytes.len() as u64 },
                ChunkRef { blob: lid.to_string(), rows: n, bytes: lbytes.len() as u64 },
                hashes,
            ))
        })
        .collect::<Result<_>>()?;
    let mut feature_chunks = Vec::with_capacity(n_chunks);
    let mut label_chunks = Vec::with_capacity(n_chunks);
    let mut row_hashes = Vec::with_capacity(table.labels.len() * ROW_HASH_BYTES);
    for (f, l, h) in written {
        feature_chunks.push(f);
        label_chunks.push(l);
        row_hashes.extend_from_slice(&h);
    }
    let mut seen = HashSet::with_capacity(table.labels.len());
    let duplicate_rows = row_hashes.chunks_exact(ROW_HASH_BYTES).filter(|h| !seen.insert(*h)).count() as u64;
    let row_hashes_blob = store.put(&row_hashes)?.to_string();
    let content_hash = content_hash(&table.row_shape, &feature_chunks, &label_chunks);
    let created_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    Ok(DatasetManifest {
        name: name.to_string(),
        version: 0,
        format: table.format.to_string(),
        row_shape: table.row_shape.clone(),
        dtype: "f32".into(),
        rows,
        feature_chunks,
        label_chunks,
        row_hashes_blob,
        stats: Some(DatasetStats {
            label_histogram,
            features: features_stats,
            duplicate_rows,
            missing_values: missing,
        }),
        splits,
        content_hash,
        created_at_ms,
        source: String::new(),
        num_classes,
        // Set by the scheduler from the committing call.
        project: String::new(),
    })
}

/// f32 little endian; every NaN written as the canonical `f32::NAN` so equal rows give equal bytes.
fn encode_f32(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for &v in values {
        let v = if v.is_nan() { f32::NAN } else { v };
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// First 16 bytes of BLAKE3(feature bytes ‖ label bytes) of one row.
pub fn row_hash(feature_bytes: &[u8], label_bytes: &[u8]) -> [u8; ROW_HASH_BYTES] {
    let mut h = blake3::Hasher::new();
    h.update(feature_bytes);
    h.update(label_bytes);
    h.finalize().as_bytes()[..ROW_HASH_BYTES].try_into().unwrap()
}

/// BLAKE3 hex over a fixed tag, the row shape (u64 LE each), the dtype, then the feature and label chunk ids in
/// order: equal content (and chunking) ⇒ equal hash. Splits, stats and the name are not part of it.
pub fn content_hash(row_shape: &[u64], feature_chunks: &[ChunkRef], label_chunks: &[ChunkRef]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"aidos-dataset-v1\0shape");
    h.update(&(row_shape.len() as u64).to_le_bytes());
    for d in row_shape {
        h.update(&d.to_le_bytes());
    }
    h.update(b"\0f32\0features");
    for c in feature_chunks {
        h.update(c.blob.as_bytes());
        h.update(b"\n");
    }
    h.update(b"\0labels");
    for c in label_chunks {
        h.update(c.blob.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

/// Rows per block of the stats pass: fixed (not tied to threads or chunk size) so the f64 sums, merged in block
/// order, are the same on every machine.
const STATS_BLOCK_ROWS: usize = 1024;

#[derive(Clone)]
struct Acc {
    min: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f64>,
    count: Vec<u64>,
    nan: u64,
}

/// Per-feature min/max/mean ignoring NaN (all-NaN feature: NaN for all three), and the NaN count.
fn feature_stats(table: &Table) -> (Vec<FeatureStats>, u64) {
    let rl = table.row_len();
    let empty = Acc {
        min: vec![f32::INFINITY; rl],
        max: vec![f32::NEG_INFINITY; rl],
        sum: vec![0.0; rl],
        count: vec![0; rl],
        nan: 0,
    };
    let blocks: Vec<Acc> = table
        .features
        .par_chunks(STATS_BLOCK_ROWS * rl)
        .map(|block| {
            let mut a = empty.clone();
            for row in block.chunks_exact(rl) {
                for (j, &v) in row.iter().enumerate() {
                    if v.is_nan() {
                        a.nan += 1;
                    } else {
                        a.min[j] = a.min[j].min(v);
                        a.max[j] = a.max[j].max(v);
                        a.sum[j] += v as f64;
                        a.count[j] += 1;
                    }
                }
            }
            a
        })
        .collect();
    let mut t = empty;
    for b in blocks {
        t.nan += b.nan;
        for j in 0..rl {
            t.min[j] = t.min[j].min(b.min[j]);
            t.max[j] = t.max[j].max(b.max[j]);
            t.sum[j] += b.sum[j];
            t.count[j] += b.count[j];
        }
    }
    let stats = (0..rl)
        .map(|j| {
            if t.count[j] == 0 {
                FeatureStats { min: f64::NAN, max: f64::NAN, mean: f64::NAN }
            } else {
                FeatureStats { min: t.min[j] as f64, max: t.max[j] as f64, mean: t.sum[j] / t.count[j] as f64 }
            }
        })
        .collect();
    (stats, t.nan)
}
