//! aidos-runtime: the model-runtime contract shared by model servers (`aidos-serve`) and edge agents
//! (`aidos-edge`), and its ONNX implementations.
//!
//! * [`ModelRuntime`]: a loaded model: its [`ModelMetadata`] and a factory of [`Instance`]s.
//! * [`Instance`]: one executor that runs a batch at a time on the calling thread (blocking, CPU-bound: call it from
//!   a dedicated thread, never from an async task). A server runs N instances in parallel.
//! * Implementations: [`tract`] (pure Rust, feature `tract`, the default), [`ort`] (ONNX Runtime loaded from a
//!   shared library at run time, feature `ort`), and the burn-native runtime in `aidos-train`.
//!
//! Tensors are `f32` rows: every model in the aidos zoo takes `FP32[N, features]` and returns `FP32[N, classes]`;
//! the metadata says so and servers refuse other datatypes with an error naming the tensor.
//! This crate links neither burn nor the scheduler, so the edge agent stays small.

#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;
#[cfg(feature = "tract")]
pub mod tract_ops;

use std::fmt;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The model file could not be parsed or prepared (`what` names the file or model).
    #[error("cannot load {what}: {reason}")]
    Load { what: String, reason: String },
    /// A batch does not match the model's inputs (names the tensor and the expected shape).
    #[error("{0}")]
    Input(String),
    /// The runtime failed while executing a batch.
    #[error("inference failed: {0}")]
    Run(String),
    /// The runtime is not available on this machine (e.g. no ONNX Runtime library).
    #[error("runtime {runtime} unavailable: {reason}")]
    Unavailable { runtime: &'static str, reason: String },
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Element type of a tensor, named as the Open Inference Protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Fp32,
}

impl DataType {
    /// The protocol's name (`FP32`).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Fp32 => "FP32",
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named tensor of a model's signature. `shape[0]` is the batch dimension (`-1`: any size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Values per row (product of the dimensions after the batch dimension).
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).map(|d| (*d).max(1) as usize).product()
    }
}

/// What a loaded model takes and returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMetadata {
    /// `onnx_tract`, `onnxruntime_onnx`, `burn`.
    pub platform: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// A dense row-major `f32` tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(RuntimeError::Input(format!("shape {shape:?} holds {n} values, got {}", data.len())));
        }
        Ok(Tensor { shape, data })
    }

    /// Rows along the first dimension.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }
}

/// One executor of a loaded model. Not shared between threads; a server owns one per worker thread.
pub trait Instance: Send {
    /// Runs one batch. `inputs` follow [`ModelMetadata::inputs`] (same order), each `[rows, ...]` with the
    /// same `rows`; returns the outputs in [`ModelMetadata::outputs`] order, each `[rows, ...]`.
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>>;
}

/// A loaded model.
pub trait ModelRuntime: Send + Sync {
    fn metadata(&self) -> &ModelMetadata;
    /// A fresh executor. Cheap for tract and burn (shares the weights); one session for ort.
    fn instance(&self) -> Result<Box<dyn Instance>>;
}

/// Which implementation loads a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    Tract,
    Ort,
    Burn,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Tract => "tract",
            RuntimeKind::Ort => "ort",
            RuntimeKind::Burn => "burn",
        }
    }
}

impl std::str::FromStr for RuntimeKind {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tract" => Ok(RuntimeKind::Tract),
            "ort" => Ok(RuntimeKind::Ort),
            "burn" => Ok(RuntimeKind::Burn),
            o => Err(RuntimeError::Input(format!("runtime: unknown `{o}` (expected tract, ort or burn)"))),
        }
    }
}

/// Loads an ONNX model (bytes of a `ModelProto`) with the named ONNX runtime.
#[allow(unused_variables)] // both runtimes can be compiled out
pub fn load_onnx(kind: RuntimeKind, what: &str, bytes: &[u8]) -> Result<Box<dyn ModelRuntime>> {
    match kind {
        #[cfg(feature = "tract")]
        RuntimeKind::Tract => Ok(Box::new(tract::TractModel::load(what, bytes)?)),
        #[cfg(feature = "ort")]
        RuntimeKind::Ort => Ok(Box::new(ort::OrtModel::load(what, bytes)?)),
        other => Err(RuntimeError::Unavailable {
            runtime: other.as_str(),
            reason: match other {
                RuntimeKind::Burn => "burn models load from the registry, not from ONNX".into(),
                _ => "not compiled into this binary (cargo feature)".into(),
            },
        }),
    }
}

/// Checks a batch against a signature: names the first tensor that does not fit.
pub fn check_inputs(meta: &ModelMetadata, inputs: &[Tensor]) -> Result<usize> {
    if inputs.len() != meta.inputs.len() {
        return Err(RuntimeError::Input(format!("expected {} input tensors, got {}", meta.inputs.len(), inputs.len())));
    }
    let rows = inputs.first().map(Tensor::rows).unwrap_or(0);
    for (spec, t) in meta.inputs.iter().zip(inputs) {
        let fits = t.shape.len() == spec.shape.len()
            && t.rows() == rows
            && spec.shape.iter().zip(&t.shape).skip(1).all(|(s, d)| *s < 0 || *s as usize == *d);
        if !fits {
            return Err(RuntimeError::Input(format!(
                "input `{}`: shape {:?} does not fit {:?}",
                spec.name, t.shape, spec.shape
            )));
        }
    }
    Ok(rows)
}
