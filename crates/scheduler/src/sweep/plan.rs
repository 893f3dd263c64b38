//! One round of a sweep: the pure decision of what to propose next, from the replicated sweep and a view of its
//! trials' jobs and reports (built by `crate::queries::sweep_view`). The leader's sweep loop
//! (`crate::leader::sweeps::run`) proposes the actions and waits for them to apply before the next round.
//!
//! Invariants:
//! - Trial `i` is proposed only when trials `0..i` are recorded; its job is submitted with the idempotency key
//!   [`request_id`]`(sweep, i)` and recorded after, so a leader that dies in between leaves a job that the next
//!   leader finds under that key and adopts ([`Action::Adopt`]) with the parameters the job carries: no trial is
//!   lost, repeated or counted twice, and a sweep never has more than `max_trials` trials.
//! - A trial ends once: its update is applied only while it runs or is paused. A pruned or cancelled trial's job is cancelled
//!   after the update; a job still active under an ended trial is cancelled again by the next round.
//! - Nothing here reads a clock: `now_ms` comes in the view.
//! - Promotion mode (`PrunerSpec.promotion`): trial `i` runs one job per rung, `request_id(sweep, i)` for the first
//!   and [`rung_request_id`]`(sweep, i, k)` for rung `k`, each stopping at its rung's resource
//!   (`stop_after_epochs`) and resuming from the previous one's checkpoint. A trial whose job succeeded below the
//!   full budget is PAUSED with the values it reported so far; a freed slot resumes a paused trial that is in the
//!   top 1/η of its rung ([`pruner::promotable`]) before it launches a new trial. The job of a resume is
//!   submitted before the trial records it, so a leader that dies in between leaves a job the next leader finds
//!   under its key and adopts (`SweepView::resumed`). When nothing runs, nothing can be launched and no paused
//!   trial qualifies, the paused trials are PRUNED (they were stopped early) and the sweep ends.

use std::collections::BTreeMap;

use aidos_api::v1::{IntermediateValue, JobSpec, JobState, PrunerSpec, Sweep, SweepState, Trial, TrialState};

use super::pruner::{self, TrialView, Verdict};
use super::searcher::{self, Observation, Params};

/// Most intermediate values a trial keeps when it ends (the latest).
pub const MAX_VALUES_PER_TRIAL: usize = 1000;
/// Trials that ended without the objective, with none ever reporting it, after which the sweep fails.
pub const METRIC_MISSING_AFTER: usize = 3;

/// The idempotency key of trial `index`'s job.
pub fn request_id(sweep_id: &str, index: u32) -> String {
    format!("{sweep_id}/trial-{index}")
}

/// The idempotency key of the job that runs trial `index` of a promotion-mode sweep after it passed `rung` rungs.
pub fn rung_request_id(sweep_id: &str, index: u32, rung: u32) -> String {
    if rung == 0 { request_id(sweep_id, index) } else { format!("{sweep_id}/trial-{index}/rung-{rung}") }
}

/// A trial's values: those recorded on it (earlier rungs' jobs, in promotion mode) and then its current job's
/// reports past them.
pub fn combined_values(recorded: &[IntermediateValue], job: &[IntermediateValue]) -> Vec<IntermediateValue> {
    let after = recorded.last().map_or(0, |v| v.resource);
    let mut out = recorded.to_vec();
    out.extend(job.iter().filter(|v| recorded.is_empty() || v.resource > after).cloned());
    out
}

/// What the view knows of one trial's job.
#[derive(Debug, Clone, Default)]
pub struct TrialJob {
    /// `None`: the job is gone (compacted, or never found).
    pub state: Option<JobState>,
    pub reason: String,
    /// The objective as reported, by increasing resource.
    pub values: Vec<IntermediateValue>,
    /// Every metric name its runs reported (to say what was reported instead of the objective).
    pub reported: Vec<String>,
    /// `NAME:VERSION` a run of it registered.
    pub model: String,
}

#[derive(Debug, Clone)]
pub struct SweepView<'a> {
    pub sweep: &'a Sweep,
    /// By trial index: every running trial's job, and the completed trials' (for their model).
    pub jobs: BTreeMap<u32, TrialJob>,
    /// A job already submitted for the next trial (`trials.len()`) that is not recorded yet: (job id, params JSON).
    pub orphan: Option<(String, String)>,
    /// Promotion mode: paused trials whose next rung's job exists already (an earlier leader submitted it and
    /// died before recording it): trial index -> job id.
    pub resumed: BTreeMap<u32, String>,
    pub now_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTrial {
    pub index: u32,
    pub params_json: String,
    pub bracket: u32,
    pub job: JobSpec,
}

