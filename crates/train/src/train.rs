//! The training loop.
//!
//! Invariants:
//! * Step `g` (0-based global optimizer step) of epoch `e` uses batch `g - e*steps_per_epoch` of
//!   `epoch_order(n, seed, e)`, lr `schedule.lr_at(lr, g, total_steps)` and dropout stream
//!   `(seed, DROPOUT, g)`. Nothing else is random, so resuming from a checkpoint replays exactly
//!   the uninterrupted run (bit-for-bit on the CPU backend).
//! * The last batch of an epoch may be partial (no samples are dropped).
//! * Checkpoints are emitted every `checkpoint_every_steps` steps (not at the last step of an
//!   epoch, which gets the epoch-end one instead), at each epoch end, and when `should_stop`
//!   ends training early — so a cancelled job can be resumed where it stopped.
//! * `hooks.resume()` is asked exactly once, before the first step.
//!
//! Data parallelism ([`train_with`] and a [`Collective`] of N ranks):
//! * `batch_size` is the global batch. Step `g`'s global batch (the same indices as with one rank) is split into N
//!   contiguous parts ([`shard`]); rank `r` computes `sum of its samples' losses / global batch size`, and the
//!   gradients are summed across ranks, so every rank applies exactly the gradient of the global batch's mean loss:
//!   N ranks train the same model as one rank (up to floating-point summation order), and the gang may restart
//!   with another N (elastic) without changing the math or the checkpoint.
//! * Before the first step rank 0 broadcasts its starting point (its resumed checkpoint, or its fresh model), so
//!   every rank starts from identical weights and optimizer state; after that every rank applies the same
//!   gradients, so they stay identical. Only rank 0 evaluates, checkpoints and has a result worth registering.
//! * Gradients travel as one flat buffer (parameters in module order, then the batch loss), all-reduced in
//!   buckets of at most [`BUCKET_VALUES`] values; burn's backward pass is one call, so there is no overlap of
//!   communication with it.
//! * Dropout masks use the stream `(seed, DROPOUT, g * N + r)` (with one rank: `g`, as before).

use std::time::Instant;

use aidos_sdk::{Collective, SingleRank};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Bytes, Int, Tensor, TensorData, activation};

use crate::backend::{device_for, resolved_name};
use crate::checkpoint::{Checkpoint, CheckpointMeta};
use crate::config::{OptimizerConfig, TrainConfig};
use crate::data::{Dataset, epoch_order};
use crate::error::{Result, TrainError};
use crate::eval::{EvalReport, TrainedModel, check_fits, evaluate_model, load_model, load_weights, model_to_bytes};
use crate::model::Model;
use crate::rng::{self, SplitMix64};

/// Callbacks from the training loop. All methods have no-op defaults.
pub trait TrainHooks {
    /// Metrics at `step` (global step count after the step) in `epoch` (0-based). Every
    /// `log_every_steps`: `train_loss` (mean since last report), `lr`, `samples_per_sec`. At each
    /// epoch end: `epoch_train_loss`, `epoch_samples_per_sec`, `lr`, and with a validation set
    /// `val_loss`, `val_accuracy`.
    fn on_metrics(&mut self, _step: u64, _epoch: u32, _metrics: &[(&str, f64)]) {}
    /// Persist a checkpoint. An error aborts training with [`TrainError::Hook`] or whatever the
    /// hook returns.
    fn on_checkpoint(&mut self, _ck: &Checkpoint) -> Result<()> {
        Ok(())
    }
    /// Asked once at start: a checkpoint to resume from, if any.
    fn resume(&mut self) -> Option<Checkpoint> {
        None
    }
    /// Checked before every step; `true` stops training (after a final checkpoint).
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// Hooks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;
impl TrainHooks for NoHooks {}

/// Per-epoch summary.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochSummary {
    pub epoch: u32,
    /// Mean training loss over the steps of this epoch run in this process.
    pub train_loss: f64,
    pub samples_per_sec: f64,
    pub val: Option<EvalReport>,
}

