//! The leader path of sweeps: submit, cancel; and the leader's sweep loop, which proposes what the pure planner
//! (`crate::sweep::plan`) decides, round after round.
//!
//! Cancel safety and failover: a round proposes its actions one after the other and reads the state again only in
//! the next round, after they applied; every action is idempotent in the state machine (trial records by index,
//! job submissions by request id, trial updates only while the trial runs, a sweep ends once), so a round cut
//! short by a leader change is finished by the next leader from the replicated state alone.

use std::sync::Arc;
use std::time::Duration;

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{
    AddTrialsV1, CancelJobV1, CancelSweepRequest, CreateSweepV1, FinishSweepV1, SetAliasRequest, SubmitJobsV1,
    SubmitRequest, SubmitSweepRequest, Sweep, Trial, TrialState, UpdateTrialV1,
};
use tokio::sync::watch;

use super::LeaderHandler;
use crate::core::Core;
use crate::error::SchedulerError;
use crate::queries;
use crate::sweep::plan::{Action, plan, request_id};

/// Least time between two rounds of the sweep loop (a burst of applied entries costs one round).
const MIN_ROUND_GAP: Duration = Duration::from_millis(5);

impl LeaderHandler {
    pub async fn submit_sweep(&self, r: SubmitSweepRequest) -> Result<Sweep, SchedulerError> {
        let spec = r.spec.ok_or_else(|| SchedulerError::InvalidArgument("spec: missing".into()))?;
        aidos_api::sweep::validate_sweep(&spec)?;
        if r.request_id.len() > super::MAX_REQUEST_ID {
            return Err(SchedulerError::InvalidArgument(format!(
                "request_id: longer than {} bytes",
                super::MAX_REQUEST_ID
            )));
        }
        let sweep = Sweep { spec: Some(spec), request_id: r.request_id, ..Default::default() };
        let res = self.core.propose(Command::CreateSweep(CreateSweepV1 { sweep: Some(sweep) })).await?;
        res.sweep.ok_or_else(|| SchedulerError::Raft("sweep creation answered nothing".into()))
    }

    pub async fn cancel_sweep(&self, id: &str) -> Result<Sweep, SchedulerError> {
        let res = self.core.propose(Command::CancelSweep(CancelSweepRequest { sweep_id: id.to_string() })).await?;
        res.sweep.ok_or_else(|| SchedulerError::NotFound(format!("sweep {id} not found")))
    }
}

/// While this node leads: plans and proposes a round for every active sweep whenever the state changes (at least
/// every 250 ms, for the wall-time budget).
pub async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut version = core.version.clone();
    loop {
        tokio::select! {
            _ = version.changed() => {},
            _ = tokio::time::sleep(Duration::from_millis(250)) => {},
            _ = stop.changed() => return,
        }
        tokio::time::sleep(MIN_ROUND_GAP).await;
        if !core.is_leader() {
            continue;
        }
        let rounds: Vec<(String, Vec<Action>)> = {
            let a = core.state.read().expect("state lock");
            let now = aidos_api::now_ms();
            queries::active_sweeps(&a.state)
                .into_iter()
                .filter_map(|id| queries::sweep_view(&a.state, &id, now).map(|v| (id, plan(&v))))
                .collect()
        };
        for (id, actions) in rounds {
            for action in actions {
                if let Err(e) = execute(&core, &id, action).await {
                    tracing::warn!(sweep = %id, "sweep round: {e}");
                    break;
                }
            }
        }
    }
}

async fn execute(core: &Core, sweep_id: &str, action: Action) -> Result<(), SchedulerError> {
    match action {
        Action::Launch(trials) => {
            let requests = trials
                .iter()
                .map(|t| SubmitRequest { spec: Some(t.job.clone()), request_id: request_id(sweep_id, t.index) })
                .collect();
            let res = core.propose(Command::SubmitJobs(SubmitJobsV1 { requests })).await?;
            let mut records = Vec::with_capacity(trials.len());
            for (t, s) in trials.iter().zip(res.submitted) {
                // A duplicate (an earlier leader submitted it) carries its own parameters: record those.
                let params_json = if s.duplicate {
                    let st = core.state.read().expect("state lock");
                    queries::trial_job_params(&st.state, &s.job_id).unwrap_or_else(|| t.params_json.clone())
                } else {
                    t.params_json.clone()
                };
                tracing::info!(sweep = %sweep_id, trial = t.index, job = %s.job_id, "trial started: {params_json}");
                records.push(Trial {
                    index: t.index,
                    params_json,
                    job_id: s.job_id,
                    state: TrialState::Running as i32,
                    bracket: t.bracket,
                    ..Default::default()
                });
            }
            core.propose(Command::AddTrials(AddTrialsV1 { sweep_id: sweep_id.into(), trials: records })).await?;
        }
        Action::Adopt(t) => {
            tracing::info!(sweep = %sweep_id, trial = t.index, job = %t.job_id, "adopting a trial job an earlier leader submitted");
            core.propose(Command::AddTrials(AddTrialsV1 { sweep_id: sweep_id.into(), trials: vec![t] })).await?;
        }
        Action::Update(t) => {
            if t.state != TrialState::Running as i32 {
                let state = TrialState::try_from(t.state).map(|s| s.as_str_name()).unwrap_or("?");
                tracing::info!(sweep = %sweep_id, trial = t.index, "trial ended: {state} {}", t.reason);
            }
            core.propose(Command::UpdateTrial(UpdateTrialV1 { sweep_id: sweep_id.into(), trial: Some(t) })).await?;
        }
        Action::CancelJob { job_id, why } => {
            match core.propose(Command::CancelJob(CancelJobV1 { job_id, reason: why })).await {
                // Already ended or gone: nothing to stop.
                Ok(_) | Err(SchedulerError::NotFound(_)) | Err(SchedulerError::Stale(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Action::Finish { state, reason, best, best_model } => {
            let mut model = String::new();
            if let Ok(r) = aidos_api::parse_model_ref(&best_model)
                && r.version > 0
            {
                let alias = format!("best-{sweep_id}");
                let set = SetAliasRequest { name: r.name, alias: alias.clone(), version: r.version };
                match core.propose(Command::SetAlias(set)).await {
                    Ok(_) => model = best_model.clone(),
                    Err(e) => tracing::warn!(sweep = %sweep_id, "aliasing the best model {best_model} as {alias}: {e}"),
                }
            }
            tracing::info!(sweep = %sweep_id, "sweep ended: {reason}");
            let finish = FinishSweepV1 {
                sweep_id: sweep_id.into(),
                state: state as i32,
                reason,
                best_trial: best,
                best_model: model,
            };
            core.propose(Command::FinishSweep(finish)).await?;
        }
    }
    Ok(())
}
