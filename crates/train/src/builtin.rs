//! The built-in trainer of `train` jobs: what `aidos train-run` runs inside a task. It reads the job from the
//! environment, trains with [`crate::train`] and talks to the cluster only through `aidos_sdk` (no network code
//! here).
//!
//! Environment (on top of the SDK's task contract, see `aidos_sdk`):
//!
//! | variable                  | meaning                                                        |
//! |---------------------------|----------------------------------------------------------------|
//! | `AIDOS_TRAIN_DATASET`     | `NAME@vN` (or `NAME`: the latest version)                       |
//! | `AIDOS_TRAIN_CONFIG`      | JSON of a [`TrainConfig`]                                       |
//! | `AIDOS_TRAIN_REGISTER_AS` | model name the result is registered under                       |
//! | `AIDOS_TRAIN_SPLIT`       | split trained on (default `train`)                              |
//! | `AIDOS_EVAL_SPLIT`        | split evaluated on at each epoch end and at the end (default `test`) |
//! | `AIDOS_TRAIN_RESUME_FROM` | a job whose checkpoint this job continues (optional; then required) |
//!
//! What it does:
//! 1. Loads both splits, checks that the model's input size and class count fit the dataset.
//! 2. Standardises every input value as `(x - mean) / std` with one scalar mean/std computed on the train split
//!    (NaN cells become 0, the mean); the registered model's config records them (see [`ModelConfigRecord`]), so
//!    evaluation, serving and export apply the same preprocessing.
//! 3. Logs params (the config flattened) and the dataset on the run, resumes from the newest checkpoint of any
//!    earlier attempt of the job (or, without one, of the job `TrainSpec.resume_from_job` names: the scheduler
//!    answers for it), trains (metrics and checkpoints go to the run), printing one
//!    `AIDOS_PROGRESS {json}` line and one human line per log point and epoch end.
//! 4. Evaluates on the eval split and registers the model with its metrics and lineage; prints
//!    `registered model NAME:VERSION test_accuracy=0.9612`. A run that pauses (`stop_after_epochs` below
//!    `epochs`) stops after step 3: its epoch-end checkpoint is what counts.
//!
//! A refused (fenced) report stops training at once: the attempt is stale.

use std::collections::BTreeMap;
use std::io::Write;

use aidos_sdk::{Context, DatasetManifest, ModelVersion, NewModel, SdkError, manifest_ref};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::config::{ModelConfig, TrainConfig};
use crate::data::Dataset;
use crate::error::TrainError;
use crate::eval::{evaluate, load_model};
use crate::train::{TrainHooks, train_with};

pub const ENV_TRAIN_DATASET: &str = aidos_api::contract::task_env::TRAIN_DATASET;
pub const ENV_TRAIN_CONFIG: &str = aidos_api::contract::task_env::TRAIN_CONFIG;
pub const ENV_TRAIN_REGISTER_AS: &str = aidos_api::contract::task_env::TRAIN_REGISTER_AS;
pub const ENV_TRAIN_SPLIT: &str = aidos_api::contract::task_env::TRAIN_SPLIT;
pub const ENV_EVAL_SPLIT: &str = aidos_api::contract::task_env::EVAL_SPLIT;
pub const ENV_TRAIN_RESUME_FROM: &str = aidos_api::contract::task_env::TRAIN_RESUME_FROM;

/// Prefix of the machine-readable progress lines on stdout.
pub const PROGRESS_PREFIX: &str = "AIDOS_PROGRESS ";

#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    #[error("environment variable {var} is not set (the aidos worker sets it for train jobs)")]
    MissingEnv { var: &'static str },
    #[error("{var}: {source}")]
    Config {
        var: &'static str,
        #[source]
        source: TrainError,
    },
    #[error("{0}")]
    Sdk(#[from] SdkError),
    /// The dataset does not fit the model (or has no usable rows).
    #[error("dataset {dataset}: {problem}")]
    Data { dataset: String, problem: String },
    #[error("cannot resume from checkpoint {blob} (step {step}): {source}")]
    Resume {
        blob: String,
        step: u64,
        #[source]
        source: TrainError,
    },
    /// The job continues another job's training, and the scheduler knows no checkpoint for it.
    #[error(
        "this job resumes from job {job}, which has no checkpoint the scheduler knows of (its runs or the job \
         itself were removed, or it belongs to another project); it is not trained from scratch instead"
    )]
    NoCheckpointToResume { job: String },
    #[error("training failed: {0}")]
    Train(#[source] TrainError),
    #[error("evaluation on split {split:?} failed: {source}")]
    Eval {
        split: String,
        #[source]
        source: TrainError,
    },
}