/// What [`train`] returns.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub config: TrainConfig,
    /// Final weights (burnpack bytes) for [`load_model`].
    pub weights: Vec<u8>,
    /// Optimizer steps done in total (including before a resume).
    pub global_step: u64,
    pub epochs_completed: u32,
    /// Global step training resumed from, if it resumed.
    pub resumed_from_step: Option<u64>,
    pub stopped_early: bool,
    /// Epochs completed in this process.
    pub history: Vec<EpochSummary>,
    /// Which backend actually ran (`cpu(flex)`, `wgpu`, `cuda`).
    pub backend: &'static str,
}

impl TrainOutcome {
    /// The final model, on the CPU backend.
    pub fn model(&self) -> Result<TrainedModel> {
        load_model(&self.config.model, &self.weights)
    }

    /// Validation report of the last completed epoch, if any.
    pub fn final_val(&self) -> Option<&EvalReport> {
        self.history.last().and_then(|e| e.val.as_ref())
    }
}

/// Build the burn optimizer for a config (PyTorch semantics, see [`OptimizerConfig`]).
pub(crate) fn build_optimizer(cfg: &OptimizerConfig) -> ModuleOptimizer {
    match *cfg {
        OptimizerConfig::Sgd { momentum, weight_decay, nesterov, .. } => {
            let mut c = SgdConfig::new();
            if momentum > 0.0 {
                c = c.with_momentum(Some(
                    MomentumConfig::new().with_momentum(momentum).with_dampening(0.0).with_nesterov(nesterov),
                ));
            }
            if weight_decay > 0.0 {
                c = c.with_weight_decay(Some(WeightDecayConfig::new(weight_decay as f32)));
            }
            c.init()
        }
        OptimizerConfig::Adam { beta1, beta2, eps, weight_decay, .. } => AdamConfig::new()
            .with_beta_1(beta1 as f32)
            .with_beta_2(beta2 as f32)
            .with_epsilon(eps as f32)
            .with_weight_decay((weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32)))
            .init(),
        OptimizerConfig::Adamw { beta1, beta2, eps, weight_decay, .. } => AdamWConfig::new()
            .with_beta_1(beta1 as f32)
            .with_beta_2(beta2 as f32)
            .with_epsilon(eps as f32)
            .with_weight_decay(weight_decay as f32)
            .init(),
    }
}

/// Mean cross-entropy of `logits` `[b, k]` against class indices `[b]`.
pub(crate) fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [b, _] = logits.dims();
    activation::log_softmax(logits, 1).gather(1, targets.reshape([b, 1])).mean().neg()
}

fn check_resume(cfg: &TrainConfig, meta: &CheckpointMeta, n: usize) -> Result<()> {
    let c = &meta.config;
    let differs = |what: &str| {
        Err(TrainError::Checkpoint(format!("cannot resume: checkpoint was taken with a different `{what}`")))
    };
    if c.model != cfg.model {
        return differs("model");
    }
    if c.optimizer != cfg.optimizer {
        return differs("optimizer");
    }
    if c.schedule != cfg.schedule {
        return differs("schedule");
    }
    if c.batch_size != cfg.batch_size {
        return differs("batch_size");
    }
    if c.seed != cfg.seed {
        return differs("seed");
    }
    if meta.train_samples != n as u64 {
        return Err(TrainError::Checkpoint(format!(
            "cannot resume: checkpoint was taken on {} training samples, this run has {n}",
            meta.train_samples
        )));
    }
    Ok(())
}

struct Position {
    epoch: u32,
    step_in_epoch: u64,
    global_step: u64,
}

fn make_checkpoint(
    cfg: &TrainConfig,
    model: &Model,
    optim: &ModuleOptimizer,
    pos: &Position,
    n: usize,
) -> Result<Checkpoint> {
    let meta = CheckpointMeta {
        epoch: pos.epoch,
        step_in_epoch: pos.step_in_epoch,
        global_step: pos.global_step,
        seed: cfg.seed,
        train_samples: n as u64,
        config: cfg.clone(),
    };
    let optim =
        optim.into_bytes().map_err(|e| TrainError::Checkpoint(format!("cannot serialise optimizer state: {e}")))?;
    Checkpoint::encode(&meta, &model_to_bytes(model)?, &optim)
}

/// Most values all-reduced in one call (16 MiB of f32).
pub const BUCKET_VALUES: usize = 4 << 20;

/// The part `lo..hi` of a global batch of `len` samples that `rank` of `world` trains on: contiguous, disjoint,
/// covering the batch, sizes differing by at most one.
pub fn shard(len: usize, world: usize, rank: usize) -> (usize, usize) {
    (rank * len / world, (rank + 1) * len / world)
}

