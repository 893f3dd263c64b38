//! ONNX through tract (pure Rust): the default runtime of servers and edge agents.
//!
//! The graph is optimised once at load with its symbolic batch dimension kept symbolic, so one plan serves
//! every batch size; each [`Instance`] owns a tract state (its scratch buffers are reused between batches).

use std::sync::Arc;

use tract_onnx::prelude::{
    Framework, IntoTValue, TDim, TValue, TVec, Tensor as TractTensor, TypedFact, TypedModel, TypedOp, tvec,
};
use tract_onnx::tract_core::plan::{SimplePlan, SimpleState};
use tract_onnx::prelude::{InferenceModelExt, IntoRunnable};

use crate::{DataType, Instance, ModelMetadata, ModelRuntime, Result, RuntimeError, Tensor, TensorSpec, check_inputs};

type Plan = SimplePlan<TypedFact, Box<dyn TypedOp>>;

/// A model loaded by tract.
pub struct TractModel {
    plan: Arc<Plan>,
    meta: ModelMetadata,
}

impl TractModel {
    /// Parses, type-checks and optimises an ONNX model.
    pub fn load(what: &str, bytes: &[u8]) -> Result<TractModel> {
        let err = |e: tract_onnx::prelude::TractError| RuntimeError::Load { what: what.into(), reason: format!("{e:#}") };
        let model = tract_onnx::onnx().model_for_read(&mut &*bytes).map_err(err)?;
        let typed: TypedModel = model.into_optimized().map_err(err)?;
        let meta = ModelMetadata {
            platform: "onnx_tract".into(),
            inputs: specs(&typed, typed.input_outlets().map_err(err)?, true).map_err(err)?,
            outputs: specs(&typed, typed.output_outlets().map_err(err)?, false).map_err(err)?,
        };
        let plan = typed.into_runnable().map_err(err)?;
        Ok(TractModel { plan, meta })
    }
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
                return Err(tract_onnx::prelude::TractError::msg(format!("tensor `{name}` is {:?}; aidos serves FP32 tensors only", fact.datum_type)));
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
        let state = self.plan.spawn().map_err(|e| RuntimeError::Run(format!("{e:#}")))?;
        Ok(Box::new(TractInstance { state, meta: self.meta.clone() }))
    }
}

struct TractInstance {
    state: SimpleState<TypedFact, Box<dyn TypedOp>>,
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
        let out = self.state.run(tv).map_err(run)?;
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