/// A paused trial promoted: its next rung's job.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// The trial as it will be recorded (running, one rung up) once `job` is submitted under
    /// [`rung_request_id`]`(sweep, index, rung)`; the job id is filled in then.
    pub trial: Trial,
    pub job: JobSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Submit these trials' jobs, then record the trials.
    Launch(Vec<NewTrial>),
    /// Submit these paused trials' next jobs, then record the trials running.
    Resume(Vec<Resume>),
    /// Record a trial whose job exists already.
    Adopt(Trial),
    Update(Trial),
    CancelJob {
        job_id: String,
        why: String,
    },
    Finish {
        state: SweepState,
        reason: String,
        best: Option<u32>,
        best_model: String,
    },
}

/// Not running (ended, or paused: a paused trial holds no slot).
fn terminal(t: &Trial) -> bool {
    t.state != TrialState::Running as i32
}

fn paused(t: &Trial) -> bool {
    t.state == TrialState::Paused as i32
}

/// Running or paused: not ended.
fn open(t: &Trial) -> bool {
    !terminal(t) || paused(t)
}

fn best_of(values: &[IntermediateValue], maximize: bool) -> f64 {
    let it = values.iter().map(|v| v.value).filter(|v| !v.is_nan());
    if maximize { it.fold(f64::NEG_INFINITY, f64::max) } else { it.fold(f64::INFINITY, f64::min) }
}

fn ended(
    t: &Trial,
    state: TrialState,
    values: &[IntermediateValue],
    reason: String,
    now: i64,
    maximize: bool,
) -> Trial {
    let mut n = t.clone();
    n.state = state as i32;
    n.reason = reason;
    n.finished_at_ms = now;
    set_values(&mut n, values, maximize);
    n
}

/// Puts a trial's reported values on it (the latest [`MAX_VALUES_PER_TRIAL`]) with what they imply: its latest
/// value, its best, and the resource it reached.
pub fn set_values(t: &mut Trial, values: &[IntermediateValue], maximize: bool) {
    let keep = values.len().saturating_sub(MAX_VALUES_PER_TRIAL);
    t.values = values[keep..].to_vec();
    if let Some(last) = values.last() {
        t.has_value = true;
        t.value = last.value;
        t.best = best_of(values, maximize);
        t.resource = last.resource;
    }
}

