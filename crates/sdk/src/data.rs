//! Loading one split of a dataset version from the blob store (the manifest contract of
//! `proto/aidos/v1/ml.proto`, implemented by `aidos_datasets`): only the chunks that overlap the split are read.

use aidos_api::v1::DatasetManifest;
use aidos_blob::BlobStore;
pub use aidos_datasets::LoadedSplit;

use crate::error::{Result, SdkError};

/// `NAME@vN` of a manifest.
pub fn manifest_ref(m: &DatasetManifest) -> String {
    format!("{}@v{}", m.name, m.version)
}

/// Loads split `split` of `manifest` from `store` (through `aidos_datasets::load_split`). Errors name the dataset
/// version, the split and the problem (unknown split with the known ones, inconsistent manifest, missing blob).
pub fn load_split(manifest: &DatasetManifest, split: &str, store: &dyn BlobStore) -> Result<LoadedSplit> {
    aidos_datasets::load_split(manifest, split, store)
        .map_err(|e| SdkError::Dataset { dataset: manifest_ref(manifest), problem: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aidos_api::v1::{ChunkRef, Split};
    use aidos_blob::LocalDirStore;

    /// 5 rows of 2 features (row r = [r, r + 0.5], label r % 3), features in chunks of 2/2/1 rows, labels in 3/2.
    fn fixture(store: &LocalDirStore) -> DatasetManifest {
        let feat = |r0: u64, r1: u64| -> ChunkRef {
            let b: Vec<u8> = (r0..r1).flat_map(|r| [r as f32, r as f32 + 0.5]).flat_map(f32::to_le_bytes).collect();
            ChunkRef { blob: store.put(&b).unwrap().to_string(), rows: r1 - r0, bytes: b.len() as u64 }
        };
        let lab = |r0: u64, r1: u64| -> ChunkRef {
            let b: Vec<u8> = (r0..r1).flat_map(|r| ((r % 3) as u32).to_le_bytes()).collect();
            ChunkRef { blob: store.put(&b).unwrap().to_string(), rows: r1 - r0, bytes: b.len() as u64 }
        };
        DatasetManifest {
            name: "toy".into(),
            version: 2,
            dtype: "f32".into(),
            row_shape: vec![2],
            rows: 5,
            feature_chunks: vec![feat(0, 2), feat(2, 4), feat(4, 5)],
            label_chunks: vec![lab(0, 3), lab(3, 5)],
            splits: vec![
                Split { name: "train".into(), start: 0, end: 3 },
                Split { name: "test".into(), start: 3, end: 5 },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn loads_splits_across_chunk_boundaries() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(d.path()).unwrap();
        let m = fixture(&store);
        let train = load_split(&m, "train", &store).unwrap();
        assert_eq!(train.features, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
        assert_eq!(train.labels, vec![0, 1, 2]);
        assert_eq!((train.row_len(), train.rows), (2, 3));
        let test = load_split(&m, "test", &store).unwrap();
        assert_eq!(test.features, vec![3.0, 3.5, 4.0, 4.5]);
        assert_eq!(test.labels, vec![0, 1]);
        let e = load_split(&m, "val", &store).unwrap_err().to_string();
        assert!(e.contains("toy@v2") && e.contains("\"val\"") && e.contains("train, test"), "{e}");
        let mut bad = m.clone();
        bad.feature_chunks[1].bytes = 3;
        let e = load_split(&bad, "test", &store).unwrap_err().to_string();
        assert!(e.contains("toy@v2") && e.contains("feature chunk 1"), "{e}");
    }
}
