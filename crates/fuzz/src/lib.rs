//! Fuzz targets: every decoder of aidos that takes outside input, each as one `fn(&[u8])` that must return for
//! every input, never panic, abort, hang or allocate without bound. The same functions run three ways:
//! - coverage-guided under libFuzzer, `cargo +nightly fuzz run <target>` in `fuzz/` (one tiny binary per target;
//!   `bash benches/fuzz.sh` runs them all for a fixed budget and records executions and crashes);
//! - replayed from `crates/fuzz/regressions/<target>/` (every crash the fuzzer found, kept after its fix) and
//!   from the seeds, in `cargo test` on stable (`tests/replay.rs`);
//! - under a seeded mutation loop in `cargo test`, so CI explores a few thousand inputs per target itself.
//!
//! A target only drives the decoder the way its front does (the HTTP router, the gRPC service method, the file
//! reader, the upload assembler); the outcome (accepted or refused with an error) is not judged here, except
//! where a target states an invariant and asserts it.

pub mod infer;
pub mod mutate;
mod seeds;

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A decoder under test.
pub struct Target {
    pub name: &'static str,
    /// What it decodes, for the record.
    pub what: &'static str,
    pub run: fn(&[u8]),
    /// Valid (and a few invalid) inputs to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target; `fuzz/fuzz_targets/<name>.rs` exists for each (`tests/replay.rs` checks).
pub const TARGETS: &[Target] = &[
    Target { name: "job_spec", what: "job spec TOML (aidos submit)", run: job_spec, seeds: seeds::job_specs },
    Target {
        name: "sweep_spec",
        what: "sweep spec TOML (aidos sweep submit)",
        run: sweep_spec,
        seeds: seeds::sweep_specs,
    },
    Target {
        name: "infer_json",
        what: "KServe v2 JSON inference request (HTTP)",
        run: infer::json,
        seeds: seeds::infer_json,
    },
    Target {
        name: "infer_binary",
        what: "KServe v2 binary-tensor inference request (HTTP)",
        run: infer::binary,
        seeds: seeds::infer_binary,
    },
    Target {
        name: "infer_grpc",
        what: "ModelInferRequest protobuf (gRPC)",
        run: infer::grpc,
        seeds: seeds::infer_grpc,
    },
    Target { name: "idx", what: "IDX images + labels files (dataset push)", run: idx, seeds: seeds::idx },
    Target { name: "csv", what: "CSV dataset file (dataset push)", run: csv, seeds: seeds::csv },
    Target { name: "npy", what: "NPY features + labels files (dataset push)", run: npy, seeds: seeds::npy },
    Target {
        name: "onnx",
        what: "ONNX model loaded by the tract runtime (serve, edge)",
        run: onnx,
        seeds: seeds::onnx,
    },
    Target {
        name: "blob_upload",
        what: "blob-service upload chunks (protobuf stream)",
        run: blob_upload,
        seeds: seeds::blob_upload,
    },
    Target { name: "task_log", what: "framed task log (job logs)", run: task_log, seeds: seeds::task_log },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Splits `data` into two inputs: a little-endian u16 length of the first, then the first, then the second (a
/// short or oversized length takes what there is).
pub fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (data, &[]);
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    (&data[2..2 + n], &data[2 + n..])
}

/// The inverse of [`split2`], for seeds.
pub fn join2(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut v = (a.len() as u16).to_le_bytes().to_vec();
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    v
}

/// Two scratch files of this process, for the readers that take paths (rewritten on every input).
fn scratch() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("a scratch directory");
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        (d, a, b)
    })
}

fn write(path: &PathBuf, data: &[u8]) {
    let mut f = std::fs::File::create(path).expect("scratch file");
    f.write_all(data).expect("scratch write");
}

fn job_spec(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = aidos_api::spec::parse_toml(text);
    }
}

