//! Evaluation, inference and model (weights) save/load.
//!
//! Invariants:
//! * Weights blobs are burn `ModuleRecord` burnpack bytes; they only load into a model built
//!   from the same `ModelConfig` (shape mismatches / missing tensors are errors, not panics).
//! * Evaluation runs without autodiff, in batches, and computes loss/argmax on the host in f64,
//!   so results do not depend on the evaluation batch size beyond float summation order.

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device, Tensor, TensorData};

use crate::backend::device_for;
use crate::config::{BackendKind, ModelConfig};
use crate::data::Dataset;
use crate::error::{Result, TrainError};
use crate::model::Model;

const EVAL_BATCH: usize = 1000;

/// Per-class statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassStats {
    pub precision: f64,
    pub recall: f64,
    pub support: u64,
}

/// Result of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    pub per_class: Vec<ClassStats>,
    /// `confusion[true_class][predicted_class]`.
    pub confusion: Vec<Vec<u64>>,
}

/// A model ready for inference.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    pub(crate) model: Model,
    pub(crate) device: Device,
    pub(crate) config: ModelConfig,
}

/// Load weights produced by [`crate::TrainOutcome::weights`] (or a checkpoint's
/// `model_weights`) on the CPU backend.
pub fn load_model(cfg: &ModelConfig, bytes: &[u8]) -> Result<TrainedModel> {
    load_model_on(cfg, bytes, BackendKind::Cpu)
}

/// [`load_model`] on a chosen backend.
pub fn load_model_on(cfg: &ModelConfig, bytes: &[u8], backend: BackendKind) -> Result<TrainedModel> {
    cfg.validate()?;
    let device = device_for(backend)?;
    let model = Model::init(cfg, 0, &device);
    let model = load_weights(model, bytes)?;
    Ok(TrainedModel { model, device, config: cfg.clone() })
}

pub(crate) fn model_to_bytes(model: &Model) -> Result<Vec<u8>> {
    let bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| TrainError::Checkpoint(format!("cannot serialise model: {e}")))?;
    Ok(bytes.to_vec())
}

pub(crate) fn load_weights(model: Model, bytes: &[u8]) -> Result<Model> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(|e| TrainError::Checkpoint(format!("corrupt model weights: {e}")))?;
    model
        .try_load_record(record)
        .map_err(|e| TrainError::Checkpoint(format!("weights do not fit the model config: {e}")))
}

impl TrainedModel {
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Every parameter's values, flattened in module order (for comparing two models).
    pub fn parameters(&self) -> Vec<f32> {
        struct Values(Vec<f32>);
        impl burn::module::ModuleVisitor for Values {
            fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
                self.0.extend(p.val().into_data().iter::<f32>());
            }
        }
        let mut v = Values(Vec::new());
        self.model.visit(&mut v);
        v.0
    }

    /// Serialised weights (burnpack), loadable with [`load_model`].
    pub fn weights(&self) -> Result<Vec<u8>> {
        model_to_bytes(&self.model)
    }

    /// Logits for `rows` samples: `features.len() == rows * input_size`; returns
    /// `rows * num_classes` values, row-major.
    pub fn predict(&self, features: &[f32], rows: usize) -> Result<Vec<f32>> {
        let d = self.config.input_size();
        if features.len() != rows * d {
            return Err(TrainError::Dataset(format!(
                "predict: {} values for {rows} rows of {d} features (model {})",
                features.len(),
                self.config.name()
            )));
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        Ok(logits(&self.model, &self.device, features.to_vec(), rows, d))
    }
}

fn logits(model: &Model, device: &Device, feats: Vec<f32>, rows: usize, d: usize) -> Vec<f32> {
    let x = Tensor::<2>::from_data(TensorData::new(feats, [rows, d]), device);
    model.forward(x).into_data().try_into_vec_as::<f32>().expect("logits are f32")
}

/// Evaluate a trained model on a dataset.
pub fn evaluate(model: &TrainedModel, ds: &Dataset) -> Result<EvalReport> {
    evaluate_model(&model.model, &model.device, &model.config, ds)
}

/// Check that `ds` fits `cfg` (feature count and label range).
pub(crate) fn check_fits(cfg: &ModelConfig, ds: &Dataset, what: &str) -> Result<()> {
    if ds.row_len() != cfg.input_size() {
        return Err(TrainError::Dataset(format!(
            "{what}: samples have {} values (shape {:?}) but model {} expects {}",
            ds.row_len(),
            ds.shape,
            cfg.name(),
            cfg.input_size()
        )));
    }
    if let Some((i, &l)) = ds.labels.iter().enumerate().find(|(_, l)| **l as usize >= cfg.num_classes()) {
        return Err(TrainError::Dataset(format!(
            "{what}: label #{i} = {l} is out of range for {} classes",
            cfg.num_classes()
        )));
    }
    Ok(())
}

/// `model` must be a non-autodiff model on `device`.
pub(crate) fn evaluate_model(model: &Model, device: &Device, cfg: &ModelConfig, ds: &Dataset) -> Result<EvalReport> {
    check_fits(cfg, ds, "evaluation set")?;
    let k = cfg.num_classes();
    let d = ds.row_len();
    let mut confusion = vec![vec![0u64; k]; k];
    let mut loss_sum = 0f64;
    let mut start = 0;
    while start < ds.len() {
        let end = (start + EVAL_BATCH).min(ds.len());
        let rows = end - start;
        let out = logits(model, device, ds.features[start * d..end * d].to_vec(), rows, d);
        for (r, row) in out.chunks_exact(k).enumerate() {
            let y = ds.labels[start + r] as usize;
            let (mut best, mut max) = (0, f32::NEG_INFINITY);
            for (j, &v) in row.iter().enumerate() {
                if v > max {
                    max = v;
                    best = j;
                }
            }
            let lse = max as f64 + row.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln();
            loss_sum += lse - row[y] as f64;
            confusion[y][best] += 1;
        }
        start = end;
    }
    Ok(report(confusion, loss_sum, ds.len()))
}

fn report(confusion: Vec<Vec<u64>>, loss_sum: f64, n: usize) -> EvalReport {
    let k = confusion.len();
    let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
    let per_class = (0..k)
        .map(|c| {
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = (0..k).map(|t| confusion[t][c]).sum();
            let tp = confusion[c][c] as f64;
            ClassStats {
                precision: if predicted == 0 { 0.0 } else { tp / predicted as f64 },
                recall: if support == 0 { 0.0 } else { tp / support as f64 },
                support,
            }
        })
        .collect();
    EvalReport {
        accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
        loss: if n == 0 { 0.0 } else { loss_sum / n as f64 },
        per_class,
        confusion,
    }
}
