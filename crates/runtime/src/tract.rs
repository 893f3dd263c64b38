//! ONNX through tract (pure Rust): the default runtime of servers and edge agents.
//!
//! The graph is optimised twice at load: once with its symbolic batch dimension kept symbolic (one plan for every
//! batch size) and once with the batch fixed at 1, the case edge agents and low-load servers live in. With every
//! dimension known, tract can fold shapes and pick matrix-vector kernels at load time (measured at batch 1: the
//! MNIST MLP 14.7 -> 10.5 us, the CNN 273 -> 252 us). Each [`Instance`] owns a state of each plan (their
//! scratch buffers are reused between batches) and runs the batch-1 plan whenever a batch has one row.
//!
//! Before tract optimises a graph, small-input convolutions and non-overlapping max-pools are swapped for our own
//! operators ([`crate::tract_ops`]): on the MNIST CNN at batch 1 that took 253 -> 132 us.

use std::sync::Arc;

use tract_onnx::prelude::{
    Framework, IntoTValue, TDim, TValue, TVec, Tensor as TractTensor, TypedFact, TypedModel, TypedOp, tvec,
};
use tract_onnx::prelude::{InferenceFact, InferenceModelExt, IntoRunnable};
use tract_onnx::tract_core::plan::{SimplePlan, SimpleState};

use crate::tract_ops::Isa;
use crate::{DataType, Instance, ModelMetadata, ModelRuntime, Result, RuntimeError, Tensor, TensorSpec, check_inputs};

type Plan = SimplePlan<TypedFact, Box<dyn TypedOp>>;

/// A model loaded by tract.
pub struct TractModel {
    plan: Arc<Plan>,
    /// The same graph with batch dimension 1; `None` when the model has no symbolic leading dimension.
    plan1: Option<Arc<Plan>>,
    meta: ModelMetadata,
    own_ops: usize,
}

impl TractModel {
    /// Parses, type-checks and optimises an ONNX model, with our operators where they are faster
    /// ([`crate::tract_ops`]).
    pub fn load(what: &str, bytes: &[u8]) -> Result<TractModel> {
        Self::load_with(what, bytes, Some(Isa::detect()))
    }

    /// [`TractModel::load`] with tract's own operators only (for comparisons: tests and benchmarks).
    pub fn load_plain(what: &str, bytes: &[u8]) -> Result<TractModel> {
        Self::load_with(what, bytes, None)
    }

    /// [`TractModel::load`] with the kernels of `isa`, as on a CPU that runs no better (tests, benchmarks). It must
    /// not name more than this CPU runs ([`Isa::detect`]).
    pub fn load_isa(what: &str, bytes: &[u8], isa: Isa) -> Result<TractModel> {
        if isa > Isa::detect() {
            return Err(RuntimeError::Load {
                what: what.into(),
                reason: format!("this CPU does not run {isa:?} kernels"),
            });
        }
        Self::load_with(what, bytes, Some(isa))
    }

    /// Nodes of the symbolic-batch plan that run our operators instead of tract's.
    pub fn own_ops(&self) -> usize {
        self.own_ops
    }

    fn load_with(what: &str, bytes: &[u8], own_ops: Option<Isa>) -> Result<TractModel> {
        // tract's graph building and optimisation panic on some malformed graphs (found by fuzzing, see
        // `crates/fuzz`): such a model is refused like any other bad model, it does not take the server down.
        // (Builds with `panic = "abort"`, the edge profile, rely on `parse`'s checks alone.)
        std::panic::catch_unwind(|| Self::load_unguarded(what, bytes, own_ops)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(RuntimeError::Load {
                what: what.into(),
                reason: format!("malformed model (the ONNX parser failed: {msg})"),
            })
        })
    }

    fn load_unguarded(what: &str, bytes: &[u8], own_ops: Option<Isa>) -> Result<TractModel> {
        let err =
            |e: tract_onnx::prelude::TractError| RuntimeError::Load { what: what.into(), reason: format!("{e:#}") };
        let model = parse(what, bytes)?;
        let (typed, n_own) = optimize(model.clone(), own_ops).map_err(err)?;
        let meta = ModelMetadata {
            platform: "onnx_tract".into(),
            inputs: specs(&typed, typed.input_outlets().map_err(err)?, true).map_err(err)?,
            outputs: specs(&typed, typed.output_outlets().map_err(err)?, false).map_err(err)?,
        };
        let plan1 = batch_one(model, &meta.inputs, own_ops).map_err(err)?;
        let plan = typed.into_runnable().map_err(err)?;
        Ok(TractModel { plan, plan1, meta, own_ops: n_own })
    }
}