/// The model's parameters in module order, with their shapes.
struct ParamList(Vec<(ParamId, Vec<usize>)>);

impl ModuleVisitor for ParamList {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((param.id, param.lazy_shape().dims::<D>().to_vec()));
    }
}

fn param_list(model: &Model) -> Vec<(ParamId, Vec<usize>)> {
    let mut v = ParamList(Vec::new());
    model.visit(&mut v);
    v.0
}

/// The signature data-parallel ranks compare at rendezvous: the model family and every parameter's shape, in
/// module order (`mlp:784x256,256,256x128,...`).
pub fn param_signature(cfg: &crate::config::ModelConfig) -> String {
    let model = Model::init(cfg, 0, &burn::tensor::Device::default());
    let shapes: Vec<String> =
        param_list(&model).iter().map(|(_, s)| s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")).collect();
    format!("{}:{}", cfg.name(), shapes.join(","))
}

/// Moves every parameter's gradient (zeros where it has none) into one flat buffer, in `params` order.
fn flatten_grads(grads: &mut GradientsParams, params: &[(ParamId, Vec<usize>)], out: &mut Vec<f32>) -> Result<()> {
    out.clear();
    for (id, shape) in params {
        let n: usize = shape.iter().product();
        let data = match shape.len() {
            1 => grads.remove::<1>(*id).map(|t| t.into_data()),
            2 => grads.remove::<2>(*id).map(|t| t.into_data()),
            3 => grads.remove::<3>(*id).map(|t| t.into_data()),
            4 => grads.remove::<4>(*id).map(|t| t.into_data()),
            d => return Err(TrainError::Backend(format!("parameters of rank {d} are not supported"))),
        };
        match data {
            Some(d) => out.extend(
                d.try_into_vec::<f32>().map_err(|e| TrainError::Backend(format!("gradient is not f32: {e:?}")))?,
            ),
            None => out.resize(out.len() + n, 0.0),
        }
    }
    Ok(())
}

/// The inverse of [`flatten_grads`]: registers each parameter's slice of `flat` as its gradient.
fn unflatten_grads(flat: &[f32], params: &[(ParamId, Vec<usize>)], device: &burn::tensor::Device) -> GradientsParams {
    let mut grads = GradientsParams::new();
    let mut at = 0;
    for (id, shape) in params {
        let n: usize = shape.iter().product();
        let data = TensorData::new(flat[at..at + n].to_vec(), shape.clone());
        at += n;
        match shape.len() {
            1 => grads.register(*id, Tensor::<1>::from_data(data, device)),
            2 => grads.register(*id, Tensor::<2>::from_data(data, device)),
            3 => grads.register(*id, Tensor::<3>::from_data(data, device)),
            _ => grads.register(*id, Tensor::<4>::from_data(data, device)),
        }
    }
    grads
}

fn all_reduce_buckets(comm: &mut dyn Collective, flat: &mut [f32]) -> Result<()> {
    for bucket in flat.chunks_mut(BUCKET_VALUES) {
        comm.all_reduce_sum(bucket)?;
    }
    Ok(())
}

/// The inputs and labels of the samples `idx` on `device`.
fn batch(ds: &Dataset, idx: &[u32], d: usize, device: &burn::tensor::Device) -> (Tensor<2>, Tensor<1, Int>) {
    let b = idx.len();
    let (feats, labels) = ds.gather(idx);
    let labels: Vec<i64> = labels.into_iter().map(i64::from).collect();
    (
        Tensor::<2>::from_data(TensorData::new(feats, [b, d]), device),
        Tensor::<1, Int>::from_data(TensorData::new(labels, [b]), device),
    )
}

/// Train `cfg.model` on `train_ds`, evaluating on `val_ds` at each epoch end.
pub fn train(
    cfg: &TrainConfig,
    train_ds: &Dataset,
    val_ds: Option<&Dataset>,
    hooks: &mut dyn TrainHooks,
) -> Result<TrainOutcome> {
    train_with(cfg, train_ds, val_ds, hooks, &mut SingleRank::default())
}

/// [`train`] as one rank of a data-parallel gang (see the module docs); with a [`SingleRank`] it is [`train`].
pub fn train_with(
    cfg: &TrainConfig,
    train_ds: &Dataset,
    val_ds: Option<&Dataset>,
    hooks: &mut dyn TrainHooks,
    comm: &mut dyn Collective,
) -> Result<TrainOutcome> {
    cfg.validate()?;
    if train_ds.is_empty() {
        return Err(TrainError::Dataset("training set is empty".into()));
    }
    check_fits(&cfg.model, train_ds, "training set")?;
    if let Some(v) = val_ds {
        check_fits(&cfg.model, v, "validation set")?;
    }

    let base_device = device_for(cfg.backend)?;
    let device = base_device.clone().autodiff();
    let mut model = Model::init(&cfg.model, cfg.seed, &device);
    let mut optim = build_optimizer(&cfg.optimizer);

    let n = train_ds.len();
    let d = train_ds.row_len();
    let bs = cfg.batch_size;
    let steps_per_epoch = n.div_ceil(bs) as u64;
    let total_steps = steps_per_epoch * cfg.epochs as u64;
    let base_lr = cfg.optimizer.lr();

    let mut pos = Position { epoch: 0, step_in_epoch: 0, global_step: 0 };
    let mut resumed_from_step = None;
    let (world, rank) = (comm.world_size(), comm.rank());
    let mut start = hooks.resume();
    if world > 1 {
        // Every rank starts from rank 0's starting point: its resumed checkpoint, or its fresh model.
        let mut bytes = match (rank, start.take()) {
            (0, Some(ck)) => ck.bytes,
            (0, None) => make_checkpoint(cfg, &model, &optim, &pos, n)?.bytes,
            _ => Vec::new(),
        };
        comm.broadcast(0, &mut bytes)?;
        start = Some(Checkpoint { bytes });
    }
    if let Some(ck) = start {
        let (meta, model_bytes, optim_bytes) = ck.decode()?;
        check_resume(cfg, &meta, n)?;
        model = load_weights(model, model_bytes)?;
        optim = optim
            .from_bytes(Bytes::from_bytes_vec(optim_bytes.to_vec()))
            .map_err(|e| TrainError::Checkpoint(format!("corrupt optimizer state: {e}")))?;
        if meta.step_in_epoch >= steps_per_epoch
            || meta.global_step != meta.epoch as u64 * steps_per_epoch + meta.step_in_epoch
        {
            return Err(TrainError::Checkpoint(format!(
                "inconsistent position: epoch {} step {} global {} with {steps_per_epoch} steps/epoch",
                meta.epoch, meta.step_in_epoch, meta.global_step
            )));
        }
        pos = Position { epoch: meta.epoch, step_in_epoch: meta.step_in_epoch, global_step: meta.global_step };
        if world == 1 || meta.global_step > 0 {
            resumed_from_step = Some(meta.global_step);
        }
    }
    let params = if world > 1 { param_list(&model) } else { Vec::new() };
    let mut flat: Vec<f32> = Vec::new();

    let mut history = Vec::new();
    let mut stopped_early = false;

    // A pausing run (`stop_after_epochs`) ends early; the schedule (`total_steps`) still spans every epoch.
    let end_epoch = cfg.end_epoch();
    'epochs: while pos.epoch < end_epoch {
        let order = epoch_order(n, cfg.seed, pos.epoch);
        let epoch_start = Instant::now();
        let (mut epoch_loss, mut epoch_steps, mut epoch_samples) = (0f64, 0u64, 0usize);
        let mut window: Option<Tensor<1>> = None;
        let (mut window_steps, mut window_samples, mut window_start) = (0u64, 0usize, Instant::now());
        let mut rank_window_samples = 0usize;
        let mut lr = base_lr;

        for idx in order.chunks(bs).skip(pos.step_in_epoch as usize) {
            if hooks.should_stop() {
                stopped_early = true;
                if rank == 0 {
                    hooks.on_checkpoint(&make_checkpoint(cfg, &model, &optim, &pos, n)?)?;
                }
                break 'epochs;
            }
            lr = cfg.schedule.lr_at(base_lr, pos.global_step, total_steps);
            let global_b = idx.len();
            let (lo, hi) = shard(global_b, world, rank);
            let mine = &idx[lo..hi];
            let b = mine.len();
            let stream = pos.global_step * world as u64 + rank as u64;
            // With N ranks each one's loss is its share of the global batch's mean (the sum over ranks is the mean);
            // a rank whose part is empty contributes zero gradients.
            let (mut grads, loss) = if b > 0 {
                let (x, y) = batch(train_ds, mine, d, &device);
                let mut drop_rng = SplitMix64::stream(cfg.seed, rng::DROPOUT, stream);
                let mut loss = cross_entropy(model.forward_train(x, Some(&mut drop_rng)), y);
                if world > 1 {
                    loss = loss.mul_scalar(b as f32 / global_b as f32);
                }
                (GradientsParams::from_grads(loss.backward(), &model), Some(loss.detach()))
            } else {
                (GradientsParams::new(), None)
            };
            let l = if world == 1 {
                // Kept on the device: one rank never waits for the loss value.
                loss.expect("one rank trains on the whole batch")
            } else {
                flatten_grads(&mut grads, &params, &mut flat)?;
                flat.push(loss.map_or(0.0, |l| l.into_scalar::<f32>()));
                all_reduce_buckets(comm, &mut flat)?;
                let global_loss = flat.pop().unwrap_or(0.0);
                grads = unflatten_grads(&flat, &params, &base_device);
                Tensor::<1>::from_data(TensorData::new(vec![global_loss], [1]), &base_device)
            };
            model = optim.step(lr, model, grads);
            window = Some(match window.take() {
                Some(w) => w + l,
                None => l,
            });
            rank_window_samples += b;
            let b = global_b;
            pos.global_step += 1;
            pos.step_in_epoch += 1;
            window_steps += 1;
            window_samples += b;
            epoch_steps += 1;
            epoch_samples += b;

            if cfg.log_every_steps > 0 && pos.global_step.is_multiple_of(cfg.log_every_steps) {
                let sum = window.take().map_or(0.0, |w| w.into_scalar::<f32>() as f64);
                epoch_loss += sum;
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                hooks.on_metrics(
                    pos.global_step,
                    pos.epoch,
                    &[
                        ("train_loss", sum / window_steps as f64),
                        ("lr", lr),
                        ("samples_per_sec", window_samples as f64 / secs),
                        ("rank_samples_per_sec", rank_window_samples as f64 / secs),
                    ],
                );
                (window_steps, window_samples, window_start) = (0, 0, Instant::now());
                rank_window_samples = 0;
            }
            if rank == 0
                && cfg.checkpoint_every_steps > 0
                && pos.global_step.is_multiple_of(cfg.checkpoint_every_steps)
                && pos.step_in_epoch < steps_per_epoch
            {
                hooks.on_checkpoint(&make_checkpoint(cfg, &model, &optim, &pos, n)?)?;
            }
        }

        // Epoch end.
        if let Some(w) = window.take() {
            epoch_loss += w.into_scalar::<f32>() as f64;
        }
        let secs = epoch_start.elapsed().as_secs_f64().max(1e-9);
        let finished_epoch = pos.epoch;
        pos.epoch += 1;
        pos.step_in_epoch = 0;
        let val = match val_ds {
            Some(v) if rank == 0 => Some(evaluate_model(&model.valid(), &base_device, &cfg.model, v)?),
            _ => None,
        };
        let train_loss = if epoch_steps > 0 { epoch_loss / epoch_steps as f64 } else { f64::NAN };
        let sps = epoch_samples as f64 / secs;
        let mut metrics = vec![("epoch_train_loss", train_loss), ("epoch_samples_per_sec", sps), ("lr", lr)];
        if let Some(v) = &val {
            metrics.push(("val_loss", v.loss));
            metrics.push(("val_accuracy", v.accuracy));
        }
        hooks.on_metrics(pos.global_step, finished_epoch, &metrics);
        history.push(EpochSummary { epoch: finished_epoch, train_loss, samples_per_sec: sps, val });
        if rank == 0 {
            hooks.on_checkpoint(&make_checkpoint(cfg, &model, &optim, &pos, n)?)?;
        }
    }

    Ok(TrainOutcome {
        config: cfg.clone(),
        weights: model_to_bytes(&model)?,
        global_step: pos.global_step,
        epochs_completed: pos.epoch,
        resumed_from_step,
        stopped_early,
        history,
        backend: resolved_name(cfg.backend),
    })
}
