//! The burn-native model runtime: a registry model served without ONNX, through the same
//! [`aidos_runtime::ModelRuntime`] contract as the ONNX runtimes, with the same signature as an exported graph
//! (`input: FP32[-1, features]` -> `logits: FP32[-1, classes]`, preprocessing included).

use aidos_runtime::{DataType, Instance, ModelMetadata, ModelRuntime, Result, RuntimeError, Tensor, TensorSpec};

use crate::builtin::Standardization;
use crate::eval::TrainedModel;
use crate::onnx::{INPUT_NAME, OUTPUT_NAME};

/// A trained model and its input preprocessing.
pub struct BurnRuntime {
    model: TrainedModel,
    preprocess: Option<Standardization>,
    meta: ModelMetadata,
}

impl BurnRuntime {
    pub fn new(model: TrainedModel, preprocess: Option<Standardization>) -> BurnRuntime {
        let cfg = model.config();
        let spec = |name: &str, w: usize| TensorSpec {
            name: name.into(),
            datatype: DataType::Fp32,
            shape: vec![-1, w as i64],
        };
        let meta = ModelMetadata {
            platform: "burn".into(),
            inputs: vec![spec(INPUT_NAME, cfg.input_size())],
            outputs: vec![spec(OUTPUT_NAME, cfg.num_classes())],
        };
        BurnRuntime { model, preprocess, meta }
    }
}

impl ModelRuntime for BurnRuntime {
    fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    fn instance(&self) -> Result<Box<dyn Instance>> {
        Ok(Box::new(BurnInstance { model: self.model.clone(), preprocess: self.preprocess, meta: self.meta.clone() }))
    }
}

struct BurnInstance {
    model: TrainedModel,
    preprocess: Option<Standardization>,
    meta: ModelMetadata,
}

impl Instance for BurnInstance {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let rows = aidos_runtime::check_inputs(&self.meta, inputs)?;
        let mut x = inputs[0].data.clone();
        if let Some(p) = self.preprocess {
            let (m, inv) = (p.mean as f32, (1.0 / p.std) as f32);
            x.iter_mut().for_each(|v| *v = (*v - m) * inv);
        }
        let out = self.model.predict(&x, rows).map_err(|e| RuntimeError::Run(e.to_string()))?;
        Ok(vec![Tensor { shape: vec![rows, self.model.config().num_classes()], data: out }])
    }
}
