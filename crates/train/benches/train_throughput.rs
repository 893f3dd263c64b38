//! Training throughput (samples/s) of the reference MLP and CNN on the CPU (flex) backend.
//!
//! `cargo bench -p aidos-train --bench train_throughput` (release). Uses 2 rayon threads
//! unless RAYON_NUM_THREADS is set, batch 64, Adam 1e-3, `WARMUP` steps then `STEPS` measured
//! steps through the real `train()` loop (batch gather + forward + backward + optimizer step).
//! Input: the MNIST 10k subset if present, else random pixels (throughput does not depend on
//! the values). Output format matches benches/pytorch_reference.py.

use std::time::Instant;

use aidos_train::*;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 64;
const WARMUP: u64 = 50;

struct Meter {
    stop_at: u64,
    step: u64,
    start: Option<Instant>,
}

impl TrainHooks for Meter {
    fn on_metrics(&mut self, step: u64, _epoch: u32, _m: &[(&str, f64)]) {
        self.step = step;
        if step == WARMUP {
            self.start = Some(Instant::now());
        }
    }
    fn should_stop(&mut self) -> bool {
        self.step >= self.stop_at
    }
}

fn data() -> Dataset {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist10k");
    if let Ok(ds) = Dataset::from_idx_files(
        dir.join("images-idx3-ubyte.gz"),
        dir.join("labels-idx1-ubyte.gz"),
        Normalization::Scale255,
    ) {
        return ds;
    }
    let mut s = 1u64;
    let n = 10_000;
    let f = (0..n * 784)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    Dataset::new(f, (0..n as u32).map(|i| i % 10).collect(), vec![1, 28, 28]).unwrap()
}

fn bench(name: &str, model: ModelConfig, steps: u64, ds: &Dataset) -> f64 {
    let mut cfg = TrainConfig::new(model, OptimizerConfig::adam(1e-3), 1000, BATCH);
    cfg.log_every_steps = 1;
    let mut m = Meter { stop_at: WARMUP + steps, step: 0, start: None };
    let out = train(&cfg, ds, None, &mut m).expect("training failed");
    let secs = m.start.unwrap().elapsed().as_secs_f64();
    assert_eq!(out.global_step, WARMUP + steps, "{name}");
    (steps as usize * BATCH) as f64 / secs
}

/// Floating-point operations of one training sample (forward + backward ~ 3x the forward multiply-adds, x2 for
/// multiply and add), counting only matmuls/convolutions: what the machine's matmul limit bounds.
fn flops_per_sample(name: &str) -> f64 {
    let macs = match name {
        "mlp" => 784.0 * 256.0 + 256.0 * 128.0 + 128.0 * 10.0,
        // conv3x3(1->32) at 28x28, conv3x3(32->64) at 14x14, dense 3136->128->10
        _ => 28.0 * 28.0 * 32.0 * 9.0 + 14.0 * 14.0 * 64.0 * 32.0 * 9.0 + 3136.0 * 128.0 + 128.0 * 10.0,
    };
    macs * 2.0 * 3.0
}

/// The machine's sustained f32 matmul rate through the same backend (burn flex / gemm): a 1024^3 matmul.
fn gemm_gflops() -> f64 {
    use burn::tensor::{Distribution, Tensor};
    let dev = device_for(BackendKind::Cpu).expect("cpu device");
    let n = 1024;
    let a = Tensor::<2>::random([n, n], Distribution::Default, &dev);
    let b = Tensor::<2>::random([n, n], Distribution::Default, &dev);
    let _ = a.clone().matmul(b.clone()).into_data();
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        let _ = a.clone().matmul(b.clone()).into_data();
    }
    2.0 * (n * n * n) as f64 * reps as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: single-threaded at this point; rayon's pool is not started yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "2") };
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap();
    let ds = data();
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let runs = [("mlp", ModelConfig::reference_mlp(), 500), ("cnn", ModelConfig::reference_cnn(), 150)];
    let peak = gemm_gflops();
    println!("matmul limit (1024^3 f32 matmul, {threads} threads): {peak:.1} GFLOP/s");
    println!(
        "{:<6} {:>6} {:>8} {:>7} {:>12} {:>10} {:>9}",
        "model", "batch", "threads", "steps", "samples/s", "GFLOP/s", "of limit"
    );
    for (name, model, steps) in runs {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let sps = bench(name, model, steps, &ds);
        let gf = sps * flops_per_sample(name) / 1e9;
        println!("{name:<6} {BATCH:>6} {threads:>8} {steps:>7} {sps:>12.0} {gf:>10.1} {:>8.0}%", 100.0 * gf / peak);
    }
}
