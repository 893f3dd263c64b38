//! Bad inputs: each is a DatasetError naming the problem, and the blob store is left empty.

use std::io::Write;
use std::path::{Path, PathBuf};

use aidos_blob::LocalDirStore;
use aidos_datasets::*;

struct Env {
    dir: tempfile::TempDir,
    store: LocalDirStore,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path().join("blobs")).unwrap();
        Env { dir, store }
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    fn store_is_empty(&self) -> bool {
        std::fs::read_dir(self.store.root()).unwrap().next().is_none()
    }
    /// Ingests `source` expecting an error; checks the store is still empty and returns the message.
    fn ingest_err(&self, source: &Source) -> String {
        let e = ingest("ds", source, &IngestOptions::default(), &self.store).expect_err("ingest should fail");
        assert!(self.store_is_empty(), "a failed ingest wrote blobs ({e})");
        e.to_string()
    }
    fn ingest_ok(&self, source: &Source, opts: &IngestOptions) -> DatasetManifest {
        ingest("ds", source, opts, &self.store).unwrap()
    }
}

fn idx(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_source(env: &Env, images: &[u8], labels: &[u8]) -> Source {
    Source::Idx { images: env.write("images-idx3-ubyte", images), labels: env.write("labels-idx1-ubyte", labels) }
}

const PIXELS: [u8; 12] = [0, 255, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100];

#[test]
fn idx_good_raw_and_gz() {
    let env = Env::new();
    let m =
        env.ingest_ok(&idx_source(&env, &idx(&[3, 2, 2], &PIXELS), &idx(&[3], &[1, 0, 4])), &IngestOptions::default());
    assert_eq!((m.rows, m.num_classes, m.row_shape.clone()), (3, 5, vec![1, 2, 2]));
    let env2 = Env::new();
    let m2 = env2.ingest_ok(
        &idx_source(&env2, &gz(&idx(&[3, 2, 2], &PIXELS)), &gz(&idx(&[3], &[1, 0, 4]))),
        &IngestOptions::default(),
    );
    assert_eq!(m2.content_hash, m.content_hash);
    let all = load_all(&m2, &env2.store).unwrap();
    assert_eq!(all.features[1], 1.0);
    assert_eq!(all.labels, vec![1, 0, 4]);
}

#[test]
fn idx_truncated_raw() {
    let env = Env::new();
    let img = idx(&[3, 2, 2], &PIXELS);
    let e = env.ingest_err(&idx_source(&env, &img[..img.len() - 3], &idx(&[3], &[1, 0, 4])));
    assert!(
        e.contains("images-idx3-ubyte")
            && e.contains("truncated")
            && e.contains("expected 3×2×2 = 12 bytes")
            && e.contains("byte 16"),
        "{e}"
    );
}

#[test]
fn idx_truncated_gz_real_mnist() {
    let env = Env::new();
    let real =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist10k/images-idx3-ubyte.gz")).unwrap();
    let labels =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist10k/labels-idx1-ubyte.gz")).unwrap();
    let s = Source::Idx {
        images: env.write("images-idx3-ubyte.gz", &real[..real.len() / 2]),
        labels: env.write("labels-idx1-ubyte.gz", &labels),
    };
    let e = env.ingest_err(&s);
    assert!(e.contains("images-idx3-ubyte.gz") && e.contains("gzip stream is corrupt or truncated"), "{e}");
    // Cut inside the gzip trailer (CRC/length): still detected.
    let s = Source::Idx {
        images: env.write("images-idx3-ubyte.gz", &real[..real.len() - 4]),
        labels: env.write("labels-idx1-ubyte.gz", &labels),
    };
    let e = env.ingest_err(&s);
    assert!(e.contains("gzip"), "{e}");
}

#[test]
fn idx_wrong_magic_dtype_dims() {
    let env = Env::new();
    let mut bad = idx(&[3, 2, 2], &PIXELS);
    bad[0] = 0x12;
    let e = env.ingest_err(&idx_source(&env, &bad, &idx(&[3], &[1, 0, 4])));
    assert!(e.contains("bad magic 12 00 08 03") && e.contains("byte 0"), "{e}");
    let mut bad = idx(&[3, 2, 2], &PIXELS);
    bad[2] = 0x0C;
    let e = env.ingest_err(&idx_source(&env, &bad, &idx(&[3], &[1, 0, 4])));
    assert!(e.contains("0x0c (i32)") && e.contains("expected 0x08 (u8)"), "{e}");
    // Labels file given an idx3.
    let e = env.ingest_err(&idx_source(&env, &idx(&[3, 2, 2], &PIXELS), &idx(&[3, 2, 2], &PIXELS)));
    assert!(e.contains("labels-idx1-ubyte") && e.contains("3 dims, expected 1"), "{e}");
    let mut trailing = idx(&[3, 2, 2], &PIXELS);
    trailing.push(7);
    let e = env.ingest_err(&idx_source(&env, &trailing, &idx(&[3], &[1, 0, 4])));
    assert!(e.contains("trailing bytes"), "{e}");
}

#[test]
fn idx_label_count_mismatch() {
    let env = Env::new();
    let e = env.ingest_err(&idx_source(&env, &idx(&[3, 2, 2], &PIXELS), &idx(&[2], &[1, 0])));
    assert!(e.contains("label count mismatch") && e.contains("holds 3 rows") && e.contains("holds 2 labels"), "{e}");
}

fn csv_source(env: &Env, text: &str) -> Source {
    Source::Csv { path: env.write("data.csv", text.as_bytes()), label_column: None }
}

#[test]
fn csv_errors() {
    let env = Env::new();
    let e = env.ingest_err(&csv_source(&env, "a,b,label\n1,2,0\n3,x,1\n"));
    assert!(
        e.contains("data.csv")
            && e.contains("line 3")
            && e.contains("column 2 (\"b\")")
            && e.contains("\"x\" is not a number"),
        "{e}"
    );
    let e = env.ingest_err(&csv_source(&env, "a,b,label\n1,2,0\n3,4\n"));
    assert!(e.contains("line 3") && e.contains("2 fields, expected 3"), "{e}");
    let e = env.ingest_err(&csv_source(&env, "a,b,label\n1,2,0\n3,4,-1\n"));
    assert!(e.contains("line 3") && e.contains("column 3 (\"label\")") && e.contains("negative"), "{e}");
    let e = env.ingest_err(&csv_source(&env, "a,b,label\n1,2,0\n3,4,1.5\n"));
    assert!(e.contains("not a non-negative integer"), "{e}");
    let e = env.ingest_err(&csv_source(&env, "a,b,label\n"));
    assert!(e.contains("no data rows"), "{e}");
    let e = env.ingest_err(&Source::Csv { path: env.write("data.csv", b"a,b\n1,2\n"), label_column: Some("y".into()) });
    assert!(e.contains("no label column \"y\"") && e.contains("a, b"), "{e}");
}

#[test]
fn csv_missing_duplicates_and_label_choice() {
    let env = Env::new();
    // No `label` column: the last one (`class`) is the label.
    let text = "x,y,class\n1,2,0\n,NaN,1\n1,2,0\n5,nan,2\n1,2,1\n";
    let s = csv_source(&env, text);
    let m = env.ingest_ok(&s, &IngestOptions { chunk_rows: 2, splits: SplitSpec::parse("a=3,b=2").unwrap() });
    let st = m.stats.as_ref().unwrap();
    assert_eq!(m.row_shape, vec![2]);
    assert_eq!(st.missing_values, 3);
    assert_eq!(st.duplicate_rows, 1); // row 3 repeats row 1; row 5 differs by its label
    assert_eq!(st.label_histogram.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(), vec![(0, 2), (1, 2), (2, 1)]);
    assert_eq!((st.features[0].min, st.features[0].max, st.features[0].mean), (1.0, 5.0, 2.0));
    assert_eq!(st.features[1].mean, 2.0);
    assert_eq!(m.num_classes, 3);
    assert_eq!(m.feature_chunks.len(), 3);
    let b = load_split(&m, "b", &env.store).unwrap();
    assert_eq!(b.labels, vec![2, 1]);
    assert!(b.features[1].is_nan() && b.features[0] == 5.0);
    // An explicit label column in the middle.
    let m = env.ingest_ok(
        &Source::Csv { path: env.write("data.csv", b"label,f\n1,0.5\n2,1.5\n"), label_column: None },
        &IngestOptions::default(),
    );
    assert_eq!(load_all(&m, &env.store).unwrap().labels, vec![1, 2]);
}

fn npy_f4(shape: &[u64], fortran: bool) -> Vec<u8> {
    let n: u64 = shape.iter().product();
    let data: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    encode_npy("<f4", fortran, shape, &data)
}

fn npy_labels(labels: &[i64]) -> Vec<u8> {
    let data: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    encode_npy("<i8", false, &[labels.len() as u64], &data)
}

#[test]
fn npy_good_and_directory_detection() {
    let env = Env::new();
    let d = env.dir.path().join("npyset");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("X.npy"), npy_f4(&[4, 2, 3], false)).unwrap();
    std::fs::write(d.join("y.npy"), npy_labels(&[3, 1, 0, 3])).unwrap();
    let s = Source::detect(&d, None).unwrap();
    assert_eq!(s, Source::Npy { features: d.join("X.npy"), labels: d.join("y.npy") });
    assert_eq!(Source::detect(&d.join("X.npy"), None).unwrap(), s);
    let m = env.ingest_ok(&s, &IngestOptions::default());
    assert_eq!((m.rows, m.row_shape.clone(), m.num_classes, m.format.as_str()), (4, vec![2, 3], 4, "npy"));
    let all = load_all(&m, &env.store).unwrap();
    assert_eq!(all.row(3), &[18.0, 19.0, 20.0, 21.0, 22.0, 23.0]);
    assert_eq!(all.labels, vec![3, 1, 0, 3]);
}

