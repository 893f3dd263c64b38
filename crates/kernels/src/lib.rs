//! aidos-kernels: our hand-written CPU kernels for burn's `flex` backend ([`cpu`]: convolution and fused
//! ReLU + max-pool, with their backward steps plugged into burn's autodiff), on [burn](https://burn.dev) 0.22.
//!
//! Only the numeric kernels live here; the model zoo, the training loop, checkpoints, evaluation and ONNX export that
//! call them are `aidos-train`. Backend (device) selection is there too: it maps a job's `backend` setting onto burn
//! devices and knows nothing of the kernels, which pick their own path per operand ([`cpu::path`]).

pub mod cpu;

/// Re-export of the exact burn version this crate is built on.
pub use burn;
