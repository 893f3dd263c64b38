//! Issue #15, equivalence: for K steps, N = 1, 2 and 4 ranks with per-rank batch b train the same parameters as
//! one rank with batch N·b (max relative difference ≤ 1e-4), on the MNIST MLP and CNN. The ranks are threads of
//! this process joined by the real TCP ring of `aidos_sdk::collective` on loopback.

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

/// Largest |a - b| / max(|b|, 1e-2) over the parameters.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| ((x - y).abs() / y.abs().max(1e-2)) as f64).fold(0.0, f64::max)
}

fn check(model: ModelConfig, optimizer: OptimizerConfig) {
    for n in [1usize, 2, 4] {
        let global = n * B;
        let ds = mnist(K * global);
        let cfg = config(model.clone(), optimizer.clone(), global);
        let single = train_ranks(&cfg, &ds, 1).remove(0);
        let ranks = train_ranks(&cfg, &ds, n);
        for (r, p) in ranks.iter().enumerate() {
            assert_eq!(p, &ranks[0], "{}: rank {r} of {n} differs from rank 0", model.name());
            let d = max_rel_diff(p, &single);
            if r == 0 {
                eprintln!(
                    "{} {:?} N={n} b={B}: max relative difference to one rank with batch {global}: {d:.2e}",
                    model.name(),
                    optimizer
                );
            }
            assert!(d <= 1e-4, "{}: N={n}: max relative difference {d:.2e}", model.name());
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

// SGD's update is linear in the gradient, so these compare the all-reduced gradients themselves. Adam divides by
// the gradient's running magnitude, which turns last-bit differences of near-zero gradients (summation order)
// into visible ones: it is checked on the MLP, whose parameters it moves the least.
#[test]
fn mlp_ranks_train_the_same_parameters_as_one_rank_with_the_global_batch() {
    check(ModelConfig::reference_mlp(), sgd());
    check(ModelConfig::reference_mlp(), OptimizerConfig::adam(1e-3));
}

#[test]
fn cnn_ranks_train_the_same_parameters_as_one_rank_with_the_global_batch() {
    check(ModelConfig::reference_cnn(), sgd());
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
