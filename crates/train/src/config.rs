//! Plain serde structs read from the `[train]` part of a TOML job spec.
//!
//! Invariants:
//! * Deserialising only checks syntax/types; [`TrainConfig::validate`] checks ranges and
//!   consistency and names the offending field (`model.layers[1]: layer size must be > 0`).
//!   [`TrainConfig::from_toml`] does both.
//! * Tagged enums use the key `name` (`name = "mlp"`, `name = "adamw"`, `name = "cosine"`).
//! * Unknown keys are rejected (`deny_unknown_fields`) so typos do not silently use defaults.

use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

use crate::error::{Result, TrainError, invalid};

/// Names accepted for `model.name`.
pub const KNOWN_MODELS: &str = "mlp, cnn";

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/// Which network to build. Serialised with an internal `name` tag.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum ModelConfig {
    Mlp(MlpConfig),
    Cnn(CnnConfig),
}

/// Hidden-layer non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Relu,
    Gelu,
    Tanh,
}

/// Multi-layer perceptron: `layers[0]` inputs, `layers[last]` classes, linear layers between
/// consecutive sizes, activation (+ dropout) after every layer but the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    pub layers: Vec<usize>,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default)]
    pub dropout: f64,
}

/// One convolution: `channels` outputs, square `kernel`, stride 1, zero `padding`
/// (default `kernel / 2`, i.e. "same" for odd kernels), then ReLU and a `pool`x`pool` max-pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvLayerConfig {
    pub channels: usize,
    pub kernel: usize,
    #[serde(default)]
    pub padding: Option<usize>,
}

impl ConvLayerConfig {
    pub fn padding(&self) -> usize {
        self.padding.unwrap_or(self.kernel / 2)
    }
}

/// Small CNN: `[conv -> relu -> maxpool] * conv.len()`, flatten, `[dense -> relu -> dropout] *
/// dense.len()`, linear to `classes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnnConfig {
    /// `[channels, height, width]` of one sample.
    pub input: [usize; 3],
    pub conv: Vec<ConvLayerConfig>,
    #[serde(default = "default_pool")]
    pub pool: usize,
    #[serde(default)]
    pub dense: Vec<usize>,
    pub classes: usize,
    #[serde(default)]
    pub dropout: f64,
}

fn default_pool() -> usize {
    2
}

impl ModelConfig {
    /// Reference MLP: 784-256-128-10, ReLU, no dropout.
    pub fn reference_mlp() -> Self {
        ModelConfig::Mlp(MlpConfig { layers: vec![784, 256, 128, 10], activation: Activation::Relu, dropout: 0.0 })
    }

    /// Reference CNN: conv3x3(32)-maxpool-conv3x3(64)-maxpool-dense(128)-dense(10), "same" padding.
    pub fn reference_cnn() -> Self {
        ModelConfig::Cnn(CnnConfig {
            input: [1, 28, 28],
            conv: vec![
                ConvLayerConfig { channels: 32, kernel: 3, padding: None },
                ConvLayerConfig { channels: 64, kernel: 3, padding: None },
            ],
            pool: 2,
            dense: vec![128],
            classes: 10,
            dropout: 0.0,
        })
    }

