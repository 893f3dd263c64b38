//! Issue #15, equivalence: for K steps, N = 1, 2 and 4 ranks with per-rank batch b train the same parameters as
//! one rank with batch N·b (max relative difference ≤ 1e-4 with SGD; Adam is held to a norm per tensor, see
//! `mlp_ranks_...`), on the MNIST MLP and CNN. The ranks are threads of this process joined by the real TCP ring of
//! `aidos_sdk::collective` on loopback.

use std::path::PathBuf;

use aidos_sdk::collective::loopback_rings;
use aidos_sdk::{Collective, RingOptions};
use aidos_train::*;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Per-rank batch and steps.
const B: usize = 16;
const K: usize = 6;

fn mnist(rows: usize) -> Dataset {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist10k");
    let ds = Dataset::from_idx_files(
        dir.join("images-idx3-ubyte.gz"),
        dir.join("labels-idx1-ubyte.gz"),
        Normalization::Standardize { mean: 0.1307, std: 0.3081 },
    )
    .expect("data/mnist10k (the repository's MNIST subset)");
    ds.subset(0, rows).unwrap()
}

fn config(model: ModelConfig, optimizer: OptimizerConfig, global_batch: usize) -> TrainConfig {
    let mut cfg = TrainConfig::new(model, optimizer, 1, global_batch);
    cfg.seed = 7;
    cfg.log_every_steps = 0;
    cfg.checkpoint_every_steps = 0;
    cfg
}