fn sweep_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = aidos_api::sweep::parse_toml(text) else { return };
    // A valid spec must also order its parameters (conditions form no cycle) and build a trial's job spec for
    // any assignment of the active parameters: first choices / lower bounds.
    let order = aidos_api::sweep::order(&spec.params).expect("a validated sweep orders its parameters");
    let mut labels = std::collections::BTreeMap::new();
    let mut values = std::collections::BTreeMap::new();
    for p in order {
        if !aidos_api::sweep::is_active(p, &labels) {
            continue;
        }
        let v = seeds::first_value(p);
        labels.insert(p.name.clone(), aidos_api::sweep::choice_label(&v));
        values.insert(p.name.clone(), v);
    }
    let _ = aidos_api::sweep::trial_spec(&spec, "sweep-1", 0, &values);
}

/// `data` split in two ([`split2`]) and written to the two scratch files, for the readers of a file pair.
fn two_files(data: &[u8]) -> (&'static PathBuf, &'static PathBuf) {
    let (first, second) = split2(data);
    let (_, a, b) = scratch();
    write(a, first);
    write(b, second);
    (a, b)
}

fn idx(data: &[u8]) {
    let _ = aidos_datasets::parse_idx(data, 0);
    let (images, labels) = two_files(data);
    let _ = aidos_datasets::read_idx(images, labels);
}

fn csv(data: &[u8]) {
    let (_, a, _) = scratch();
    write(a, data);
    let _ = aidos_datasets::read_csv(a, None);
}

fn npy(data: &[u8]) {
    let (features, labels) = two_files(data);
    let _ = aidos_datasets::read_npy(features, labels);
}

fn onnx(data: &[u8]) {
    use aidos_runtime::Tensor;
    let Ok(model) = aidos_runtime::load_onnx(aidos_runtime::RuntimeKind::Tract, "fuzz", data) else { return };
    // A model that loads must also run one row of zeros shaped as it declares, or refuse with an error.
    let inputs: Vec<Tensor> = model
        .metadata()
        .inputs
        .iter()
        .map(|s| {
            let n = s.row_len();
            Tensor {
                shape: std::iter::once(1).chain(s.shape[1..].iter().map(|&d| d.max(1) as usize)).collect(),
                data: vec![0.0; n],
            }
        })
        .collect();
    if inputs.iter().any(|t| t.data.len() > 1 << 20) {
        return;
    }
    if let Ok(mut inst) = model.instance() {
        let _ = inst.run(&inputs);
    }
}

fn blob_upload(data: &[u8]) {
    use aidos_api::v1::BlobUploadChunk;
    use prost::Message;
    // A stream of length-delimited chunks, as gRPC frames them.
    let mut buf = data;
    let mut upload = None;
    // What the upload passed on to the store (it keeps no bytes itself).
    let mut passed = Vec::new();
    while !buf.is_empty() {
        let Ok(chunk) = BlobUploadChunk::decode_length_delimited(&mut buf) else { return };
        match upload.as_mut() {
            None => match aidos_blob::upload::Upload::start(&chunk.id, chunk.size, 1 << 20) {
                Ok(mut u) => {
                    u.push(&chunk.data);
                    upload = Some(u);
                }
                Err(_) => return,
            },
            Some(u) if u.wants_more() => u.push(&chunk.data),
            Some(_) => break,
        }
        passed.extend_from_slice(&chunk.data);
    }
    if let Some(Ok(id)) = upload.map(aidos_blob::upload::Upload::finish) {
        assert_eq!(aidos_blob::BlobId::of(&passed), id, "a finished upload's bytes hash to its id");
    }
}

fn task_log(data: &[u8]) {
    let (chunks, used) = aidos_api::logframe::decode_chunks(data);
    assert!(used <= data.len(), "decode_chunks consumed more than it was given");
    // What decodes re-encodes to as many bytes as it came from, data unchanged (an unknown stream byte reads
    // as stdout, so the bytes themselves may differ there).
    let mut again = Vec::new();
    for c in &chunks {
        aidos_api::logframe::encode_chunk(&mut again, c);
    }
    assert_eq!(again.len(), used, "decode then encode changed the frames' length");
}