    /// Model name as written in the job spec.
    pub fn name(&self) -> &'static str {
        match self {
            ModelConfig::Mlp(_) => "mlp",
            ModelConfig::Cnn(_) => "cnn",
        }
    }

    /// Number of input features per sample (flattened).
    pub fn input_size(&self) -> usize {
        match self {
            ModelConfig::Mlp(m) => m.layers.first().copied().unwrap_or(0),
            ModelConfig::Cnn(c) => c.input.iter().product(),
        }
    }

    /// Number of output logits.
    pub fn num_classes(&self) -> usize {
        match self {
            ModelConfig::Mlp(m) => m.layers.last().copied().unwrap_or(0),
            ModelConfig::Cnn(c) => c.classes,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Mlp(m) => {
                if m.layers.len() < 2 {
                    return Err(invalid(
                        "model.layers",
                        format!("need at least 2 sizes (inputs and classes), got {}", m.layers.len()),
                    ));
                }
                for (i, &n) in m.layers.iter().enumerate() {
                    if n == 0 {
                        return Err(invalid(format!("model.layers[{i}]"), "layer size must be > 0"));
                    }
                }
                check_dropout(m.dropout)
            }
            ModelConfig::Cnn(c) => {
                for (i, &d) in c.input.iter().enumerate() {
                    if d == 0 {
                        return Err(invalid(format!("model.input[{i}]"), "must be > 0"));
                    }
                }
                if c.pool == 0 {
                    return Err(invalid("model.pool", "must be > 0"));
                }
                if c.classes == 0 {
                    return Err(invalid("model.classes", "must be > 0"));
                }
                let (mut h, mut w) = (c.input[1], c.input[2]);
                for (i, l) in c.conv.iter().enumerate() {
                    if l.channels == 0 {
                        return Err(invalid(format!("model.conv[{i}].channels"), "must be > 0"));
                    }
                    if l.kernel == 0 {
                        return Err(invalid(format!("model.conv[{i}].kernel"), "must be > 0"));
                    }
                    let p = l.padding();
                    if h + 2 * p < l.kernel || w + 2 * p < l.kernel {
                        return Err(invalid(
                            format!("model.conv[{i}].kernel"),
                            format!("kernel {} larger than the padded {h}x{w} input", l.kernel),
                        ));
                    }
                    h = (h + 2 * p - l.kernel + 1) / c.pool;
                    w = (w + 2 * p - l.kernel + 1) / c.pool;
                    if h == 0 || w == 0 {
                        return Err(invalid(
                            format!("model.conv[{i}]"),
                            "feature map shrinks to 0 after pooling (input too small)",
                        ));
                    }
                }
                for (i, &n) in c.dense.iter().enumerate() {
                    if n == 0 {
                        return Err(invalid(format!("model.dense[{i}]"), "layer size must be > 0"));
                    }
                }
                check_dropout(c.dropout)
            }
        }
    }
}

fn check_dropout(p: f64) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(invalid("model.dropout", format!("must be in [0, 1), got {p}")));
    }
    Ok(())
}

// `name` selects the variant; an unknown name gets a message listing the known ones (serde's
// own "unknown variant" message would not say "model").
impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut v = serde_json::Value::deserialize(d)?;
        let obj = v.as_object_mut().ok_or_else(|| D::Error::custom("model: expected a table"))?;
        let name = match obj.remove("name") {
            Some(serde_json::Value::String(s)) => s,
            Some(_) => return Err(D::Error::custom("model.name: expected a string")),
            None => {
                return Err(D::Error::custom(format!("model.name: missing (known: {KNOWN_MODELS})")));
            }
        };
        match name.as_str() {
            "mlp" => serde_json::from_value(v)
                .map(ModelConfig::Mlp)
                .map_err(|e| D::Error::custom(format!("model (mlp): {e}"))),
            "cnn" => serde_json::from_value(v)
                .map(ModelConfig::Cnn)
                .map_err(|e| D::Error::custom(format!("model (cnn): {e}"))),
            other => Err(D::Error::custom(
                TrainError::UnknownModel { name: other.to_string(), known: KNOWN_MODELS }.to_string(),
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Optimizer
// ---------------------------------------------------------------------------------------------

/// Optimizer. Semantics follow PyTorch (`torch.optim.SGD/Adam/AdamW`):
/// * `sgd`: dampening 0; `weight_decay` is L2 added to the gradient.
/// * `adam`: `weight_decay` is L2 added to the gradient (coupled), like `torch.optim.Adam`.
/// * `adamw`: decoupled weight decay. With `weight_decay = 0` it is plain Adam.
///
/// `eps` defaults to 1e-8 (PyTorch) — burn's own default is 1e-5, which we never use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
        #[serde(default)]
        nesterov: bool,
    },
    Adam {
        lr: f64,
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    Adamw {
        lr: f64,
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default = "default_adamw_wd")]
        weight_decay: f64,
    },
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_adamw_wd() -> f64 {
    0.01
}

impl OptimizerConfig {
    /// Adam with PyTorch defaults and the given learning rate.
    pub fn adam(lr: f64) -> Self {
        OptimizerConfig::Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }

    pub fn lr(&self) -> f64 {
        match *self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } | OptimizerConfig::Adamw { lr, .. } => {
                lr
            }
        }
    }

    pub fn validate(&self) -> Result<()> {
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return Err(invalid("optimizer.lr", format!("must be a finite number > 0, got {lr}")));
        }
        match *self {
            OptimizerConfig::Sgd { momentum, weight_decay, nesterov, .. } => {
                if !(0.0..1.0).contains(&momentum) {
                    return Err(invalid("optimizer.momentum", format!("must be in [0, 1), got {momentum}")));
                }
                if nesterov && momentum == 0.0 {
                    return Err(invalid("optimizer.nesterov", "requires momentum > 0"));
                }
                check_wd(weight_decay)
            }
            OptimizerConfig::Adam { beta1, beta2, eps, weight_decay, .. }
            | OptimizerConfig::Adamw { beta1, beta2, eps, weight_decay, .. } => {
                if !(0.0..1.0).contains(&beta1) {
                    return Err(invalid("optimizer.beta1", format!("must be in [0, 1), got {beta1}")));
                }
                if !(0.0..1.0).contains(&beta2) {
                    return Err(invalid("optimizer.beta2", format!("must be in [0, 1), got {beta2}")));
                }
                if !(eps.is_finite() && eps > 0.0) {
                    return Err(invalid("optimizer.eps", format!("must be > 0, got {eps}")));
                }
                check_wd(weight_decay)
            }
        }
    }
}