/// The train job as read from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainJob {
    pub dataset: String,
    pub config: TrainConfig,
    pub register_as: String,
    pub train_split: String,
    pub eval_split: String,
    /// `TrainSpec.resume_from_job` ("": none).
    pub resume_from: String,
}

impl TrainJob {
    pub fn from_env() -> Result<TrainJob, BuiltinError> {
        TrainJob::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the job through `get` (a variable's value, None when unset).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<TrainJob, BuiltinError> {
        let req = |var: &'static str| {
            get(var).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).ok_or(BuiltinError::MissingEnv { var })
        };
        let opt = |var: &str, default: &str| {
            get(var).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
        };
        let dataset = req(ENV_TRAIN_DATASET)?;
        let config = TrainConfig::from_json(&req(ENV_TRAIN_CONFIG)?)
            .map_err(|source| BuiltinError::Config { var: ENV_TRAIN_CONFIG, source })?;
        Ok(TrainJob {
            dataset,
            config,
            register_as: req(ENV_TRAIN_REGISTER_AS)?,
            train_split: opt(ENV_TRAIN_SPLIT, "train"),
            eval_split: opt(ENV_EVAL_SPLIT, "test"),
            resume_from: opt(ENV_TRAIN_RESUME_FROM, ""),
        })
    }
}

/// Input preprocessing recorded with a registered model: `x' = (x - mean) / std` on every stored feature value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Standardization {
    pub mean: f64,
    pub std: f64,
}

impl Standardization {
    /// Scalar mean and standard deviation of the finite values of `x` (std 1 when degenerate).
    pub fn fit(x: &[f32]) -> Standardization {
        let (mut n, mut sum) = (0u64, 0f64);
        for &v in x.iter().filter(|v| v.is_finite()) {
            n += 1;
            sum += v as f64;
        }
        let mean = if n == 0 { 0.0 } else { sum / n as f64 };
        let var = if n == 0 {
            0.0
        } else {
            x.iter().filter(|v| v.is_finite()).map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64
        };
        let std = var.sqrt();
        Standardization { mean, std: if std.is_finite() && std > 1e-12 { std } else { 1.0 } }
    }

    /// Applies it in place; NaN (missing) values become 0 (the mean).
    pub fn apply(&self, x: &mut [f32]) {
        let (m, inv) = (self.mean as f32, (1.0 / self.std) as f32);
        for v in x {
            *v = if v.is_nan() { 0.0 } else { (*v - m) * inv };
        }
    }
}

/// The `config` JSON of a model registered by the built-in trainer: enough to rebuild the network and its input
/// preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfigRecord {
    pub model: ModelConfig,
    pub normalization: Standardization,
    /// Shape of one input row, as stored in the dataset.
    pub input_shape: Vec<u64>,
    /// Output classes of the model.
    pub classes: usize,
}

/// What a built-in training run produced.
#[derive(Debug, Clone)]
pub struct BuiltinOutcome {
    /// The registered model; None on the ranks other than 0 of a data-parallel gang (rank 0 registers it).
    pub model: Option<ModelVersion>,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub train_loss: Option<f64>,
    pub resumed_from_step: Option<u64>,
    pub global_step: u64,
}

/// Entry point of `aidos train-run`: reads the task and train environment and runs [`run`], progress to stdout.
pub fn run_from_env() -> Result<(), BuiltinError> {
    let job = TrainJob::from_env()?;
    let ctx = Context::from_env()?;
    let mut out = std::io::stdout();
    run(&ctx, &job, &mut out)?;
    Ok(())
}

