//! Diff of two dataset versions by the multiset of their row hashes (features and label of each row).
//!
//! For each distinct row hash with `ca` occurrences in `a` and `cb` in `b`: `added += max(cb − ca, 0)`,
//! `removed += max(ca − cb, 0)`, `unchanged += min(ca, cb)`. Row order does not matter (a reordered dataset has
//! nothing added or removed). So `rows_a = removed + unchanged` and `rows_b = added + unchanged`.

use std::collections::HashMap;

use aidos_api::v1::DatasetManifest;
use aidos_blob::{BlobBytes, BlobId, BlobStore};

use crate::error::{DatasetError, Result};
use crate::ingest::ROW_HASH_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiffReport {
    pub rows_a: u64,
    pub rows_b: u64,
    pub added: u64,
    pub removed: u64,
    pub unchanged: u64,
}

fn row_hashes(m: &DatasetManifest, store: &dyn BlobStore) -> Result<BlobBytes> {
    let bytes = store.get(&BlobId::parse(&m.row_hashes_blob)?)?;
    if Some(bytes.len() as u64) != m.rows.checked_mul(ROW_HASH_BYTES as u64) {
        return Err(DatasetError::Manifest {
            name: m.name.clone(),
            problem: format!("row hashes blob is {} bytes, expected {} rows × {ROW_HASH_BYTES}", bytes.len(), m.rows),
        });
    }
    Ok(bytes)
}

pub fn diff(a: &DatasetManifest, b: &DatasetManifest, store: &dyn BlobStore) -> Result<DiffReport> {
    let (ha, hb) = (row_hashes(a, store)?, row_hashes(b, store)?);
    let mut counts: HashMap<&[u8], (u64, u64)> = HashMap::with_capacity(a.rows as usize);
    for h in ha.chunks_exact(ROW_HASH_BYTES) {
        counts.entry(h).or_default().0 += 1;
    }
    for h in hb.chunks_exact(ROW_HASH_BYTES) {
        counts.entry(h).or_default().1 += 1;
    }
    let mut r = DiffReport { rows_a: a.rows, rows_b: b.rows, ..Default::default() };
    for (ca, cb) in counts.into_values() {
        r.added += cb.saturating_sub(ca);
        r.removed += ca.saturating_sub(cb);
        r.unchanged += ca.min(cb);
    }
    Ok(r)
}
