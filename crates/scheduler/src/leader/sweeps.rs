//! The leader path of sweeps: submit, cancel; and the leader's sweep loop, which proposes what the pure planner
//! (`crate::sweep::plan`) decides, round after round.
//!
//! Cancel safety and failover: a round proposes its actions in [`phases`], each phase after the previous one
//! applied, and reads the state again only in the next round; every action is idempotent in the state machine
//! (trial records by index, job submissions by request id, trial updates only while the trial runs, a sweep ends
//! once), so a round cut short by a leader change is finished by the next leader from the replicated state alone.

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
use crate::loops::Pacer;
use crate::queries;
use crate::sweep::plan::{Action, plan, request_id, rung_request_id};

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
/// every 250 ms, for the wall-time budget), paced as placement rounds are ([`Pacer`]): a burst of applied entries
/// costs one round.
pub async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut version = core.version.clone();
    let mut pacer = Pacer::new(Duration::ZERO);
    loop {
        tokio::select! {
            _ = version.changed() => {},
            _ = tokio::time::sleep(Duration::from_millis(250)) => {},
            _ = stop.changed() => return,
        }
        pacer.start_round().await;
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
        pacer.computed();
        for (id, actions) in rounds {
            for phase in phases(actions) {
                let proposals = phase.into_iter().map(|action| execute(&core, &id, action));
                if let Err(e) = futures::future::try_join_all(proposals).await {
                    tracing::warn!(sweep = %id, "sweep round: {e}");
                    break;
                }
            }
        }
    }
}

/// Orders a round's actions into phases whose proposals go out together (the log takes them in one write): every
/// trial update first (each names its own trial), then the job cancels they explain (a trial is recorded as pruned
/// before its job ends, so a leader change in between cannot take the cancel for a failure), then the rest one by
/// one in the planner's order (a resume or a launch records its trials only after their jobs exist).
fn phases(actions: Vec<Action>) -> Vec<Vec<Action>> {
    let (mut updates, mut cancels, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    for a in actions {
        match a {
            Action::Update(_) | Action::Adopt(_) => updates.push(a),
            Action::CancelJob { .. } => cancels.push(a),
            Action::Resume(_) | Action::Launch(_) | Action::Finish { .. } => rest.push(vec![a]),
        }
    }
    [updates, cancels].into_iter().filter(|p| !p.is_empty()).chain(rest).collect()
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
        Action::Resume(resumes) => {
            let requests = resumes
                .iter()
                .map(|r| SubmitRequest {
                    spec: Some(r.job.clone()),
                    request_id: rung_request_id(sweep_id, r.trial.index, r.trial.rung),
                })
                .collect();
            let res = core.propose(Command::SubmitJobs(SubmitJobsV1 { requests })).await?;
            let updates = resumes.into_iter().zip(res.submitted).map(|(r, s)| {
                tracing::info!(sweep = %sweep_id, trial = r.trial.index, rung = r.trial.rung, job = %s.job_id, "trial promoted");
                let trial = Trial { job_id: s.job_id, ..r.trial };
                core.propose(Command::UpdateTrial(UpdateTrialV1 { sweep_id: sweep_id.into(), trial: Some(trial) }))
            });
            futures::future::try_join_all(updates).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn update(index: u32) -> Action {
        Action::Update(Trial { index, ..Default::default() })
    }
    fn cancel(job: &str) -> Action {
        Action::CancelJob { job_id: job.into(), why: String::new() }
    }

    #[test]
    fn updates_go_before_the_cancels_they_explain_and_launches_last() {
        let actions = vec![update(1), update(2), cancel("job-2"), update(3), cancel("job-4"), Action::Launch(vec![])];
        let p = phases(actions);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].iter().all(|a| matches!(a, Action::Update(_))) && p[0].len() == 3);
        assert!(p[1].iter().all(|a| matches!(a, Action::CancelJob { .. })) && p[1].len() == 2);
        assert!(matches!(&p[2][..], [Action::Launch(_)]));
        assert!(phases(vec![]).is_empty());
    }
}