/// Trains `cfg` on `ds` with `n` ranks (threads on a loopback ring); returns every rank's final parameters.
fn train_ranks(cfg: &TrainConfig, ds: &Dataset, n: usize) -> Vec<Vec<f32>> {
    let comms: Vec<Box<dyn Collective>> = if n == 1 {
        vec![Box::new(aidos_sdk::SingleRank::default())]
    } else {
        loopback_rings("job-eq", &vec![1; n], RingOptions::default())
            .into_iter()
            .map(|r| Box::new(r.unwrap()) as Box<dyn Collective>)
            .collect()
    };
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|mut comm| {
                s.spawn(move || {
                    let out = train_with(cfg, ds, None, &mut NoHooks, comm.as_mut()).unwrap();
                    assert_eq!(out.global_step, K as u64);
                    load_model(&cfg.model, &out.weights).unwrap().parameters()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Stops before the first step: the outcome holds the initial weights.
struct StopAtOnce;
impl TrainHooks for StopAtOnce {
    fn should_stop(&mut self) -> bool {
        true
    }
}

/// Every element's |a - b| / max(|b|, 1e-2).
fn rel_diffs<'a>(a: &'a [f32], b: &'a [f32]) -> impl Iterator<Item = f64> + 'a {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| ((x - y).abs() / y.abs().max(1e-2)) as f64)
}

/// Largest |a - b| / max(|b|, 1e-2) over the parameters.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    rel_diffs(a, b).fold(0.0, f64::max)
}

/// Largest ‖a - b‖ / ‖b‖ over the model's parameter tensors (split by `param_signature`'s shapes).
fn max_tensor_rel_diff(model: &ModelConfig, a: &[f32], b: &[f32]) -> f64 {
    let sig = param_signature(model);
    let (_, shapes) = sig.split_once(':').unwrap();
    let (mut at, mut worst) = (0, 0.0f64);
    for shape in shapes.split(',') {
        let n: usize = shape.split('x').map(|d| d.parse::<usize>().unwrap()).product();
        let (x, y) = (&a[at..at + n], &b[at..at + n]);
        let diff: f64 = x.iter().zip(y).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
        let norm: f64 = y.iter().map(|y| (*y as f64).powi(2)).sum();
        worst = worst.max((diff / norm).sqrt());
        at += n;
    }
    assert_eq!(at, a.len(), "the signature's shapes cover every parameter");
    worst
}

/// How closely N ranks must match one rank with the global batch.
#[derive(Clone, Copy)]
enum Match {
    /// Every parameter within 1e-4 (relative; the bound).
    Elementwise,
    /// Every parameter tensor within 1e-5 in norm, and all but one in 10,000 parameters within 1e-4 (see `adam`).
    Norm,
}

fn check(model: ModelConfig, optimizer: OptimizerConfig, expect: Match) {
    for n in [1usize, 2, 4] {
        let global = n * B;
        let ds = mnist(K * global);
        let cfg = config(model.clone(), optimizer.clone(), global);
        let single = train_ranks(&cfg, &ds, 1).remove(0);
        let ranks = train_ranks(&cfg, &ds, n);
        for (r, p) in ranks.iter().enumerate() {
            assert_eq!(p, &ranks[0], "{}: rank {r} of {n} differs from rank 0", model.name());
            let d = max_rel_diff(p, &single);
            let t = max_tensor_rel_diff(&model, p, &single);
            let over = rel_diffs(p, &single).filter(|&d| d > 1e-4).count();
            if r == 0 {
                eprintln!(
                    "{} {:?} N={n} b={B}: against one rank with batch {global}: max relative difference {d:.2e}, \
                     per tensor {t:.2e}, {over} of {} parameters beyond 1e-4",
                    model.name(),
                    optimizer,
                    p.len()
                );
            }
            match expect {
                Match::Elementwise => {
                    assert!(d <= 1e-4, "{}: N={n}: max relative difference {d:.2e}", model.name())
                }
                Match::Norm => {
                    assert!(t <= 1e-5, "{}: N={n}: a parameter tensor differs by {t:.2e} in norm", model.name());
                    assert!(
                        over * 10_000 <= p.len(),
                        "{}: N={n}: {over} of {} parameters differ by more than 1e-4",
                        model.name(),
                        p.len()
                    );
                }
            }
        }
        // The steps did move the parameters (the comparison is not of two untrained models).
        let init =
            load_model(&cfg.model, &train(&cfg, &ds, None, &mut StopAtOnce).unwrap().weights).unwrap().parameters();
        assert!(max_rel_diff(&single, &init) > 1e-3);
    }
}

fn sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd { lr: 0.05, momentum: 0.9, weight_decay: 1e-4, nesterov: false }
}

// SGD's update is linear in the gradient, so these compare the all-reduced gradients themselves, parameter by
// parameter. Adam divides each gradient by its own running magnitude, so its update depends on the gradient's
// *relative* precision: where a gradient nearly cancels over the batch (a sum of large terms of both signs), the
// order of the sum (two half-batch sums added by the ring vs one full-batch sum) changes its last bits by as much
// as the gradient itself is worth, and Adam turns that into a visible step. Measured on a machine without
// AVX-512 (N=2): every tensor is within 2.1e-7 in norm, three of 235,146 parameters differ by more than 1e-5, the
// worst by 1.8e-4 (a first-layer weight of a pixel few images light). No f32 implementation can hold every Adam
// parameter to 1e-4 against a differently ordered sum, so Adam is held to the norm of each tensor (1e-5) and to
// all but one in 10,000 parameters. Errors of the kind this test is for move whole tensors: measured the same way,
// a learning rate 1% off differs by 1.5e-2 per tensor, a global batch missing half its samples by 1.5e-1.
#[test]
fn mlp_ranks_train_the_same_parameters_as_one_rank_with_the_global_batch() {
    check(ModelConfig::reference_mlp(), sgd(), Match::Elementwise);
    check(ModelConfig::reference_mlp(), OptimizerConfig::adam(1e-3), Match::Norm);
}

#[test]
fn cnn_ranks_train_the_same_parameters_as_one_rank_with_the_global_batch() {
    check(ModelConfig::reference_cnn(), sgd(), Match::Elementwise);
}

#[test]
fn shards_are_disjoint_and_cover_the_batch() {
    for len in [0usize, 1, 5, 64, 65] {
        for world in 1..=5 {
            let mut next = 0;
            for r in 0..world {
                let (lo, hi) = shard(len, world, r);
                assert_eq!(lo, next);
                assert!(hi - lo <= len.div_ceil(world));
                next = hi;
            }
            assert_eq!(next, len);
        }
    }
}

#[test]
fn signatures_name_every_parameter_shape() {
    assert_eq!(param_signature(&ModelConfig::reference_mlp()), "mlp:784x256,256,256x128,128,128x10,10");
    assert_ne!(param_signature(&ModelConfig::reference_cnn()), param_signature(&ModelConfig::reference_mlp()));
}
