//! The real MNIST sample (data/mnist10k: 10,000 test images): ingest, splits, load, determinism, diff.

use std::path::{Path, PathBuf};

use aidos_blob::LocalDirStore;
use aidos_datasets::*;

fn mnist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist10k")
}

fn opts(splits: &str) -> IngestOptions {
    IngestOptions { splits: SplitSpec::parse(splits).unwrap(), ..Default::default() }
}

#[test]
fn mnist_ingest_split_load_and_determinism() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirStore::open(dir.path().join("blobs")).unwrap();
    let source = Source::detect(&mnist_dir(), None).unwrap();
    assert!(matches!(&source, Source::Idx { images, labels }
        if images.ends_with("images-idx3-ubyte.gz") && labels.ends_with("labels-idx1-ubyte.gz")));
    let m = ingest("mnist", &source, &opts("train=8000,test=2000"), &store).unwrap();

    assert_eq!(m.rows, 10_000);
    assert_eq!(m.row_shape, vec![1, 28, 28]);
    assert_eq!(m.num_classes, 10);
    assert_eq!((m.format.as_str(), m.dtype.as_str(), m.version), ("idx", "f32", 0));
    assert_eq!(m.source, "images-idx3-ubyte.gz,labels-idx1-ubyte.gz");
    assert_eq!(m.feature_chunks.len(), 3); // 4096 + 4096 + 1808
    assert_eq!(m.feature_chunks[2].rows, 1808);
    assert_eq!(m.feature_chunks[0].bytes, 4096 * 784 * 4);
    let stats = m.stats.as_ref().unwrap();
    assert_eq!(stats.label_histogram.values().sum::<u64>(), 10_000);
    assert_eq!(stats.label_histogram.len(), 10);
    assert_eq!(stats.features.len(), 784);
    let lo = stats.features.iter().map(|f| f.min).fold(f64::INFINITY, f64::min);
    let hi = stats.features.iter().map(|f| f.max).fold(f64::NEG_INFINITY, f64::max);
    assert_eq!((lo, hi), (0.0, 1.0));
    assert_eq!(stats.missing_values, 0);
    assert_eq!(m.splits.len(), 2);
    assert_eq!((m.splits[1].name.as_str(), m.splits[1].start, m.splits[1].end), ("test", 8000, 10_000));

    // The test split: the file's last 2,000 rows.
    let table = source.read().unwrap();
    let test = load_split(&m, "test", &store).unwrap();
    assert_eq!(test.rows, 2000);
    assert_eq!(test.labels.len(), 2000);
    assert_eq!(test.labels, table.labels[8000..]);
    assert_eq!(test.labels[1995..], [8, 4, 0, 6, 6]); // the file's last labels, read independently
    assert_eq!(test.features, table.features[8000 * 784..]);
    assert_eq!(test.row_shape, vec![1, 28, 28]);
    let all = load_all(&m, &store).unwrap();
    assert_eq!(all.labels[..10], [9, 3, 7, 0, 9, 7, 7, 9, 6, 5]); // read independently (Python gzip)
    assert_eq!(all.features, table.features);
    let e = load_split(&m, "validation", &store).unwrap_err().to_string();
    assert!(e.contains("validation") && e.contains("train, test"), "{e}");

    // Same files → same chunks and content hash (into a second, fresh store too).
    let store2 = LocalDirStore::open(dir.path().join("blobs2")).unwrap();
    let m2 = ingest("mnist", &source, &opts("train=0.8,test=0.2"), &store2).unwrap();
    assert_eq!(m2.content_hash, m.content_hash);
    assert_eq!(m2.feature_chunks, m.feature_chunks);
    assert_eq!(m2.label_chunks, m.label_chunks);
    assert_eq!(m2.row_hashes_blob, m.row_hashes_blob);
    assert_eq!(m2.splits, m.splits);

    let d = describe(&m);
    let get = |k: &str| d.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("rows"), "10000");
    assert!(get("features").starts_with("784 features: overall range [0, 1]"), "{}", get("features"));
    assert!(get("splits").contains("test [8000, 10000) 2000 rows"));

    // diff: v1 = rows 0..9000, v2 = rows 1000..10000.
    let v1 = ingest_table("mnist", &table.slice_rows(0, 9000), &IngestOptions::default(), &store).unwrap();
    let v2 = ingest_table("mnist", &table.slice_rows(1000, 10_000), &IngestOptions::default(), &store).unwrap();
    let r = diff(&v1, &v2, &store).unwrap();
    let dups = stats.duplicate_rows;
    assert_eq!(dups, 0, "the MNIST test set has no exact duplicate rows");
    assert_eq!(r, DiffReport { rows_a: 9000, rows_b: 9000, added: 1000, removed: 1000, unchanged: 8000 });
    assert_eq!(diff(&m, &m, &store).unwrap().unchanged, 10_000);
}

#[test]
fn images_file_with_sibling_or_explicit_labels() {
    let images = mnist_dir().join("images-idx3-ubyte.gz");
    let labels = mnist_dir().join("labels-idx1-ubyte.gz");
    assert_eq!(Source::detect(&images, None).unwrap(), Source::Idx { images: images.clone(), labels: labels.clone() });
    assert_eq!(Source::detect(&images, Some(&labels)).unwrap(), Source::Idx { images, labels });
}