/// The plan with every input's unknown leading dimension (-1 in `inputs`) fixed at 1, if any input has one and
/// every other dimension is known.
fn batch_one(
    mut model: tract_onnx::prelude::InferenceModel,
    inputs: &[TensorSpec],
    own_ops: Option<Isa>,
) -> tract_onnx::prelude::TractResult<Option<Arc<Plan>>> {
    if !inputs.iter().any(|t| t.shape.first() == Some(&-1)) {
        return Ok(None);
    }
    for (ix, t) in inputs.iter().enumerate() {
        let mut dims = Vec::with_capacity(t.shape.len());
        for (i, &d) in t.shape.iter().enumerate() {
            match d {
                -1 if i == 0 => dims.push(1),
                d if d >= 0 => dims.push(d as usize),
                _ => return Ok(None),
            }
        }
        model.set_input_fact(ix, InferenceFact::dt_shape(f32::datum_type(), dims))?;
    }
    Ok(Some(optimize(model, own_ops)?.0.into_runnable()?))
}

/// tract's declutter, our operators where they are faster ([`crate::tract_ops`]) with the kernels `own_ops` allows
/// (none: tract's only), then tract's optimiser. Also returns how many nodes run our operators.
fn optimize(
    model: tract_onnx::prelude::InferenceModel,
    own_ops: Option<Isa>,
) -> tract_onnx::prelude::TractResult<(TypedModel, usize)> {
    let mut typed = model.into_typed()?.into_decluttered()?;
    let n = match own_ops {
        Some(isa) => crate::tract_ops::substitute(&mut typed, isa)?,
        None => 0,
    };
    Ok((typed.into_optimized()?, n))
}

fn specs(
    m: &TypedModel,
    outlets: &[tract_onnx::prelude::OutletId],
    inputs: bool,
) -> tract_onnx::prelude::TractResult<Vec<TensorSpec>> {
    outlets
        .iter()
        .map(|o| {
            let fact = m.outlet_fact(*o)?;
            let name = if inputs {
                m.node(o.node).name.clone()
            } else {
                m.outlet_label(*o).map(str::to_string).unwrap_or_else(|| m.node(o.node).name.clone())
            };
            if fact.datum_type != f32::datum_type() {
                return Err(tract_onnx::prelude::TractError::msg(format!(
                    "tensor `{name}` is {:?}; aidos serves FP32 tensors only",
                    fact.datum_type
                )));
            }
            let shape = fact.shape.iter().map(|d: &TDim| d.to_i64().unwrap_or(-1)).collect();
            Ok(TensorSpec { name, datatype: DataType::Fp32, shape })
        })
        .collect()
}

use tract_onnx::prelude::Datum;

impl ModelRuntime for TractModel {
    fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    fn instance(&self) -> Result<Box<dyn Instance>> {
        let e = |e: tract_onnx::prelude::TractError| RuntimeError::Run(format!("{e:#}"));
        let state = self.plan.spawn().map_err(e)?;
        let state1 = self.plan1.as_ref().map(|p| p.spawn()).transpose().map_err(e)?;
        Ok(Box::new(TractInstance { state, state1, meta: self.meta.clone() }))
    }
}

struct TractInstance {
    state: SimpleState<TypedFact, Box<dyn TypedOp>>,
    state1: Option<SimpleState<TypedFact, Box<dyn TypedOp>>>,
    meta: ModelMetadata,
}

impl Instance for TractInstance {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        check_inputs(&self.meta, inputs)?;
        let run = |e: tract_onnx::prelude::TractError| RuntimeError::Run(format!("{e:#}"));
        let tv: TVec<TValue> = inputs
            .iter()
            .map(|t| TractTensor::from_shape(&t.shape, &t.data).map(|t| t.into_tvalue()))
            .collect::<tract_onnx::prelude::TractResult<_>>()
            .map_err(run)?;
        let one = inputs.iter().all(|t| t.shape.first() == Some(&1));
        let out = match (&mut self.state1, one) {
            (Some(s1), true) => s1.run(tv),
            _ => self.state.run(tv),
        }
        .map_err(run)?;
        out.iter()
            .map(|v| {
                let view = v.to_plain_array_view::<f32>().map_err(run)?;
                Ok(Tensor { shape: view.shape().to_vec(), data: view.iter().copied().collect() })
            })
            .collect()
    }
}

#[allow(unused)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<TractInstance>();
    let _ = tvec![0u8];
}

/// Decodes the `ModelProto` and checks what tract's graph builder assumes without checking (every graph output
/// names a value something produces), then builds tract's inference model from it.
fn parse(what: &str, bytes: &[u8]) -> Result<tract_onnx::prelude::InferenceModel> {
    let load = |reason: String| RuntimeError::Load { what: what.into(), reason };
    let onnx = tract_onnx::onnx();
    let proto = onnx.proto_model_for_read(&mut &*bytes).map_err(|e| load(format!("not an ONNX model: {e:#}")))?;
    let graph = proto.graph.as_ref().ok_or_else(|| load("the model has no graph".into()))?;
    let produced: std::collections::HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .chain(graph.initializer.iter().map(|t| t.name.as_str()))
        .chain(graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)))
        .collect();
    if let Some(o) = graph.output.iter().find(|o| !produced.contains(o.name.as_str())) {
        return Err(load(format!("graph output `{}` is produced by no node, input or initializer", o.name)));
    }
    onnx.model_for_proto_model(&proto).map_err(|e| load(format!("{e:#}")))
}
