//! ONNX export checked by the reference tools: the MLP and the CNN are trained briefly on the real MNIST subset,
//! exported (float32 and int8), and `tests/python/check_onnx.py` runs `onnx.checker.check_model(full_check=True)`
//! and Python onnxruntime on 1,000 test images: logits within 1e-4 of burn's, the same class on every image, a
//! dynamic batch dimension, and at most 1 point of accuracy lost by the int8 variant.
//!
//! Needs the test Python environment (`scripts/test.sh` creates `.venv` with onnx + onnxruntime); the Python is
//! `AIDOS_PYTHON`, else `<repo>/.venv/bin/python`. Missing Python fails the test (it never passes vacuously).

use std::path::{Path, PathBuf};
use std::process::Command;

use aidos_train::builtin::Standardization;
use aidos_train::onnx::{ExportOptions, Quantize, export};
use aidos_train::*;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("AIDOS_PYTHON") {
        return PathBuf::from(p);
    }
    let p = repo().join(".venv/bin/python");
    assert!(p.exists(), "no Python test environment: run scripts/test.sh (it creates .venv) or set AIDOS_PYTHON");
    p
}

fn write_f32(path: &Path, v: &[f32]) {
    std::fs::write(path, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

#[test]
fn exported_models_match_burn_in_onnxruntime() {
    let dir = repo().join("data/mnist10k");
    let raw = Dataset::from_idx_files(
        dir.join("images-idx3-ubyte.gz"),
        dir.join("labels-idx1-ubyte.gz"),
        Normalization::None,
    )
    .unwrap();
    let (train_raw, rest) = raw.split_at(8_000).unwrap();
    let (test_raw, _) = rest.split_at(1_000).unwrap();
    // The registry's preprocessing: one scalar mean/std over the raw training values.
    let pre = Standardization::fit(&train_raw.features);
    let standardize = |ds: &Dataset| {
        let mut f = ds.features.clone();
        pre.apply(&mut f);
        Dataset::new(f, ds.labels.clone(), ds.shape.clone()).unwrap()
    };
    let (train_ds, test_ds) = (standardize(&train_raw), standardize(&test_raw));

    let out = tempfile::tempdir().unwrap();
    write_f32(&out.path().join("test_x.f32"), &test_raw.features);
    std::fs::write(out.path().join("test_y.u8"), test_raw.labels.iter().map(|l| *l as u8).collect::<Vec<u8>>())
        .unwrap();

    for (name, model, epochs) in [("mlp", ModelConfig::reference_mlp(), 2), ("cnn", ModelConfig::reference_cnn(), 1)] {
        let mut cfg = TrainConfig::new(model, OptimizerConfig::adam(1e-3), epochs, 64);
        cfg.log_every_steps = 0;
        let trained = train(&cfg, &train_ds, None, &mut NoHooks).unwrap().model().unwrap();
        let logits = trained.predict(&test_ds.features, test_ds.len()).unwrap();
        write_f32(&out.path().join(format!("{name}_burn.f32")), &logits);
        for (suffix, q) in [("", Quantize::None), ("-int8", Quantize::Int8)] {
            let opts = ExportOptions { preprocess: Some(pre), quantize: q, graph_name: name.into(), metadata: vec![] };
            let bytes = export(&trained, &opts).unwrap();
            std::fs::write(out.path().join(format!("{name}{suffix}.onnx")), bytes).unwrap();
        }
    }

    let script = repo().join("tests/python/check_onnx.py");
    let res = Command::new(python()).arg(&script).arg(out.path()).args(["mlp", "cnn"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&res.stderr));
    assert!(res.status.success(), "check_onnx.py failed: {}", String::from_utf8_lossy(&res.stderr));
    assert_eq!(stdout.lines().filter(|l| l.contains("\"max_abs_diff\"")).count(), 2);
}