/// The pure round. `spec` is the sweep's own.
pub fn plan(v: &SweepView) -> Vec<Action> {
    let s = v.sweep;
    let spec = s.spec.clone().unwrap_or_default();
    let maximize = spec.maximize;
    let mut out = Vec::new();
    let running = SweepState::try_from(s.state) == Ok(SweepState::Running);

    // An ended sweep: stop whatever still runs.
    if !running {
        for t in s.trials.iter().filter(|t| open(t)) {
            let values = current_values(t, v);
            out.push(Action::Update(ended(t, TrialState::Cancelled, &values, s.reason.clone(), v.now_ms, maximize)));
        }
        for t in &s.trials {
            if let Some(j) = v.jobs.get(&t.index)
                && j.state.is_some_and(|st| !st.is_terminal())
            {
                out.push(Action::CancelJob { job_id: t.job_id.clone(), why: format!("sweep {} ended", s.id) });
            }
        }
        // Jobs an earlier leader submitted and did not record (a new trial's, a resume's): nothing else stops them.
        for job_id in v.orphan.iter().map(|(j, _)| j).chain(v.resumed.values()) {
            out.push(Action::CancelJob { job_id: job_id.clone(), why: format!("sweep {} ended", s.id) });
        }
        return out;
    }
    let pruner_spec: PrunerSpec = spec.pruner.unwrap_or_default();
    let brackets = pruner::brackets(&pruner_spec);
    if let Some((job_id, params_json)) = &v.orphan {
        let index = s.trials.len() as u32;
        let bracket = index % brackets;
        out.push(Action::Adopt(Trial {
            index,
            params_json: params_json.clone(),
            job_id: job_id.clone(),
            state: TrialState::Running as i32,
            bracket,
            started_at_ms: v.now_ms,
            ..Default::default()
        }));
        return out;
    }

    let promotion = pruner_spec.promotion;
    // Every trial's values as the pruner sees them: recorded for ended trials, reported for running ones.
    let views: Vec<TrialView> = s.trials.iter().map(|t| trial_view(t, v)).collect();

    let mut now_ended: BTreeMap<u32, Trial> = BTreeMap::new();
    let mut reported_names: std::collections::BTreeSet<String> = Default::default();
    for t in s.trials.iter() {
        let job = v.jobs.get(&t.index);
        if let Some(j) = job {
            reported_names.extend(j.reported.iter().cloned());
        }
        if terminal(t) {
            // A pruned or cancelled trial whose job still runs (the leader died between the two proposals).
            if let Some(j) = job
                && j.state.is_some_and(|st| !st.is_terminal())
            {
                out.push(Action::CancelJob { job_id: t.job_id.clone(), why: t.reason.clone() });
            }
            continue;
        }
        let Some(j) = job else { continue };
        let view = &views[t.index as usize];
        let values = &view.values;
        // Promotion mode: the resource this rung's job stops at (None: the full budget).
        let stops_at = if promotion { pruner::rung_resource(&pruner_spec, t.bracket, t.rung) } else { None };
        let update = match j.state {
            None => Some(ended(t, TrialState::Failed, values, "its job is gone".into(), v.now_ms, maximize)),
            Some(JobState::Succeeded) if j.values.is_empty() => {
                let reported = if j.reported.is_empty() { "nothing".to_string() } else { j.reported.join(", ") };
                let why = format!(
                    "sweep.metric: the trial ended without reporting `{}` (it reported {reported})",
                    spec.metric
                );
                Some(ended(t, TrialState::Failed, values, why, v.now_ms, maximize))
            }
            Some(JobState::Succeeded) if stops_at.is_some() => {
                let why = format!("paused at rung {} ({} {}s)", t.rung, stops_at.unwrap_or(0), spec.resource_unit);
                Some(ended(t, TrialState::Paused, values, why, v.now_ms, maximize))
            }
            Some(JobState::Succeeded) => {
                Some(ended(t, TrialState::Completed, values, String::new(), v.now_ms, maximize))
            }
            Some(JobState::Failed | JobState::Cancelled) => Some(ended(
                t,
                TrialState::Failed,
                values,
                format!("job {}: {}", t.job_id, j.reason),
                v.now_ms,
                maximize,
            )),
            // A promotion-mode job stops itself at its rung: nothing to decide while it runs.
            Some(_) if promotion => None,
            Some(_) => match pruner::decide(&pruner_spec, maximize, view, &views) {
                Verdict::Continue => None,
                Verdict::Promote { rungs } => {
                    let mut n = t.clone();
                    n.rung = rungs;
                    n.resource = values.last().map_or(0, |x| x.resource);
                    out.push(Action::Update(n));
                    None
                }
                Verdict::Prune { reason } => {
                    out.push(Action::CancelJob { job_id: t.job_id.clone(), why: reason.clone() });
                    Some(ended(t, TrialState::Pruned, values, reason, v.now_ms, maximize))
                }
            },
        };
        if let Some(n) = update {
            now_ended.insert(t.index, n);
        }
    }
    // Updates before the cancels they explain.
    let mut ordered: Vec<Action> = now_ended.values().cloned().map(Action::Update).collect();
    ordered.append(&mut out);
    out = ordered;

    let trial = |t: &Trial| now_ended.get(&t.index).cloned().unwrap_or_else(|| t.clone());
    let mut all: Vec<Trial> = s.trials.iter().map(trial).collect();
    // Promotion mode: a paused trial whose next job exists (an earlier leader submitted it) runs it.
    for t in all.iter_mut().filter(|t| paused(t)) {
        if let Some(job_id) = v.resumed.get(&t.index) {
            *t = resumed(t, job_id.clone());
            out.push(Action::Update(t.clone()));
        }
    }
    let still_running = all.iter().filter(|t| !terminal(t)).count() as u32;

    // The objective is reported by nobody: fail the sweep, naming the field.
    let missing = all.iter().filter(|t| t.reason.starts_with("sweep.metric:")).count();
    let any_value = all.iter().any(|t| t.has_value) || v.jobs.values().any(|j| !j.values.is_empty());
    if !any_value && missing >= METRIC_MISSING_AFTER.min(spec.max_trials as usize) {
        let names: Vec<String> = reported_names.into_iter().collect();
        let reported = if names.is_empty() { "nothing".into() } else { names.join(", ") };
        return finish_now(
            out,
            &all,
            s,
            v,
            SweepState::Failed,
            format!("sweep.metric: no trial reports `{}` (the trials report {reported})", spec.metric),
        );
    }
    // Out of time.
    if spec.max_wall_secs > 0 && v.now_ms - s.created_at_ms >= (spec.max_wall_secs as i64).saturating_mul(1000) {
        return finish_now(
            out,
            &all,
            s,
            v,
            SweepState::Succeeded,
            format!("wall-time budget of {}s used", spec.max_wall_secs),
        );
    }

    let used: u64 = all.iter().map(|t| current_values(t, v).last().map_or(t.resource, |x| x.resource)).sum();
    let resource_left = spec.max_resource == 0 || used < spec.max_resource;
    let mut free = if resource_left { spec.max_concurrent.saturating_sub(still_running) as usize } else { 0 };

    // Promotions before new trials (ASHA: a freed worker first looks for a trial to promote).
    let mut resumes = Vec::new();
    if promotion && free > 0 {
        let views: Vec<TrialView> = all.iter().map(|t| trial_view(t, v)).collect();
        let mut chosen = pruner::promotable(&pruner_spec, maximize, &views);
        // The trial budget is spent, nothing runs, nothing qualifies and no trial completed (a budget too small to
        // fill a rung with η values): the leader of the highest rung goes on, so the sweep ends with a model.
        let drained = still_running == 0 && s.trials.len() as u32 >= spec.max_trials;
        if chosen.is_empty() && drained && !all.iter().any(|t| t.state == TrialState::Completed as i32) {
            chosen.extend(pruner::best_paused(&pruner_spec, maximize, &views));
        }
        for index in chosen.into_iter().take(free) {
            let t = &all[index as usize];
            let rung = t.rung + 1;
            let job = serde_json::from_str::<Params>(&t.params_json).map_err(|e| e.to_string()).and_then(|params| {
                let stop = pruner::rung_resource(&pruner_spec, t.bracket, rung);
                aidos_api::sweep::rung_spec(&spec, &s.id, t.index, &params, rung, stop, &t.job_id)
            });
            match job {
                Ok(job) => resumes.push(Resume { trial: resumed(t, String::new()), job }),
                Err(e) => return finish_now(out, &all, s, v, SweepState::Failed, format!("trial {index}: {e}")),
            }
        }
        free -= resumes.len();
    }

    // New trials.
    let history: Vec<Observation> = all
        .iter()
        // Ended and paused trials, and resumed ones by the value they paused with (so a promoted trial does not
        // vanish from the searcher's view while its next rung runs).
        .filter(|t| (terminal(t) || !t.values.is_empty()) && t.has_value && !t.value.is_nan())
        .filter_map(|t| {
            let params: Params = serde_json::from_str(&t.params_json).ok()?;
            Some(Observation { params, loss: if maximize { -t.value } else { t.value } })
        })
        .collect();
    let mut launches = Vec::new();
    let mut exhausted = !resource_left;
    let searcher = searcher::for_spec(&spec);
    let mut index = s.trials.len() as u32;
    while resource_left && index < spec.max_trials && launches.len() < free {
        let params = match searcher.suggest(&spec, index, &history) {
            Ok(Some(p)) => p,
            Ok(None) => {
                exhausted = true;
                break;
            }
            Err(e) => return finish_now(out, &all, s, v, SweepState::Failed, format!("searcher: {e}")),
        };
        let bracket = index % brackets;
        let job = if promotion {
            let stop = pruner::rung_resource(&pruner_spec, bracket, 0);
            aidos_api::sweep::rung_spec(&spec, &s.id, index, &params, 0, stop, "")
        } else {
            aidos_api::sweep::trial_spec(&spec, &s.id, index, &params)
        };
        let job = match job {
            Ok(j) => j,
            Err(e) => return finish_now(out, &all, s, v, SweepState::Failed, format!("trial {index}: {e}")),
        };
        let params_json = serde_json::to_string(&params).unwrap_or_default();
        launches.push(NewTrial { index, params_json, bracket, job });
        index += 1;
    }
    let no_more = exhausted || index >= spec.max_trials;
    let started = !resumes.is_empty() || !launches.is_empty();
    if !resumes.is_empty() {
        out.push(Action::Resume(resumes));
    }
    if !launches.is_empty() {
        out.push(Action::Launch(launches));
    } else if no_more && still_running == 0 && !started {
        // Paused trials no slot will promote any more were stopped early: pruned.
        let eta = pruner_spec.reduction_factor.max(2);
        for t in all.iter_mut().filter(|t| paused(t)) {
            let why = format!(
                "stopped at rung {} ({} {}s): not in the top 1/{eta} of its rung when the sweep ran out of trials",
                t.rung, t.resource, spec.resource_unit
            );
            let values = t.values.clone();
            *t = ended(t, TrialState::Pruned, &values, why, v.now_ms, maximize);
            out.push(Action::Update(t.clone()));
        }
        let reason = if s.trials.len() as u32 >= spec.max_trials {
            format!("all {} trials ended", s.trials.len())
        } else if !resource_left {
            format!("resource budget of {} {}s used", spec.max_resource, spec.resource_unit)
        } else {
            format!("the search space is exhausted after {} trials", s.trials.len())
        };
        return finish_now(out, &all, s, v, SweepState::Succeeded, reason);
    }
    out
}