#[test]
fn npy_errors() {
    let env = Env::new();
    let src =
        |env: &Env, f: &[u8], l: &[u8]| Source::Npy { features: env.write("X.npy", f), labels: env.write("y.npy", l) };
    let good_labels = npy_labels(&[0, 1, 2, 3]);

    let mut bad_header = npy_f4(&[4, 2], false);
    let pos = bad_header.windows(5).position(|w| w == b"shape").unwrap();
    bad_header[pos + 9] = b'x'; // "(4, 2)" -> "(x, 2)"
    let e = env.ingest_err(&src(&env, &bad_header, &good_labels));
    assert!(e.contains("X.npy") && e.contains("bad header") && e.contains("bad shape tuple"), "{e}");

    let e = env.ingest_err(&src(&env, b"not an npy file at all", &good_labels));
    assert!(e.contains("bad magic"), "{e}");

    let e = env.ingest_err(&src(&env, &npy_f4(&[4, 2], true), &good_labels));
    assert!(e.contains("fortran_order is True") && e.contains("C-order"), "{e}");

    let f = npy_f4(&[4, 2], false);
    let e = env.ingest_err(&src(&env, &f[..f.len() - 5], &good_labels));
    assert!(e.contains("truncated") && e.contains("expected 32") && e.contains("data is 27 bytes"), "{e}");

    let e = env.ingest_err(&src(&env, &npy_f4(&[4, 2], false), &npy_labels(&[0, 1, 2])));
    assert!(e.contains("label count mismatch") && e.contains("4 rows") && e.contains("3 labels"), "{e}");

    let e = env.ingest_err(&src(&env, &npy_f4(&[4, 2], false), &npy_f4(&[4], false)));
    assert!(e.contains("y.npy") && e.contains("expected an integer dtype"), "{e}");

    let e = env.ingest_err(&src(&env, &npy_f4(&[4, 2], false), &npy_labels(&[0, -1, 2, 3])));
    assert!(e.contains("label -1 at index 1"), "{e}");

    let e = env.ingest_err(&src(&env, &encode_npy("<c8", false, &[1], &[0; 8]), &good_labels));
    assert!(e.contains("dtype \"<c8\" is not supported"), "{e}");
}

