//! Accuracy of the reference models on the real 10k MNIST subset (first 8,000 train, last
//! 2,000 test). Needs `data/mnist10k/` at the repo root; skipped (with a message) when absent
//! unless `AIDOS_REQUIRE_DATA=1`.
//!
//! Targets: MLP 784-256-128-10 ≥ 95% in 10 epochs (Adam 1e-3, batch 64);
//!          CNN conv3x3(32)-pool-conv3x3(64)-pool-128-10 ≥ 97.5% in 8 epochs.

use std::path::PathBuf;
use std::time::Instant;

use aidos_train::*;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn mnist() -> Option<(Dataset, Dataset)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist10k");
    let images = dir.join("images-idx3-ubyte.gz");
    if !images.exists() {
        assert!(
            std::env::var("AIDOS_REQUIRE_DATA").is_err(),
            "AIDOS_REQUIRE_DATA set but {} is missing",
            images.display()
        );
        eprintln!("skipping: {} not found", images.display());
        return None;
    }
    let ds = Dataset::from_idx_files(images, dir.join("labels-idx1-ubyte.gz"), norm()).unwrap();
    assert_eq!(ds.len(), 10_000);
    Some(ds.split_at(8_000).unwrap())
}

fn norm() -> Normalization {
    match std::env::var("NORM").as_deref() {
        Ok("255") => Normalization::Scale255,
        _ => Normalization::Standardize { mean: 0.1307, std: 0.3081 },
    }
}

struct Log;
impl TrainHooks for Log {
    fn on_metrics(&mut self, step: u64, epoch: u32, metrics: &[(&str, f64)]) {
        if metrics.iter().any(|(k, _)| *k == "val_accuracy") {
            eprintln!("epoch {epoch} step {step}: {metrics:?}");
        }
    }
}

fn run(model: ModelConfig, epochs: u32, target: f64) {
    let Some((train_ds, test_ds)) = mnist() else { return };
    let mut cfg = TrainConfig::new(model, OptimizerConfig::adam(1e-3), epochs, 64);
    cfg.seed = std::env::var("SEED").map(|s| s.parse().unwrap()).unwrap_or(1);
    cfg.log_every_steps = 0;
    let t = Instant::now();
    let out = train(&cfg, &train_ds, Some(&test_ds), &mut Log).unwrap();
    let acc = out.final_val().unwrap().accuracy;
    eprintln!(
        "{}: test accuracy {:.4} after {epochs} epochs in {:.1}s",
        cfg.model.name(),
        acc,
        t.elapsed().as_secs_f64()
    );
    let rep = evaluate(&out.model().unwrap(), &test_ds).unwrap();
    assert!((rep.accuracy - acc).abs() < 1e-9);
    assert!(acc >= target, "{} accuracy {acc} < {target}", cfg.model.name());
}

#[test]
fn mlp_reaches_95_percent() {
    run(ModelConfig::reference_mlp(), 10, 0.95);
}

#[test]
fn cnn_reaches_97_5_percent() {
    run(ModelConfig::reference_cnn(), 8, 0.975);
}