/// Checks that the model fits the dataset's rows and labels.
fn check_model_fits(model: &ModelConfig, m: &DatasetManifest) -> Result<(), BuiltinError> {
    let ds = manifest_ref(m);
    let row_len: u64 = m.row_shape.iter().product();
    if m.row_shape.is_empty() || row_len == 0 {
        return Err(BuiltinError::Data { dataset: ds, problem: format!("row shape {:?} has no values", m.row_shape) });
    }
    if model.input_size() as u64 != row_len {
        let hint = match model {
            ModelConfig::Mlp(_) => format!("set model.layers[0] to {row_len}"),
            ModelConfig::Cnn(_) => format!("set model.input to a [channels, height, width] of {row_len} values"),
        };
        return Err(BuiltinError::Data {
            dataset: ds,
            problem: format!(
                "rows have {row_len} values (shape {:?}) but model {} takes {} inputs; {hint}",
                m.row_shape,
                model.name(),
                model.input_size()
            ),
        });
    }
    if m.num_classes as usize > model.num_classes() {
        let field = match model {
            ModelConfig::Mlp(_) => "model.layers[last]",
            ModelConfig::Cnn(_) => "model.classes",
        };
        return Err(BuiltinError::Data {
            dataset: ds,
            problem: format!(
                "labels go up to {} ({} classes) but model {} has {} outputs; set {field} to at least {}",
                m.num_classes - 1,
                m.num_classes,
                model.name(),
                model.num_classes(),
                m.num_classes
            ),
        });
    }
    Ok(())
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x}"),
        _ => "null".to_string(),
    }
}

struct Hooks<'a> {
    ctx: &'a Context,
    /// This task's rank in a data-parallel gang: only rank 0 reports the (global) metrics and checkpoints; every
    /// rank reports its own throughput as `rank<R>.samples_per_sec`.
    rank: u32,
    out: &'a mut dyn Write,
    resume: Option<Checkpoint>,
    epochs: u32,
    total_steps: u64,
    /// A refusal: the attempt is stale, training stops.
    fatal: Option<SdkError>,
    last_epoch_loss: Option<f64>,
}

impl Hooks<'_> {
    fn progress(&mut self, epoch: u32, step: u64, loss: Option<f64>, acc: Option<f64>) {
        let e = epoch + 1;
        let line = format!(
            "{PROGRESS_PREFIX}{{\"epoch\":{e},\"epochs\":{},\"step\":{step},\"steps\":{},\"loss\":{},\"accuracy\":{}}}",
            self.epochs,
            self.total_steps,
            json_num(loss),
            json_num(acc)
        );
        let mut human = format!("epoch {e}/{} step {step}/{}", self.epochs, self.total_steps);
        if let Some(l) = loss {
            human.push_str(&format!(" loss {l:.4}"));
        }
        if let Some(a) = acc {
            human.push_str(&format!(" val_accuracy {a:.4}"));
        }
        let _ = writeln!(self.out, "{line}\n{human}");
        let _ = self.out.flush();
    }

    fn sdk_failed(&mut self, what: &str, e: SdkError) {
        if e.is_fenced() {
            if self.fatal.is_none() {
                self.fatal = Some(e);
            }
        } else {
            eprintln!("warning: {what}: {e} (training continues)");
        }
    }
}

impl TrainHooks for Hooks<'_> {
    fn on_metrics(&mut self, step: u64, epoch: u32, metrics: &[(&str, f64)]) {
        let rank_key = aidos_api::contract::rank_throughput_metric(self.rank);
        let mut mine: Vec<(&str, f64)> = Vec::with_capacity(metrics.len());
        for &(k, v) in metrics {
            match k {
                "rank_samples_per_sec" => mine.push((rank_key.as_str(), v)),
                _ if self.rank == 0 => mine.push((k, v)),
                _ => {}
            }
        }
        if let Err(e) = self.ctx.log_metrics(step, epoch, &mine) {
            self.sdk_failed("reporting metrics", e);
        }
        // An epoch's validation result goes out at once: a sweep's pruner judges trials by it.
        if self.rank == 0
            && metrics.iter().any(|(k, _)| *k == "val_accuracy")
            && let Err(e) = self.ctx.flush()
        {
            self.sdk_failed("reporting metrics", e);
        }
        if self.rank != 0 {
            return;
        }
        let get = |k: &str| metrics.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        if let Some(l) = get("epoch_train_loss") {
            self.last_epoch_loss = Some(l);
            self.progress(epoch, step, Some(l), get("val_accuracy"));
        } else {
            self.progress(epoch, step, get("train_loss"), None);
        }
    }

    fn on_checkpoint(&mut self, ck: &Checkpoint) -> crate::Result<()> {
        if self.rank != 0 {
            return Ok(());
        }
        if self.fatal.is_some() {
            return Err(TrainError::Hook("the attempt is stale".into()));
        }
        let meta = ck.meta()?;
        match self.ctx.save_checkpoint(meta.global_step, meta.epoch, &ck.bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.is_fenced() => {
                let msg = e.to_string();
                self.fatal = Some(e);
                Err(TrainError::Hook(msg))
            }
            Err(e) => {
                // A later checkpoint may make it; losing one only costs recomputation on a retry.
                eprintln!("warning: checkpoint at step {} not saved: {e} (training continues)", meta.global_step);
                Ok(())
            }
        }
    }

    fn resume(&mut self) -> Option<Checkpoint> {
        self.resume.take()
    }

    fn should_stop(&mut self) -> bool {
        self.fatal.is_some()
    }
}