/// Ends the sweep now: running trials are cancelled; the best completed trial is chosen.
fn finish_now(
    mut out: Vec<Action>,
    all: &[Trial],
    s: &Sweep,
    v: &SweepView,
    state: SweepState,
    reason: String,
) -> Vec<Action> {
    let maximize = s.spec.as_ref().is_some_and(|x| x.maximize);
    for t in all.iter().filter(|t| open(t)) {
        let values = current_values(t, v);
        out.push(Action::Update(ended(t, TrialState::Cancelled, &values, reason.clone(), v.now_ms, maximize)));
        if !paused(t) {
            out.push(Action::CancelJob { job_id: t.job_id.clone(), why: reason.clone() });
        }
    }
    let best = best_trial(all, maximize);
    let (state, reason) = match (state, best) {
        (SweepState::Succeeded, None) => (SweepState::Failed, format!("{reason}; no trial completed with a value")),
        x => (x.0, reason),
    };
    let best_model = best.and_then(|b| v.jobs.get(&b)).map(|j| j.model.clone()).unwrap_or_default();
    out.push(Action::Finish { state, reason, best, best_model });
    out
}

/// A trial's values as of this round: recorded for ended and paused trials, recorded then reported for running ones.
fn current_values(t: &Trial, v: &SweepView) -> Vec<IntermediateValue> {
    if terminal(t) {
        t.values.clone()
    } else {
        combined_values(&t.values, v.jobs.get(&t.index).map_or(&[][..], |j| &j.values))
    }
}

