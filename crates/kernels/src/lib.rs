//! aidos-kernels: the compute core of aidos — models, data, the training loop, checkpoints,
//! evaluation and inference, on [burn](https://burn.dev) 0.22.
//!
//! No cluster or network code lives here: callers (CLI, worker) hand in a [`TrainConfig`] and
//! [`Dataset`]s and receive metrics/checkpoints through [`TrainHooks`]. The built-in trainer of
//! `train` jobs ([`builtin`]) reaches the cluster only through `aidos_sdk`.
//!
//! Backends: `cpu` (burn `flex`, always), `wgpu` / `cuda` behind the cargo features of the same
//! name. On `cpu` the convolutions and poolings run our own kernels ([`cpu`]), plugged into
//! burn's autodiff. Binaries should install a pooled allocator (`#[global_allocator] static A:
//! mimalloc::MiMalloc = mimalloc::MiMalloc;`): it roughly doubles CPU training throughput.

mod backend;
pub mod builtin;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod data;
mod error;
pub mod eval;
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
pub use error::{KernelError, Result};
pub use eval::{ClassStats, EvalReport, TrainedModel, evaluate, load_model, load_model_on};
pub use model::Model;
pub use train::{EpochSummary, NoHooks, TrainHooks, TrainOutcome, train};

/// Re-export of the exact burn version this crate is built on.
pub use burn;