fn check_wd(wd: f64) -> Result<()> {
    if !(wd.is_finite() && wd >= 0.0) {
        return Err(invalid("optimizer.weight_decay", format!("must be >= 0, got {wd}")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Learning-rate schedule
// ---------------------------------------------------------------------------------------------

/// Learning-rate schedule, a pure function of the global optimizer step (so it needs no state
/// in checkpoints). `step_size` and `warmup_steps` count optimizer steps, not epochs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum ScheduleConfig {
    #[default]
    Constant,
    /// `lr * gamma^(step / step_size)`.
    Step { step_size: u64, gamma: f64 },
    /// Linear warm-up from ~0 to `lr` over `warmup_steps`, then cosine decay to `min_lr` at the
    /// last step of training.
    Cosine {
        #[serde(default)]
        warmup_steps: u64,
        #[serde(default)]
        min_lr: f64,
    },
}

impl ScheduleConfig {
    pub fn validate(&self, base_lr: f64) -> Result<()> {
        match *self {
            ScheduleConfig::Constant => Ok(()),
            ScheduleConfig::Step { step_size, gamma } => {
                if step_size == 0 {
                    return Err(invalid("schedule.step_size", "must be > 0"));
                }
                if !(gamma.is_finite() && gamma > 0.0) {
                    return Err(invalid("schedule.gamma", format!("must be > 0, got {gamma}")));
                }
                Ok(())
            }
            ScheduleConfig::Cosine { min_lr, .. } => {
                if !(min_lr.is_finite() && min_lr >= 0.0 && min_lr <= base_lr) {
                    return Err(invalid(
                        "schedule.min_lr",
                        format!("must be in [0, optimizer.lr = {base_lr}], got {min_lr}"),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Learning rate used for optimizer step `step` (0-based) out of `total_steps`.
    pub fn lr_at(&self, base_lr: f64, step: u64, total_steps: u64) -> f64 {
        match *self {
            ScheduleConfig::Constant => base_lr,
            ScheduleConfig::Step { step_size, gamma } => base_lr * gamma.powi((step / step_size.max(1)) as i32),
            ScheduleConfig::Cosine { warmup_steps, min_lr } => {
                if step < warmup_steps {
                    return base_lr * (step + 1) as f64 / warmup_steps as f64;
                }
                let span = total_steps.saturating_sub(warmup_steps).max(1) as f64;
                let t = ((step - warmup_steps) as f64 / span).min(1.0);
                min_lr + 0.5 * (base_lr - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Training job
// ---------------------------------------------------------------------------------------------

/// Where to run. `auto` = cuda if compiled in and a device exists, else wgpu if compiled in,
/// else cpu (burn's `flex` backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Cpu,
    Wgpu,
    Cuda,
    Auto,
}

/// A whole training job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    pub epochs: u32,
    /// End this run after this many epochs (counted from the start of training, not of this run), with the
    /// epoch-end checkpoint, as a pause: the schedule still spans `epochs`, so a later job resuming from that
    /// checkpoint (`TrainSpec.resume_from_job`) continues exactly the uninterrupted run. A paused run registers no
    /// model. Promotion ASHA runs each rung of a sweep trial this way. `None`: train all `epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_epochs: Option<u32>,
    pub batch_size: usize,
    #[serde(default)]
    pub seed: u64,
    /// Checkpoint every N optimizer steps; 0 = only at epoch ends.
    #[serde(default)]
    pub checkpoint_every_steps: u64,
    /// Emit train loss / lr / samples-per-second every N steps (0 = only at epoch ends).
    #[serde(default = "default_log_every")]
    pub log_every_steps: u64,
    #[serde(default)]
    pub backend: BackendKind,
    /// How data-parallel ranks send gradients: `none` (f32) or `bf16` (half the bytes).
    #[serde(default, with = "compression_serde")]
    pub gradient_compression: aidos_sdk::Compression,
}

/// `gradient_compression` as `"none"` / `"bf16"`.
mod compression_serde {
    use aidos_sdk::Compression;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(c: &Compression, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match c {
            Compression::None => "none",
            Compression::Bf16 => "bf16",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Compression, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

fn default_log_every() -> u64 {
    100
}

impl TrainConfig {
    /// A config with the given model/optimizer and defaults elsewhere (constant lr, seed 0,
    /// cpu, checkpoints at epoch ends only).
    pub fn new(model: ModelConfig, optimizer: OptimizerConfig, epochs: u32, batch_size: usize) -> Self {
        TrainConfig {
            model,
            optimizer,
            schedule: ScheduleConfig::Constant,
            epochs,
            stop_after_epochs: None,
            batch_size,
            seed: 0,
            checkpoint_every_steps: 0,
            log_every_steps: default_log_every(),
            backend: BackendKind::Cpu,
            gradient_compression: aidos_sdk::Compression::None,
        }
    }

    /// Parse from TOML text and validate.
    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            // Keep the "unknown model" message first-class: it is the common typo.
            if msg.starts_with("unknown model") {
                TrainError::ConfigParse(msg)
            } else {
                TrainError::ConfigParse(e.to_string().trim().to_string())
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse from JSON text (the `config_json` of a train job) and validate. Errors name the field: unknown or
    /// missing fields and type errors come from the parser (with line/column), range errors from [`validate`].
    ///
    /// [`validate`]: TrainConfig::validate
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: TrainConfig = serde_json::from_str(text).map_err(|e| TrainError::ConfigParse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as JSON (what [`TrainConfig::from_json`] reads back).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a TrainConfig always serialises")
    }

    /// Whether a run of this config ends before `epochs` (see `stop_after_epochs`): it pauses, it does not finish.
    pub fn pauses(&self) -> bool {
        self.end_epoch() < self.epochs
    }

    /// The epoch a run of this config ends after: `stop_after_epochs` when it pauses, else `epochs`.
    pub fn end_epoch(&self) -> u32 {
        self.stop_after_epochs.map_or(self.epochs, |k| k.min(self.epochs))
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.optimizer.validate()?;
        self.schedule.validate(self.optimizer.lr())?;
        if self.epochs == 0 {
            return Err(invalid("epochs", "must be > 0"));
        }
        if let Some(k) = self.stop_after_epochs
            && (k == 0 || k > self.epochs)
        {
            return Err(invalid("stop_after_epochs", format!("{k}: must be 1..={} (epochs)", self.epochs)));
        }
        if self.batch_size == 0 {
            return Err(invalid("batch_size", "must be > 0"));
        }
        Ok(())
    }
}