#[test]
fn split_spec_errors() {
    let cases = [
        ("", "empty"),
        ("train", "has no '='"),
        ("train=10,train=5", "appears twice"),
        ("train=10,test=0.5", "mixes row counts and fractions"),
        ("train=0", "0 rows"),
        ("train=1.5", "outside (0, 1]"),
        ("train=0.7,test=0.4", "over 1"),
        ("train=ten", "not a row count"),
        ("a/b=10", "split name \"a/b\" is invalid"),
        ("train=-3", "-3 is negative"),
    ];
    for (spec, want) in cases {
        let e = SplitSpec::parse(spec).unwrap_err().to_string();
        assert!(e.contains(want), "{spec:?}: {e}");
    }
    let e = resolve_splits(&SplitSpec::parse("train=8000,test=3000").unwrap(), 10_000).unwrap_err().to_string();
    assert!(e.contains("need 11000 rows but the dataset has 10000"), "{e}");
    let e = resolve_splits(&SplitSpec::parse("train=0.9,test=0.01").unwrap(), 50).unwrap_err().to_string();
    assert!(e.contains("\"test\" would have 0 rows"), "{e}");

    let r = |s: &str, rows| {
        resolve_splits(&SplitSpec::parse(s).unwrap(), rows)
            .unwrap()
            .iter()
            .map(|s| (s.start, s.end))
            .collect::<Vec<_>>()
    };
    assert_eq!(r("train=0.8,test=0.2", 10), vec![(0, 8), (8, 10)]);
    assert_eq!(r("a=0.333,b=0.333,c=0.334", 10), vec![(0, 3), (3, 6), (6, 10)]);
    assert_eq!(r("train=0.7,test=0.2", 10), vec![(0, 7), (7, 9)]);
    assert_eq!(r("a=3,b=4", 10), vec![(0, 3), (3, 7)]);
    assert_eq!(resolve_splits(&[], 7).unwrap()[0].name, "all");

    // A split error at ingest writes nothing.
    let env = Env::new();
    let s = csv_source(&env, "a,label\n1,0\n2,1\n");
    let e = ingest(
        "ds",
        &s,
        &IngestOptions { splits: SplitSpec::parse("a=2,b=1").unwrap(), ..Default::default() },
        &env.store,
    )
    .unwrap_err();
    assert!(e.to_string().contains("need 3 rows but the dataset has 2"), "{e}");
    assert!(env.store_is_empty());
}

