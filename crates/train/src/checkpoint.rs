//! Training checkpoints as opaque bytes (the caller stores them; content-addressing is elsewhere).
//!
//! Layout (all lengths u64 little-endian):
//! ```text
//! b"AIDOSCK1" | meta_len | meta (JSON CheckpointMeta) | model_len | model (burnpack)
//!             | optim_len | optimizer (burn ModuleOptimizer bytes)
//! ```
//! Invariants:
//! * The model part is burn's `ModuleRecord` burnpack, which also stores each parameter's
//!   `ParamId`; the optimizer state is keyed by those ids, so both must come from the same
//!   checkpoint.
//! * No RNG state is stored because none is needed: the shuffle order is a function of
//!   `(seed, epoch)` and dropout masks of `(seed, global_step)` (see `rng.rs`). `(epoch,
//!   step_in_epoch, global_step, seed)` is the complete data/RNG position.
//! * A checkpoint is only resumed with an identical `TrainConfig` except for `epochs`,
//!   `checkpoint_every_steps`, `log_every_steps` and `backend` (checked by the trainer), and the
//!   same training-set size.

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};

const MAGIC: &[u8; 8] = b"AIDOSCK1";

/// Where training stands when the checkpoint was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Epoch to run next (0-based). At an epoch-end checkpoint this is the following epoch.
    pub epoch: u32,
    /// Batches of `epoch` already done.
    pub step_in_epoch: u64,
    /// Optimizer steps done since the start of training.
    pub global_step: u64,
    pub seed: u64,
    /// Training-set size the position refers to.
    pub train_samples: u64,
    pub config: TrainConfig,
}

/// Model weights + optimizer state + position, serialised.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub bytes: Vec<u8>,
}

impl Checkpoint {
    pub(crate) fn encode(meta: &CheckpointMeta, model: &[u8], optim: &[u8]) -> Result<Checkpoint> {
        let meta =
            serde_json::to_vec(meta).map_err(|e| TrainError::Checkpoint(format!("cannot encode metadata: {e}")))?;
        let mut bytes = Vec::with_capacity(8 + 24 + meta.len() + model.len() + optim.len());
        bytes.extend_from_slice(MAGIC);
        for part in [&meta[..], model, optim] {
            bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
            bytes.extend_from_slice(part);
        }
        Ok(Checkpoint { bytes })
    }

    /// Split into (meta, model bytes, optimizer bytes), validating the framing.
    pub(crate) fn decode(&self) -> Result<(CheckpointMeta, &[u8], &[u8])> {
        let b = &self.bytes[..];
        if b.len() < 8 || &b[..8] != MAGIC {
            return Err(TrainError::Checkpoint("bad magic: not an aidos checkpoint".into()));
        }
        let mut pos = 8;
        let mut parts = [&b[0..0]; 3];
        for (i, name) in ["metadata", "model", "optimizer"].iter().enumerate() {
            if b.len() < pos + 8 {
                return Err(TrainError::Checkpoint(format!("truncated before the {name} length")));
            }
            let len = u64::from_le_bytes(b[pos..pos + 8].try_into().unwrap()) as usize;
            pos += 8;
            if b.len() - pos < len {
                return Err(TrainError::Checkpoint(format!(
                    "truncated {name}: {len} bytes announced, {} present",
                    b.len() - pos
                )));
            }
            parts[i] = &b[pos..pos + len];
            pos += len;
        }
        if pos != b.len() {
            return Err(TrainError::Checkpoint(format!("{} trailing bytes", b.len() - pos)));
        }
        let meta: CheckpointMeta =
            serde_json::from_slice(parts[0]).map_err(|e| TrainError::Checkpoint(format!("bad metadata: {e}")))?;
        Ok((meta, parts[1], parts[2]))
    }

    /// The position/config stored in the checkpoint.
    pub fn meta(&self) -> Result<CheckpointMeta> {
        Ok(self.decode()?.0)
    }

    /// Just the model weights (the same burnpack bytes `load_model` takes).
    pub fn model_weights(&self) -> Result<Vec<u8>> {
        Ok(self.decode()?.1.to_vec())
    }
}