fn trial_view(t: &Trial, v: &SweepView) -> TrialView {
    TrialView {
        index: t.index,
        bracket: t.bracket,
        rung: t.rung,
        completed: t.state == TrialState::Completed as i32,
        paused: paused(t),
        values: current_values(t, v),
    }
}

/// Paused trial `t` running its next rung as `job_id` (empty until the job is submitted).
fn resumed(t: &Trial, job_id: String) -> Trial {
    Trial {
        state: TrialState::Running as i32,
        rung: t.rung + 1,
        job_id,
        reason: String::new(),
        finished_at_ms: 0,
        ..t.clone()
    }
}

/// The completed trial with the best final value (ties: the earlier trial).
pub fn best_trial(trials: &[Trial], maximize: bool) -> Option<u32> {
    let mut best: Option<&Trial> = None;
    for t in trials.iter().filter(|t| t.state == TrialState::Completed as i32 && t.has_value && !t.value.is_nan()) {
        let better = match best {
            None => true,
            Some(b) => {
                if maximize {
                    t.value > b.value
                } else {
                    t.value < b.value
                }
            }
        };
        if better {
            best = Some(t);
        }
    }
    best.map(|t| t.index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aidos_api::v1::{PrunerKind, SweepSpec};

    fn sweep(max_trials: u32, concurrent: u32) -> Sweep {
        let mut spec: SweepSpec = aidos_api::sweep::parse_toml(&format!(
            r#"
name = "q"
[sweep]
metric = "loss"
max_trials = {max_trials}
max_concurrent = {concurrent}
searcher = "random"
[sweep.pruner]
kind = "asha"
max_resource = 9
[sweep.params]
x = {{ uniform = [0.0, 1.0] }}
[trial]
process = {{ executable = "/bin/sh", args = ["-c", "echo ${{x}}"] }}
"#
        ))
        .unwrap();
        spec.pruner.as_mut().unwrap().kind = PrunerKind::Asha as i32;
        Sweep { id: "sweep-1".into(), spec: Some(spec), state: SweepState::Running as i32, ..Default::default() }
    }

    fn view(s: &Sweep) -> SweepView<'_> {
        SweepView { sweep: s, jobs: BTreeMap::new(), orphan: None, resumed: BTreeMap::new(), now_ms: 1000 }
    }

    fn launched(actions: &[Action]) -> Vec<u32> {
        actions
            .iter()
            .flat_map(|a| match a {
                Action::Launch(v) => v.iter().map(|n| n.index).collect(),
                _ => vec![],
            })
            .collect()
    }

    /// Trials 0..n, running as jobs `job-<i>`.
    fn running(s: &mut Sweep, n: u32) {
        for i in 0..n {
            s.trials.push(Trial {
                index: i,
                job_id: format!("job-{i}"),
                state: TrialState::Running as i32,
                ..Default::default()
            });
        }
    }

    fn add(s: &mut Sweep, n: &NewTrial, job: &str) {
        s.trials.push(Trial {
            index: n.index,
            params_json: n.params_json.clone(),
            job_id: job.into(),
            state: TrialState::Running as i32,
            ..Default::default()
        });
    }

    fn job(state: JobState, values: &[(u64, f64)]) -> TrialJob {
        TrialJob {
            state: Some(state),
            values: values.iter().map(|&(resource, value)| IntermediateValue { resource, value }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn launches_up_to_the_concurrency_and_trial_budget_then_finishes_with_the_best() {
        let mut s = sweep(3, 2);
        let a = plan(&view(&s));
        assert_eq!(launched(&a), vec![0, 1]);
        let Action::Launch(l) = &a[0] else { panic!() };
        assert!(l[0].job.labels.contains_key(aidos_api::sweep::LABEL_PARAMS));
        for n in l.clone() {
            add(&mut s, &n, &format!("job-{}", n.index));
        }
        // Both run: nothing to launch.
        let mut v = view(&s);
        v.jobs.insert(0, job(JobState::Running, &[]));
        v.jobs.insert(1, job(JobState::Running, &[]));
        assert!(plan(&v).is_empty());
        // Trial 0 completes: it is recorded, and trial 2 is launched in the same round.
        v.jobs.insert(0, job(JobState::Succeeded, &[(1, 0.5), (2, 0.4)]));
        let a = plan(&v);
        assert!(matches!(&a[0], Action::Update(t) if t.state == TrialState::Completed as i32 && t.value == 0.4));
        assert_eq!(launched(&a), vec![2]);
        // The budget is 3 trials: once all ended, the sweep finishes with the best.
        let Action::Launch(l) = &a[1] else { panic!() };
        add(&mut s, &l[0], "job-2");
        for (i, val) in [(0, 0.4), (1, 0.2), (2, 0.3)] {
            s.trials[i].state = TrialState::Completed as i32;
            s.trials[i].has_value = true;
            s.trials[i].value = val;
        }
        let a = plan(&view(&s));
        assert!(matches!(&a[..], [Action::Finish { state: SweepState::Succeeded, best: Some(1), .. }]), "{a:?}");
    }

    #[test]
    fn an_orphan_job_is_adopted_not_resubmitted() {
        let s = sweep(3, 2);
        let mut v = view(&s);
        v.orphan = Some(("job-7".into(), r#"{"x":0.5}"#.into()));
        let a = plan(&v);
        assert!(matches!(&a[..], [Action::Adopt(t)] if t.index == 0 && t.job_id == "job-7"));
    }

    #[test]
    fn a_trial_below_the_rung_is_pruned_and_its_job_cancelled() {
        let mut s = sweep(10, 5);
        running(&mut s, 4);
        let mut v = view(&s);
        // Minimising: trials 0..3 report 0.1, 0.2, 0.3 at rung 1; trial 3 reports 0.9.
        for (i, val) in [0.1, 0.2, 0.3, 0.9].into_iter().enumerate() {
            v.jobs.insert(i as u32, job(JobState::Running, &[(1, val)]));
        }
        let a = plan(&v);
        let pruned: Vec<u32> = a
            .iter()
            .filter_map(|x| match x {
                Action::Update(t) if t.state == TrialState::Pruned as i32 => Some(t.index),
                _ => None,
            })
            .collect();
        assert_eq!(pruned, vec![1, 2, 3], "4 values with eta 3: only the best goes on");
        assert!(a.iter().any(|x| matches!(x, Action::CancelJob { job_id, .. } if job_id == "job-3")));
        assert!(a.iter().any(|x| matches!(x, Action::Update(t) if t.index == 0 && t.rung == 1)));
    }

    #[test]
    fn a_metric_nobody_reports_fails_the_sweep_naming_the_field() {
        let mut s = sweep(5, 3);
        running(&mut s, 3);
        let mut v = view(&s);
        for i in 0..3u32 {
            let mut j = job(JobState::Succeeded, &[]);
            j.reported = vec!["los".into()];
            v.jobs.insert(i, j);
        }
        let a = plan(&v);
        let Some(Action::Finish { state, reason, .. }) = a.last() else { panic!("{a:?}") };
        assert_eq!(*state, SweepState::Failed);
        assert!(reason.contains("sweep.metric") && reason.contains("`loss`") && reason.contains("los"), "{reason}");
    }

    #[test]
    fn a_cancelled_sweep_cancels_its_running_trials() {
        let mut s = sweep(5, 3);
        s.state = SweepState::Cancelled as i32;
        running(&mut s, 1);
        let mut v = view(&s);
        v.jobs.insert(0, job(JobState::Running, &[(1, 0.3)]));
        let a = plan(&v);
        assert!(matches!(&a[0], Action::Update(t) if t.state == TrialState::Cancelled as i32));
        assert!(matches!(&a[1], Action::CancelJob { .. }));
    }

    /// A promotion-mode sweep of `train` trials: rungs at 1 and 3 epochs of 9.
    fn promotion_sweep(max_trials: u32, concurrent: u32) -> Sweep {
        let spec: SweepSpec = aidos_api::sweep::parse_toml(&format!(
            r#"
name = "p"
[sweep]
metric = "val_accuracy"
direction = "maximize"
max_trials = {max_trials}
max_concurrent = {concurrent}
searcher = "random"
[sweep.pruner]
kind = "asha"
max_resource = 9
mode = "promotion"
[sweep.params]
lr = {{ loguniform = [1e-4, 1e-2] }}
[trial]
kind = "train"
[trial.train]
dataset = "mnist"
[trial.train.config]
epochs = 9
batch_size = 64
model = {{ name = "mlp", layers = [784, 10] }}
optimizer = {{ name = "adam", lr = "${{lr}}" }}
"#
        ))
        .unwrap();
        Sweep { id: "sweep-1".into(), spec: Some(spec), state: SweepState::Running as i32, ..Default::default() }
    }

    fn train_config(job: &JobSpec) -> (serde_json::Value, String) {
        let Some(aidos_api::v1::job_spec::Payload::Train(t)) = &job.payload else { panic!("{job:?}") };
        (serde_json::from_str(&t.config_json).unwrap(), t.resume_from_job.clone())
    }

    fn values(vals: &[(u64, f64)]) -> Vec<IntermediateValue> {
        vals.iter().map(|&(resource, value)| IntermediateValue { resource, value }).collect()
    }

    /// Trial `i` (job `job-<i>`), paused at rung 0 with `val` at 1 epoch.
    fn paused_at_first_rung(i: u32, val: f64) -> Trial {
        Trial {
            index: i,
            params_json: r#"{"lr":0.001}"#.into(),
            job_id: format!("job-{i}"),
            state: TrialState::Paused as i32,
            values: values(&[(1, val)]),
            has_value: true,
            value: val,
            resource: 1,
            ..Default::default()
        }
    }

    #[test]
    fn promotion_pauses_at_each_rung_and_resumes_the_top_third_from_its_checkpoint() {
        let mut s = promotion_sweep(4, 1);
        // The first trial's job stops after its first rung (1 epoch) and starts from scratch.
        let a = plan(&view(&s));
        let Action::Launch(l) = &a[0] else { panic!("{a:?}") };
        let (cfg, from) = train_config(&l[0].job);
        assert_eq!((cfg["stop_after_epochs"].as_u64(), from.as_str()), (Some(1), ""));
        add(&mut s, &l[0], "job-0");
        // Its job succeeds after one epoch: the trial pauses with its value, and trial 1 takes the slot.
        let mut v = view(&s);
        v.jobs.insert(0, job(JobState::Succeeded, &[(1, 0.9)]));
        let a = plan(&v);
        assert!(
            matches!(&a[0], Action::Update(t) if t.state == TrialState::Paused as i32 && t.value == 0.9 && t.resource == 1),
            "{a:?}"
        );
        assert_eq!(launched(&a), vec![1], "fewer than η values at the rung: nothing to promote yet");
        // Three trials paused at rung 0 (0.9, 0.5, 0.7): the best is promoted before trial 3 is launched.
        s.trials[0] = paused_at_first_rung(0, 0.9);
        for (i, val) in [(1u32, 0.5), (2, 0.7)] {
            s.trials.push(paused_at_first_rung(i, val));
        }
        let a = plan(&view(&s));
        let [Action::Resume(r)] = &a[..] else { panic!("{a:?}") };
        assert_eq!((r[0].trial.index, r[0].trial.rung, r[0].trial.state), (0, 1, TrialState::Running as i32));
        let (cfg, from) = train_config(&r[0].job);
        assert_eq!((cfg["stop_after_epochs"].as_u64(), from.as_str()), (Some(3), "job-0"), "to rung 1, from job-0");
        assert_eq!(rung_request_id("sweep-1", 0, 1), "sweep-1/trial-0/rung-1");
        // An earlier leader submitted that resume and died: its job is adopted, not submitted again.
        let mut v = view(&s);
        v.resumed.insert(0, "job-7".into());
        let a = plan(&v);
        assert!(matches!(&a[0], Action::Update(t) if t.index == 0 && t.rung == 1 && t.job_id == "job-7"), "{a:?}");
        assert!(!a.iter().any(|x| matches!(x, Action::Resume(_) | Action::Launch(_))), "the slot is taken: {a:?}");
        // Trial 0 runs rung 1: the report of its new job continues the recorded values.
        s.trials[0] = resumed(&s.trials[0], "job-7".into());
        let mut v = view(&s);
        v.jobs.insert(0, job(JobState::Running, &[(2, 0.92), (3, 0.95)]));
        assert!(plan(&v).is_empty(), "nothing is pruned while it runs, and no slot is free");
        assert_eq!(trial_view(&s.trials[0], &v).values, values(&[(1, 0.9), (2, 0.92), (3, 0.95)]));
    }

    #[test]
    fn promotion_prunes_the_paused_trials_left_when_the_sweep_runs_out() {
        let mut s = promotion_sweep(2, 2);
        for (i, val) in [(0u32, 0.9), (1, 0.5)] {
            s.trials.push(paused_at_first_rung(i, val));
        }
        // Two values at rung 0 (fewer than η): nobody qualifies, and no trial is left to launch. With no trial
        // completed, the best paused one goes on, so the sweep ends with a trained model.
        let a = plan(&view(&s));
        let [Action::Resume(r)] = &a[..] else { panic!("{a:?}") };
        assert_eq!((r.len(), r[0].trial.index, r[0].trial.rung), (1, 0, 1));
        // It completes (rung 1 at 3, then the full 9 epochs): the other paused trial is pruned, the sweep succeeds.
        s.trials[0] = resumed(&s.trials[0], "job-5".into());
        s.trials[0].rung = 2;
        let mut v = view(&s);
        v.jobs.insert(0, job(JobState::Succeeded, &[(2, 0.92), (9, 0.97)]));
        let a = plan(&v);
        let pruned: Vec<u32> = a
            .iter()
            .filter_map(|x| match x {
                Action::Update(t) if t.state == TrialState::Pruned as i32 => Some(t.index),
                _ => None,
            })
            .collect();
        assert_eq!(pruned, vec![1], "{a:?}");
        assert!(matches!(a.last(), Some(Action::Finish { state: SweepState::Succeeded, best: Some(0), .. })), "{a:?}");
        assert!(!a.iter().any(|x| matches!(x, Action::CancelJob { .. })), "a paused trial has no job to cancel");
    }

    #[test]
    fn a_cancelled_promotion_sweep_cancels_its_paused_trials() {
        let mut s = promotion_sweep(4, 1);
        s.state = SweepState::Cancelled as i32;
        s.trials.push(Trial {
            index: 0,
            job_id: "job-0".into(),
            state: TrialState::Paused as i32,
            values: values(&[(1, 0.9)]),
            ..Default::default()
        });
        // An earlier leader had submitted its resume and died: that job is cancelled too.
        let mut v = view(&s);
        v.resumed.insert(0, "job-7".into());
        let a = plan(&v);
        assert!(matches!(&a[0], Action::Update(t) if t.state == TrialState::Cancelled as i32), "{a:?}");
        assert!(a.iter().any(|x| matches!(x, Action::CancelJob { job_id, .. } if job_id == "job-7")), "{a:?}");
    }
}