/// Runs one built-in training job against `ctx`, writing progress to `out`.
pub fn run(ctx: &Context, job: &TrainJob, out: &mut dyn Write) -> Result<BuiltinOutcome, BuiltinError> {
    let cfg = &job.config;
    let manifest = ctx.dataset(&job.dataset)?;
    let ds_ref = manifest_ref(&manifest);
    check_model_fits(&cfg.model, &manifest)?;

    let data_err = |problem: String| BuiltinError::Data { dataset: ds_ref.clone(), problem };
    let mut train_split = ctx.load_split(&manifest, &job.train_split)?;
    let mut eval_split = ctx.load_split(&manifest, &job.eval_split)?;
    if train_split.rows == 0 {
        return Err(data_err(format!("split {:?} has no rows", job.train_split)));
    }
    if eval_split.rows == 0 {
        return Err(data_err(format!("split {:?} has no rows", job.eval_split)));
    }
    let norm = Standardization::fit(&train_split.features);
    norm.apply(&mut train_split.features);
    norm.apply(&mut eval_split.features);
    let shape: Vec<usize> = manifest.row_shape.iter().map(|&d| d as usize).collect();
    let rows = (train_split.rows, eval_split.rows);
    let train_ds =
        Dataset::new(std::mem::take(&mut train_split.features), std::mem::take(&mut train_split.labels), shape.clone())
            .map_err(|e| data_err(format!("split {:?}: {e}", job.train_split)))?;
    let eval_ds = Dataset::new(std::mem::take(&mut eval_split.features), std::mem::take(&mut eval_split.labels), shape)
        .map_err(|e| data_err(format!("split {:?}: {e}", job.eval_split)))?;

    let mut params = aidos_sdk::flatten_json(&serde_json::to_value(cfg).expect("a TrainConfig serialises"));
    params.insert("train_split".into(), job.train_split.clone());
    params.insert("eval_split".into(), job.eval_split.clone());
    params.insert("normalization.mean".into(), norm.mean.to_string());
    params.insert("normalization.std".into(), norm.std.to_string());
    let rank = ctx.env().rank;
    if rank == 0 {
        ctx.log_params(&params)?;
        ctx.log_dataset(&manifest)?;
    }

    // Resume from the newest checkpoint of any attempt of this job (rank 0 reads it and hands it to the others).
    let mut resume = None;
    let mut resumed_from_step = None;
    let latest = if rank == 0 { ctx.latest_checkpoint()? } else { None };
    if let Some((ck_ref, bytes)) = latest {
        let ck = Checkpoint { bytes };
        let meta = ck.meta().map_err(|source| BuiltinError::Resume {
            blob: ck_ref.blob.clone(),
            step: ck_ref.step,
            source,
        })?;
        let _ = writeln!(out, "resuming from step {} (epoch {}) of an earlier attempt", meta.global_step, meta.epoch);
        if meta.global_step > 0 {
            ctx.log_resumed_from(meta.global_step)?;
        }
        resumed_from_step = Some(meta.global_step);
        resume = Some(ck);
    } else if rank == 0 && !job.resume_from.is_empty() {
        return Err(BuiltinError::NoCheckpointToResume { job: job.resume_from.clone() });
    }

    let steps_per_epoch = train_ds.len().div_ceil(cfg.batch_size) as u64;
    let _ = writeln!(
        out,
        "training {} on {ds_ref} ({} rows of {:?}, eval {:?}: {} rows), {} epochs x {steps_per_epoch} steps, batch {}",
        cfg.model.name(),
        rows.0,
        manifest.row_shape,
        job.eval_split,
        rows.1,
        cfg.epochs,
        cfg.batch_size
    );
    let _ = out.flush();
    // The data-parallel ring (a gang of one gets a no-op collective without any call).
    let opts = aidos_sdk::RingOptions { compression: cfg.gradient_compression, ..Default::default() };
    let mut comm = ctx.join_ring(&crate::train::param_signature(&cfg.model), opts)?;
    if comm.world_size() > 1 {
        let (lo, hi) = crate::train::shard(cfg.batch_size, comm.world_size(), comm.rank());
        let (r, n, g) = (comm.rank(), comm.world_size(), comm.generation());
        let _ = writeln!(
            out,
            "rank {r} of {n} (generation {g}): {} samples per global batch of {}",
            hi - lo,
            cfg.batch_size
        );
    }
    let mut hooks = Hooks {
        ctx,
        rank,
        out,
        resume,
        // Progress runs to where this job ends (a pausing run's last epoch is `stop_after_epochs`).
        epochs: cfg.end_epoch(),
        total_steps: steps_per_epoch * cfg.end_epoch() as u64,
        fatal: None,
        last_epoch_loss: None,
    };
    let result = train_with(cfg, &train_ds, Some(&eval_ds), &mut hooks, comm.as_mut());
    if let Some(e) = hooks.fatal.take() {
        return Err(e.into());
    }
    let outcome = result.map_err(|e| match e {
        TrainError::Checkpoint(msg) if resumed_from_step.is_some() => BuiltinError::Resume {
            blob: "of an earlier attempt".into(),
            step: resumed_from_step.unwrap_or(0),
            source: TrainError::Checkpoint(msg),
        },
        e => BuiltinError::Train(e),
    })?;
    let train_loss = hooks.last_epoch_loss.or_else(|| outcome.history.last().map(|h| h.train_loss));
    let out = hooks.out;
    // Rank > 0 (rank 0 registers), or a pause (`stop_after_epochs`: the epoch-end checkpoint is where a later job
    // resumes; there is no final model yet): nothing to evaluate or register.
    let unregistered = if rank != 0 {
        Some(format!("rank {rank} finished at step {} (rank 0 registers the model)", outcome.global_step))
    } else if cfg.pauses() {
        Some(format!(
            "paused after epoch {} of {} at step {} (stop_after_epochs); no model registered",
            outcome.epochs_completed, cfg.epochs, outcome.global_step
        ))
    } else {
        None
    };
    if let Some(line) = unregistered {
        ctx.flush()?;
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        return Ok(BuiltinOutcome {
            model: None,
            test_accuracy: f64::NAN,
            test_loss: f64::NAN,
            train_loss,
            resumed_from_step,
            global_step: outcome.global_step,
        });
    }

    let eval_err = |source| BuiltinError::Eval { split: job.eval_split.clone(), source };
    let model = load_model(&cfg.model, &outcome.weights).map_err(eval_err)?;
    let report = evaluate(&model, &eval_ds).map_err(eval_err)?;
    let last_epoch = outcome.epochs_completed.saturating_sub(1);
    ctx.log_metrics(
        outcome.global_step,
        last_epoch,
        &[("test_accuracy", report.accuracy), ("test_loss", report.loss)],
    )?;

    let record = ModelConfigRecord {
        model: cfg.model.clone(),
        normalization: norm,
        input_shape: manifest.row_shape.clone(),
        classes: cfg.model.num_classes(),
    };
    let mut metrics =
        BTreeMap::from([("test_accuracy".to_string(), report.accuracy), ("test_loss".to_string(), report.loss)]);
    if let Some(l) = train_loss.filter(|l| l.is_finite()) {
        metrics.insert("train_loss".into(), l);
    }
    // The evaluation in full (per-class statistics and the confusion matrix) beside the model: the dashboard
    // shows it, and `aidos model eval` recomputes it on any split.
    let evaluation = serde_json::json!({
        "dataset": manifest_ref(&manifest),
        "split": job.eval_split,
        "accuracy": report.accuracy,
        "loss": report.loss,
        "perClass": report.per_class.iter().map(|c| serde_json::json!({
            "precision": c.precision, "recall": c.recall, "support": c.support,
        })).collect::<Vec<_>>(),
        "confusion": report.confusion,
    });
    let evaluation = ctx.put_blob(evaluation.to_string().as_bytes())?;
    let new = NewModel {
        name: job.register_as.clone(),
        config_json: serde_json::to_string(&record).expect("the model record serialises"),
        metrics,
        params,
        artifacts: BTreeMap::from([(aidos_api::contract::EVALUATION_ARTIFACT.to_string(), evaluation.to_string())]),
        ..NewModel::default()
    }
    .with_dataset(&manifest);
    let mv = ctx.register_model(&new, &outcome.weights)?;
    ctx.flush()?;
    let _ = writeln!(out, "registered model {}:{} test_accuracy={:.4}", mv.name, mv.version, report.accuracy);
    let _ = out.flush();
    Ok(BuiltinOutcome {
        model: Some(mv),
        test_accuracy: report.accuracy,
        test_loss: report.loss,
        train_loss,
        resumed_from_step,
        global_step: outcome.global_step,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CFG: &str =
        r#"{"model":{"name":"mlp","layers":[4,8,3]},"optimizer":{"name":"adam","lr":0.01},"epochs":2,"batch_size":8}"#;

    fn job(m: &HashMap<&str, &str>) -> Result<TrainJob, BuiltinError> {
        TrainJob::from_lookup(|k| m.get(k).map(|v| v.to_string()))
    }

    #[test]
    fn reads_the_train_environment_with_defaults() {
        let mut m = HashMap::from([
            (ENV_TRAIN_DATASET, "iris@v2"),
            (ENV_TRAIN_CONFIG, CFG),
            (ENV_TRAIN_REGISTER_AS, "iris-mlp"),
        ]);
        let j = job(&m).unwrap();
        assert_eq!((j.dataset.as_str(), j.register_as.as_str()), ("iris@v2", "iris-mlp"));
        assert_eq!((j.train_split.as_str(), j.eval_split.as_str()), ("train", "test"));
        assert_eq!(j.config.epochs, 2);
        m.insert(ENV_EVAL_SPLIT, "val");
        assert_eq!(job(&m).unwrap().eval_split, "val");
        m.remove(ENV_TRAIN_REGISTER_AS);
        let e = job(&m).unwrap_err().to_string();
        assert!(e.contains(ENV_TRAIN_REGISTER_AS), "{e}");
        m.insert(ENV_TRAIN_REGISTER_AS, "x");
        m.insert(
            ENV_TRAIN_CONFIG,
            r#"{"model":{"name":"mlp","layers":[4,3]},"optimizer":{"name":"adam","lr":-1},"epochs":1,"batch_size":8}"#,
        );
        let e = job(&m).unwrap_err().to_string();
        assert!(e.contains(ENV_TRAIN_CONFIG) && e.contains("optimizer.lr"), "{e}");
    }

    #[test]
    fn standardization_fits_and_applies() {
        let s = Standardization::fit(&[1.0, 3.0, f32::NAN]);
        assert_eq!((s.mean, s.std), (2.0, 1.0));
        let mut x = vec![1.0, 3.0, f32::NAN];
        s.apply(&mut x);
        assert_eq!(x, vec![-1.0, 1.0, 0.0]);
        assert_eq!(Standardization::fit(&[5.0, 5.0]).std, 1.0);
    }

    #[test]
    fn model_must_fit_the_dataset() {
        let m = DatasetManifest {
            name: "iris".into(),
            version: 1,
            row_shape: vec![4],
            num_classes: 3,
            ..Default::default()
        };
        let mlp = |layers: Vec<usize>| {
            ModelConfig::Mlp(crate::config::MlpConfig { layers, activation: Default::default(), dropout: 0.0 })
        };
        check_model_fits(&mlp(vec![4, 8, 3]), &m).unwrap();
        let e = check_model_fits(&mlp(vec![5, 3]), &m).unwrap_err().to_string();
        assert!(e.contains("iris@v1") && e.contains("4 values") && e.contains("model.layers[0]"), "{e}");
        let e = check_model_fits(&mlp(vec![4, 2]), &m).unwrap_err().to_string();
        assert!(e.contains("3 classes") && e.contains("2 outputs"), "{e}");
    }

    #[test]
    fn progress_lines_are_json() {
        assert_eq!(json_num(Some(0.5)), "0.5");
        assert_eq!(json_num(Some(f64::NAN)), "null");
        assert_eq!(json_num(None), "null");
    }
}
