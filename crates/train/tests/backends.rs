//! One conformance check run on every backend this build has: the same small CNN, seed and data trained on
//! `cpu` (burn's flex with our own convolution and pooling kernels) and on each GPU backend compiled in
//! (`--features wgpu`: Vulkan, here Mesa's lavapipe; `--features cuda` when a device answers), which run
//! burn's own kernels. Loss curves and final predictions must agree to float tolerance.
//!
//!   cargo test -p aidos-train --test backends                      # cpu only (what CI runs)
//!   cargo test -p aidos-train --features wgpu --test backends      # + wgpu (needs a Vulkan driver)

use aidos_train::*;

/// 3 classes of 1x8x8 images: a bright row, column or diagonal, plus noise.
fn images(n: usize, seed: u64) -> Dataset {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut noise = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32) * 0.6 - 0.3
    };
    let (mut f, mut l) = (Vec::new(), Vec::new());
    for i in 0..n {
        let c = i % 3;
        let at = (i / 3) % 8;
        for y in 0..8 {
            for x in 0..8 {
                let on = match c {
                    0 => y == at,
                    1 => x == at,
                    _ => x == y,
                };
                f.push(if on { 1.0 } else { 0.0 } + noise());
            }
        }
        l.push(c as u32);
    }
    Dataset::new(f, l, vec![64]).unwrap()
}

const EPOCHS: u32 = 8;

fn cnn(backend: BackendKind) -> TrainConfig {
    let model = ModelConfig::Cnn(CnnConfig {
        input: [1, 8, 8],
        conv: vec![
            ConvLayerConfig { channels: 4, kernel: 3, padding: None },
            ConvLayerConfig { channels: 8, kernel: 3, padding: Some(1) },
        ],
        pool: 2,
        dense: vec![16],
        classes: 3,
        dropout: 0.0,
    });
    let mut c = TrainConfig::new(model, OptimizerConfig::adam(1e-2), EPOCHS, 16);
    c.seed = 5;
    c.log_every_steps = 1;
    c.backend = backend;
    c
}

#[derive(Default)]
struct Losses(Vec<f64>);

impl TrainHooks for Losses {
    fn on_metrics(&mut self, _step: u64, _epoch: u32, metrics: &[(&str, f64)]) {
        self.0.extend(metrics.iter().filter(|(k, _)| *k == "train_loss").map(|(_, v)| *v));
    }
}

fn run(backend: BackendKind, data: &Dataset) -> (Vec<f64>, Vec<f32>, &'static str) {
    let mut losses = Losses::default();
    let out = train(&cnn(backend), data, None, &mut losses).unwrap();
    let pred = out.model().unwrap().predict(&data.features, data.len()).unwrap();
    (losses.0, pred, out.backend)
}

/// The GPU backends compiled into this build that can run here.
fn gpu_backends() -> Vec<BackendKind> {
    let mut v = Vec::new();
    if cfg!(feature = "wgpu") {
        v.push(BackendKind::Wgpu);
    }
    if cfg!(feature = "cuda") && device_for(BackendKind::Cuda).is_ok() {
        v.push(BackendKind::Cuda);
    }
    v
}

#[test]
fn every_backend_trains_the_same_cnn() {
    let data = images(96, 1);
    let (cpu_losses, cpu_pred, name) = run(BackendKind::Cpu, &data);
    eprintln!("cpu: losses {cpu_losses:?}");
    assert_eq!(name, "cpu(flex)");
    assert_eq!(cpu_losses.len(), EPOCHS as usize * 6);
    let tail: f64 = cpu_losses[cpu_losses.len() - 6..].iter().sum::<f64>() / 6.0;
    assert!(tail < 0.3 * cpu_losses[0], "cpu loss did not fall: {cpu_losses:?}");
    for backend in gpu_backends() {
        let (losses, pred, name) = run(backend, &data);
        eprintln!("{name}: losses {losses:?}");
        assert_eq!(losses.len(), cpu_losses.len(), "{name}: steps");
        // Summation order differs between backends, and 48 Adam steps amplify it a little: the bounds are loose
        // enough for that and far tighter than any wrong gradient (which changes the curve at once).
        for (i, (a, b)) in losses.iter().zip(&cpu_losses).enumerate() {
            assert!((a - b).abs() <= 1e-2 * (1.0 + b.abs()), "{name}: step {i} loss {a} vs cpu {b}");
        }
        let worst = pred.iter().zip(&cpu_pred).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 5e-2, "{name}: final logits differ from cpu by {worst}");
    }
}

#[test]
fn auto_takes_a_gpu_only_when_one_is_compiled_in() {
    let want = match gpu_backends().first() {
        Some(BackendKind::Cuda) => "cuda",
        Some(_) => "wgpu",
        None => "cpu(flex)",
    };
    assert_eq!(resolved_name(BackendKind::Auto), want);
}
