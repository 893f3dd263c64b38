//! aidos-train: training on [burn](https://burn.dev) 0.22 — the model zoo ([`model`], configured by [`config`]), IDX
//! data ([`data`]), the training loop ([`train`]), checkpoints, evaluation, ONNX export ([`onnx`]), the burn-native
//! model runtime ([`runtime`]), backend (device) selection, and the two tasks a worker starts with the `aidos`
//! binary: the built-in trainer of `train` jobs ([`builtin`], `aidos train-run`) and the export of `export` jobs
//! ([`export_job`], `aidos export-run`). The CPU kernels the models call are `aidos-kernels`.
//!
//! The training loop has no cluster or network code: callers (CLI, worker) hand in a [`TrainConfig`] and
//! [`Dataset`]s and receive metrics/checkpoints through [`TrainHooks`]. Only the two tasks reach the cluster:
//! [`builtin`] through `aidos_sdk`, [`export_job`] through the scheduler client of `aidos_api`.
//!
//! Backends: `cpu` (burn `flex`, always), `wgpu` / `cuda` behind the cargo features of the same
//! name. On `cpu` the convolutions and poolings run our own kernels (`aidos_kernels::cpu`), plugged into
//! burn's autodiff. Binaries should install a pooled allocator (`#[global_allocator] static A:
//! mimalloc::MiMalloc = mimalloc::MiMalloc;`): it roughly doubles CPU training throughput.

mod backend;
pub mod builtin;
pub mod checkpoint;
pub mod config;
pub mod data;
mod error;
pub mod eval;
pub mod export_job;
pub mod model;
pub mod onnx;
mod rng;
pub mod runtime;
pub mod train;

pub use backend::{device_for, resolved_name};
pub use checkpoint::{Checkpoint, CheckpointMeta};
pub use config::{
    Activation, BackendKind, CnnConfig, ConvLayerConfig, MlpConfig, ModelConfig, OptimizerConfig, ScheduleConfig,
    TrainConfig,
};
pub use data::{Dataset, IdxArray, Normalization, epoch_order};
pub use error::{Result, TrainError};
pub use eval::{ClassStats, EvalReport, TrainedModel, evaluate, load_model, load_model_on};
pub use model::Model;
pub use train::{EpochSummary, NoHooks, TrainHooks, TrainOutcome, param_signature, shard, train, train_with};

/// Re-export of the exact burn version this crate is built on.
pub use burn;