#[test]
fn names_sources_and_limits() {
    let env = Env::new();
    let s = csv_source(&env, "a,label\n1,0\n");
    for bad in ["", "has space", "a/b", &"x".repeat(65)] {
        let e = ingest(bad, &s, &IngestOptions::default(), &env.store).unwrap_err();
        assert!(matches!(e, DatasetError::BadName(_)), "{bad:?}: {e}");
    }
    assert!(valid_name("mnist-v1.2_x"));
    let e =
        ingest("ds", &s, &IngestOptions { chunk_rows: 0, ..Default::default() }, &env.store).unwrap_err().to_string();
    assert!(e.contains("chunk_rows is 0"), "{e}");
    assert!(env.store_is_empty());

    // CSV with a labels file, unknown file, empty dir.
    let csv_path = env.dir.path().join("data.csv");
    let e = Source::detect(&csv_path, Some(&csv_path)).unwrap_err().to_string();
    assert!(e.contains("holds its own label column"), "{e}");
    let e = Source::detect(&env.write("notes.txt", b"hello"), None).unwrap_err().to_string();
    assert!(e.contains("cannot tell the format"), "{e}");
    let empty = env.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = Source::detect(&empty, None).unwrap_err().to_string();
    assert!(e.contains("no dataset files"), "{e}");

    // Over the input limit: a sparse 9 GiB file is refused before it is read.
    let big = env.dir.path().join("big.csv");
    std::fs::File::create(&big).unwrap().set_len(MAX_INPUT_BYTES + (1 << 30)).unwrap();
    let e = env.ingest_err(&Source::Csv { path: big, label_column: None });
    assert!(e.contains("big.csv") && e.contains("over the limit of 8589934592 bytes"), "{e}");
}
