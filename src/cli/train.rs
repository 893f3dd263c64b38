//! `aidos train SPEC.toml`: submits a `train` job after checking what can be checked here — the spec, the
//! trainer's config (model, optimizer, schedule: errors name the field) and that the dataset version exists
//! (a bare NAME is pinned to its latest version, so the run is reproducible).

use std::path::PathBuf;

use aidos_api::job_spec;
use clap::Args;

use super::args::{Global, Output};
use super::client::Client;
use super::job::{LogsArgs, logs, wait};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training spec (TOML): `kind = "train"`, [resources], and a [train] table with `dataset`, `register_as` and
    /// the trainer config under [train.config] (model, optimizer, schedule, epochs, batch_size, seed, ...)
    pub spec: PathBuf,
    /// Follow the job's output with a progress bar until it ends
    #[arg(long, env = "AIDOS_TRAIN_FOLLOW")]
    pub follow: bool,
    /// Wait for the job to end; exit non-zero if it failed
    #[arg(long, env = "AIDOS_TRAIN_WAIT")]
    pub wait: bool,
    /// Idempotency key (default: a fresh one)
    #[arg(long, env = "AIDOS_TRAIN_REQUEST_ID")]
    pub request_id: Option<String>,
}

/// Checks a trainer config (JSON) with the trainer's own validation.
pub fn check_train_config(config_json: &str) -> anyhow::Result<()> {
    aidos_train::TrainConfig::from_json(config_json)
        .map_err(|e| anyhow::anyhow!("invalid job spec: train.config: {e}"))?;
    Ok(())
}

pub async fn run(g: &Global, a: TrainArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.spec).map_err(|e| anyhow::anyhow!("reading {}: {e}", a.spec.display()))?;
    let mut spec = aidos_api::spec::parse_toml(&text)?;
    let Some(job_spec::Payload::Train(t)) = spec.payload.as_mut() else {
        anyhow::bail!("invalid job spec: kind: `aidos train` takes a `train` job (with a [train] table)");
    };
    check_train_config(&t.config_json)?;
    let mut client = Client::new(&g.scheduler)?;
    let manifest = super::dataset::get_manifest(&mut client, &t.dataset)
        .await
        .map_err(|e| anyhow::anyhow!("invalid job spec: train.dataset: {e}"))?;
    t.dataset = format!("{}@v{}", manifest.name, manifest.version);
    let split = if t.train_split.is_empty() { "train" } else { &t.train_split };
    let eval = if t.eval_split.is_empty() { "test" } else { &t.eval_split };
    for s in [split, eval] {
        anyhow::ensure!(
            manifest.splits.iter().any(|x| x.name == s),
            "invalid job spec: train: dataset {} has no split `{s}` (it has: {})",
            t.dataset,
            manifest.splits.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    if spec.name.is_empty() {
        spec.name = if t.register_as.is_empty() { manifest.name.clone() } else { t.register_as.clone() };
    }
    let request_id = a.request_id.unwrap_or_else(super::job::new_request_id);
    let id = super::job::submit_spec(&mut client, spec, request_id).await?.job_id;
    if g.output == Output::Json {
        super::render::print_json(&serde_json::json!({"job_id": id}));
    } else {
        println!("{id}");
    }
    if a.follow {
        logs(&mut client, LogsArgs { id: id.clone(), follow: true, rank: Some(0) }).await?;
    }
    if a.follow || a.wait {
        wait(g, &mut client, &id, None).await?;
    }
    Ok(())
}
