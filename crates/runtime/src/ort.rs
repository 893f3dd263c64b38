//! ONNX through ONNX Runtime (`ort`, feature `ort`), loaded at run time from the shared library named by
//! `ORT_DYLIB_PATH` (`load-dynamic`: nothing is downloaded at build time). The PyPI `onnxruntime` wheel ships one
//! under `onnxruntime/capi/libonnxruntime.so.*`.
//!
//! Each [`Instance`] is its own session with one intra-op thread: a server scales by running N instances, as
//! with the other runtimes. The library is loaded once per process; if it is missing the error says so and
//! names the variable.

use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::{DataType, Instance, ModelMetadata, ModelRuntime, Result, RuntimeError, Tensor, TensorSpec, check_inputs};

static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// The library `ORT_DYLIB_PATH` names, if it is set and names a file (not loaded: see [`probe`]).
pub fn library() -> std::result::Result<String, String> {
    let path = std::env::var("ORT_DYLIB_PATH").map_err(|_| {
        "ORT_DYLIB_PATH is not set (point it at libonnxruntime.so, e.g. the onnxruntime wheel's onnxruntime/capi/)"
            .to_string()
    })?;
    if !std::path::Path::new(&path).is_file() {
        return Err(format!("ORT_DYLIB_PATH={path}: no such file"));
    }
    Ok(path)
}

fn environment() -> Result<&'static Environment> {
    ENV.get_or_init(|| {
        let path = library()?;
        ort::init_from(&path).map_err(|e| format!("{path}: {e}"))?.with_name("aidos").build().map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| RuntimeError::Unavailable { runtime: "ort", reason: e.clone() })
}

/// Whether ONNX Runtime can run here: the library named by `ORT_DYLIB_PATH` is set, exists and loads (once per
/// process; the answer is kept). The error says which of the three failed.
pub fn probe() -> Result<()> {
    environment().map(|_| ())
}

fn session(what: &str, bytes: &[u8]) -> Result<Session> {
    let env = environment()?;
    let load = |e: String| RuntimeError::Load { what: what.into(), reason: e };
    Session::builder(env)
        .map_err(|e| load(e.to_string()))?
        .with_intra_threads(1)
        .map_err(|e| load(e.to_string()))?
        .commit_from_memory(bytes)
        .map_err(|e| load(e.to_string()))
}

/// A model loaded by ONNX Runtime.
pub struct OrtModel {
    what: String,
    bytes: Vec<u8>,
    meta: ModelMetadata,
    /// The session opened to read the metadata, handed to the first instance (a second session would hold a
    /// second copy of the weights for nothing; an edge agent runs one instance).
    first: std::sync::Mutex<Option<Session>>,
}

impl OrtModel {
    pub fn load(what: &str, bytes: &[u8]) -> Result<OrtModel> {
        let s = session(what, bytes)?;
        let spec = |o: &ort::value::Outlet| -> Result<TensorSpec> {
            match o.dtype() {
                ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } => Ok(TensorSpec {
                    name: o.name().to_string(),
                    datatype: DataType::Fp32,
                    shape: shape.iter().copied().collect(),
                }),
                other => Err(RuntimeError::Load {
                    what: what.into(),
                    reason: format!("tensor `{}` is {other:?}; aidos serves FP32 tensors only", o.name()),
                }),
            }
        };
        let meta = ModelMetadata {
            platform: "onnxruntime_onnx".into(),
            inputs: s.inputs().iter().map(spec).collect::<Result<_>>()?,
            outputs: s.outputs().iter().map(spec).collect::<Result<_>>()?,
        };
        Ok(OrtModel { what: what.into(), bytes: bytes.to_vec(), meta, first: std::sync::Mutex::new(Some(s)) })
    }
}

impl ModelRuntime for OrtModel {
    fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    fn instance(&self) -> Result<Box<dyn Instance>> {
        let first = self.first.lock().unwrap_or_else(|p| p.into_inner()).take();
        let session = match first {
            Some(s) => s,
            None => session(&self.what, &self.bytes)?,
        };
        Ok(Box::new(OrtInstance { session, meta: self.meta.clone() }))
    }
}

struct OrtInstance {
    session: Session,
    meta: ModelMetadata,
}

impl Instance for OrtInstance {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        check_inputs(&self.meta, inputs)?;
        let run = |e: ort::Error| RuntimeError::Run(e.to_string());
        let mut feed = Vec::with_capacity(inputs.len());
        for (spec, t) in self.meta.inputs.iter().zip(inputs) {
            let shape: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
            let v = TensorRef::from_array_view((shape, t.data.as_slice())).map_err(run)?;
            feed.push((std::borrow::Cow::Owned(spec.name.clone()), ort::session::SessionInputValue::from(v)));
        }
        let outputs = self.session.run(feed).map_err(run)?;
        self.meta
            .outputs
            .iter()
            .map(|spec| {
                let (shape, data) = outputs[spec.name.as_str()].try_extract_tensor::<f32>().map_err(run)?;
                Ok(Tensor { shape: shape.iter().map(|d| *d as usize).collect(), data: data.to_vec() })
            })
            .collect()
    }
}
