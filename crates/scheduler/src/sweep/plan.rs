//! One round of a sweep: the pure decision of what to propose next, from the replicated sweep and a view of its
//! trials' jobs and reports (built by `crate::queries::sweep_view`). The leader's sweep loop
//! (`crate::leader::sweeps::run`) proposes the actions and waits for them to apply before the next round.
//!
//! Invariants:
//! - Trial `i` is proposed only when trials `0..i` are recorded; its job is submitted with the idempotency key
//!   [`request_id`]`(sweep, i)` and recorded after, so a leader that dies in between leaves a job that the next
//!   leader finds under that key and adopts ([`Action::Adopt`]) with the parameters the job carries: no trial is
//!   lost, repeated or counted twice, and a sweep never has more than `max_trials` trials.
//! - A trial ends once: its update is applied only while it runs. A pruned or cancelled trial's job is cancelled
//!   after the update; a job still active under an ended trial is cancelled again by the next round.
//! - Nothing here reads a clock: `now_ms` comes in the view.

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
    pub now_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTrial {
    pub index: u32,
    pub params_json: String,
    pub bracket: u32,
    pub job: JobSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Submit these trials' jobs, then record the trials.
    Launch(Vec<NewTrial>),
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

fn terminal(t: &Trial) -> bool {
    t.state != TrialState::Running as i32
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
        for t in s.trials.iter().filter(|t| !terminal(t)) {
            let values = v.jobs.get(&t.index).map(|j| j.values.clone()).unwrap_or_default();
            out.push(Action::Update(ended(t, TrialState::Cancelled, &values, s.reason.clone(), v.now_ms, maximize)));
        }
        for t in &s.trials {
            if let Some(j) = v.jobs.get(&t.index)
                && j.state.is_some_and(|st| !st.is_terminal())
            {
                out.push(Action::CancelJob { job_id: t.job_id.clone(), why: format!("sweep {} ended", s.id) });
            }
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

    // Every trial's values as the pruner sees them: recorded for ended trials, reported for running ones.
    let views: Vec<TrialView> = s
        .trials
        .iter()
        .map(|t| TrialView {
            index: t.index,
            bracket: t.bracket,
            rung: t.rung,
            completed: t.state == TrialState::Completed as i32,
            values: if terminal(t) {
                t.values.clone()
            } else {
                v.jobs.get(&t.index).map(|j| j.values.clone()).unwrap_or_default()
            },
        })
        .collect();

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
        let update = match j.state {
            None => Some(ended(t, TrialState::Failed, &j.values, "its job is gone".into(), v.now_ms, maximize)),
            Some(JobState::Succeeded) if j.values.is_empty() => {
                let reported = if j.reported.is_empty() { "nothing".to_string() } else { j.reported.join(", ") };
                let why = format!(
                    "sweep.metric: the trial ended without reporting `{}` (it reported {reported})",
                    spec.metric
                );
                Some(ended(t, TrialState::Failed, &j.values, why, v.now_ms, maximize))
            }
            Some(JobState::Succeeded) => {
                Some(ended(t, TrialState::Completed, &j.values, String::new(), v.now_ms, maximize))
            }
            Some(JobState::Failed | JobState::Cancelled) => Some(ended(
                t,
                TrialState::Failed,
                &j.values,
                format!("job {}: {}", t.job_id, j.reason),
                v.now_ms,
                maximize,
            )),
            Some(_) => match pruner::decide(&pruner_spec, maximize, view, &views) {
                Verdict::Continue => None,
                Verdict::Promote { rungs } => {
                    let mut n = t.clone();
                    n.rung = rungs;
                    n.resource = j.values.last().map_or(0, |x| x.resource);
                    out.push(Action::Update(n));
                    None
                }
                Verdict::Prune { reason } => {
                    out.push(Action::CancelJob { job_id: t.job_id.clone(), why: reason.clone() });
                    Some(ended(t, TrialState::Pruned, &j.values, reason, v.now_ms, maximize))
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
    let all: Vec<Trial> = s.trials.iter().map(trial).collect();
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

    // New trials.
    let used: u64 = all
        .iter()
        .map(|t| {
            if terminal(t) {
                t.resource
            } else {
                v.jobs.get(&t.index).and_then(|j| j.values.last()).map_or(0, |x| x.resource)
            }
        })
        .sum();
    let resource_left = spec.max_resource == 0 || used < spec.max_resource;
    let history: Vec<Observation> = all
        .iter()
        .filter(|t| terminal(t) && t.has_value && !t.value.is_nan())
        .filter_map(|t| {
            let params: Params = serde_json::from_str(&t.params_json).ok()?;
            Some(Observation { params, loss: if maximize { -t.value } else { t.value } })
        })
        .collect();
    let mut launches = Vec::new();
    let mut exhausted = !resource_left;
    let searcher = searcher::for_spec(&spec);
    let mut index = s.trials.len() as u32;
    while resource_left && index < spec.max_trials && still_running + (launches.len() as u32) < spec.max_concurrent {
        let params = match searcher.suggest(&spec, index, &history) {
            Ok(Some(p)) => p,
            Ok(None) => {
                exhausted = true;
                break;
            }
            Err(e) => return finish_now(out, &all, s, v, SweepState::Failed, format!("searcher: {e}")),
        };
        let job = match aidos_api::sweep::trial_spec(&spec, &s.id, index, &params) {
            Ok(j) => j,
            Err(e) => return finish_now(out, &all, s, v, SweepState::Failed, format!("trial {index}: {e}")),
        };
        let params_json = serde_json::to_string(&params).unwrap_or_default();
        launches.push(NewTrial { index, params_json, bracket: index % brackets, job });
        index += 1;
    }
    let no_more = exhausted || index >= spec.max_trials;
    if !launches.is_empty() {
        out.push(Action::Launch(launches));
    } else if no_more && still_running == 0 {
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
    for t in all.iter().filter(|t| !terminal(t)) {
        let values = v.jobs.get(&t.index).map(|j| j.values.clone()).unwrap_or_default();
        out.push(Action::Update(ended(t, TrialState::Cancelled, &values, reason.clone(), v.now_ms, maximize)));
        out.push(Action::CancelJob { job_id: t.job_id.clone(), why: reason.clone() });
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
        SweepView { sweep: s, jobs: BTreeMap::new(), orphan: None, now_ms: 1000 }
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
}
