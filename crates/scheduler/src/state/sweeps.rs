//! The sweeps domain: every sweep (its spec, state and best trial) in table `Rows` under `w/<sweep id>`, and each
//! trial in its own row `t/<sweep id>/<index>` (so a trial's update rewrites one small row, not the sweep).
//!
//! Invariants:
//! - Sweep ids are `sweep-1`, `sweep-2`, ... in creation order; a retried creation with the same request id
//!   answers the first sweep.
//! - A sweep's trials are `0..n` with no gap: [`AddTrialsV1`] records trial `i` only when `i == n` and skips a
//!   trial already recorded (the leader's proposals are idempotent), and never records one past `max_trials`.
//! - A trial's update applies only while the trial runs or is paused (promotion ASHA), and a sweep ends once: a late
//!   update changes nothing. A paused trial runs again only as a resume, one rung up, with its new job.
//!
//! Limits: a trial keeps at most `crate::sweep::plan::MAX_VALUES_PER_TRIAL` intermediate values.

use std::collections::BTreeMap;

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{
    AddTrialsV1, CancelSweepRequest, CommandResultV1, CreateSweepV1, FinishSweepV1, StateSnapshotV1, Sweep, SweepState,
    SweepTrialV1, Trial, TrialState, UpdateTrialV1,
};
use prost::Message;

use super::{Dirty, Domain, JobsState, Refusal, RowKind, Rows, Table, bad, not_found, refuse};
use crate::sweep::plan::MAX_VALUES_PER_TRIAL;

const SWEEP_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "w/", snapshot_field: 13 };
const TRIAL_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "t/", snapshot_field: 14 };

/// The key a sweep's `request_id` is remembered under: per project, as jobs' (`jobs::idempotency_key`).
fn sweep_key_of(s: &Sweep) -> String {
    let project = s.spec.as_ref().and_then(|x| x.trial.as_ref()).map_or("", |t| t.project.as_str());
    super::jobs::idempotency_key(project, &s.request_id)
}

pub fn sweep_key(id: &str) -> String {
    format!("w/{id}")
}
pub fn trial_key(id: &str, index: u32) -> String {
    format!("t/{id}/{index}")
}

/// Sweeps by id, with their trials in `Sweep.trials` (stored apart, see the module doc).
#[derive(Debug, Default, Clone)]
pub struct SweepsState {
    pub sweeps: BTreeMap<String, Sweep>,
    pub request_ids: BTreeMap<String, String>,
}

fn sweep_seq(id: &str) -> u64 {
    id.strip_prefix("sweep-").and_then(|n| n.parse().ok()).unwrap_or(0)
}

impl SweepsState {
    /// Sweeps in creation order.
    pub fn ordered(&self) -> Vec<&Sweep> {
        let mut v: Vec<&Sweep> = self.sweeps.values().collect();
        v.sort_by_key(|s| sweep_seq(&s.id));
        v
    }

    fn insert_trial(&mut self, sweep_id: &str, t: Trial) {
        let s = self
            .sweeps
            .entry(sweep_id.to_string())
            .or_insert_with(|| Sweep { id: sweep_id.into(), ..Default::default() });
        let i = t.index as usize;
        if s.trials.len() <= i {
            s.trials.resize_with(i + 1, Trial::default);
        }
        s.trials[i] = t;
    }

    fn create(&mut self, c: &CreateSweepV1, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let mut s = c.sweep.clone().ok_or_else(|| bad("sweep", "missing"))?;
        if !s.request_id.is_empty()
            && let Some(id) = self.request_ids.get(&sweep_key_of(&s))
            && let Some(existing) = self.sweeps.get(id)
        {
            return Ok(CommandResultV1 { sweep: Some(existing.clone()), ..Default::default() });
        }
        let spec = s.spec.as_ref().ok_or_else(|| bad("spec", "missing"))?;
        aidos_api::sweep::validate_sweep(spec).map_err(|e| bad(&e.field, e.reason))?;
        let next = self.sweeps.keys().map(|k| sweep_seq(k)).max().unwrap_or(0) + 1;
        s.id = format!("sweep-{next}");
        s.state = SweepState::Running as i32;
        s.created_at_ms = now;
        s.trials.clear();
        s.best_trial = None;
        if !s.request_id.is_empty() {
            self.request_ids.insert(sweep_key_of(&s), s.id.clone());
        }
        dirty.mark(Table::Rows, sweep_key(&s.id));
        self.sweeps.insert(s.id.clone(), s.clone());
        Ok(CommandResultV1 { sweep: Some(s), ..Default::default() })
    }

    fn add_trials(&mut self, c: &AddTrialsV1, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let s = self.sweeps.get_mut(&c.sweep_id).ok_or_else(|| not_found(format!("sweep {} not found", c.sweep_id)))?;
        if s.state != SweepState::Running as i32 {
            return Err(refuse(tonic::Code::FailedPrecondition, format!("sweep {} has ended", s.id)));
        }
        let max = s.spec.as_ref().map_or(0, |x| x.max_trials);
        for t in &c.trials {
            let n = s.trials.len() as u32;
            if t.index < n {
                continue;
            }
            if t.index > n {
                return Err(bad("trials", format!("trial {} would leave a gap after trial {}", t.index, n)));
            }
            if t.index >= max {
                return Err(bad("trials", format!("trial {} is past max_trials {max}", t.index)));
            }
            let mut t = t.clone();
            t.state = TrialState::Running as i32;
            t.started_at_ms = now;
            dirty.mark(Table::Rows, trial_key(&s.id, t.index));
            s.trials.push(t);
        }
        Ok(CommandResultV1 { sweep: Some(s.clone()), ..Default::default() })
    }

    fn update_trial(&mut self, c: &UpdateTrialV1, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let s = self.sweeps.get_mut(&c.sweep_id).ok_or_else(|| not_found(format!("sweep {} not found", c.sweep_id)))?;
        let new = c.trial.as_ref().ok_or_else(|| bad("trial", "missing"))?;
        let Some(t) = s.trials.get_mut(new.index as usize) else {
            return Err(not_found(format!("sweep {} has no trial {}", c.sweep_id, new.index)));
        };
        let (running, paused) = (TrialState::Running as i32, TrialState::Paused as i32);
        if t.state != running && t.state != paused {
            // Ended once: a late or repeated update changes nothing.
            return Ok(CommandResultV1::default());
        }
        // A paused trial runs again only as a resume: one rung up, as its new job. An update naming an earlier rung
        // than the trial's is stale (a resume already happened).
        let resume = t.state == paused && new.state == running && new.rung == t.rung + 1 && !new.job_id.is_empty();
        if new.rung < t.rung || (t.state == paused && new.state == running && !resume) {
            return Ok(CommandResultV1::default());
        }
        let mut n = new.clone();
        // What identifies the trial never changes; its job only with a resume.
        n.params_json = t.params_json.clone();
        if !resume {
            n.job_id = t.job_id.clone();
        }
        n.started_at_ms = t.started_at_ms;
        n.bracket = t.bracket;
        let keep = n.values.len().saturating_sub(MAX_VALUES_PER_TRIAL);
        n.values.drain(..keep);
        *t = n;
        dirty.mark(Table::Rows, trial_key(&s.id, new.index));
        Ok(CommandResultV1::default())
    }

    fn finish(&mut self, c: &FinishSweepV1, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let s = self.sweeps.get_mut(&c.sweep_id).ok_or_else(|| not_found(format!("sweep {} not found", c.sweep_id)))?;
        if s.state == SweepState::Running as i32 {
            s.state = c.state;
            s.reason = c.reason.clone();
            s.best_trial = c.best_trial;
            s.best_model = c.best_model.clone();
            s.finished_at_ms = now;
            dirty.mark(Table::Rows, sweep_key(&s.id));
        }
        Ok(CommandResultV1 { sweep: Some(s.clone()), ..Default::default() })
    }

    fn cancel(&mut self, c: &CancelSweepRequest, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let s = self.sweeps.get_mut(&c.sweep_id).ok_or_else(|| not_found(format!("sweep {} not found", c.sweep_id)))?;
        if s.state == SweepState::Running as i32 {
            s.state = SweepState::Cancelled as i32;
            s.reason = "cancelled by user".into();
            s.finished_at_ms = now;
            dirty.mark(Table::Rows, sweep_key(&s.id));
        }
        Ok(CommandResultV1 { sweep: Some(s.clone()), ..Default::default() })
    }
}

impl Rows for SweepsState {
    const ROWS: &'static [RowKind] = &[SWEEP_ROWS, TRIAL_ROWS];

    fn row(&self, _table: Table, key: &str) -> Option<Vec<u8>> {
        if let Some(id) = key.strip_prefix("w/") {
            let s = self.sweeps.get(id)?;
            return Some(Sweep { trials: Vec::new(), ..s.clone() }.encode_to_vec());
        }
        let (id, i) = key.strip_prefix("t/")?.rsplit_once('/')?;
        let t = self.sweeps.get(id)?.trials.get(i.parse::<usize>().ok()?)?;
        Some(SweepTrialV1 { sweep_id: id.into(), trial: Some(t.clone()) }.encode_to_vec())
    }

    fn load_row(&mut self, _table: Table, key: &str, bytes: &[u8]) -> Result<(), prost::DecodeError> {
        if key.starts_with("w/") {
            let s = Sweep::decode(bytes)?;
            self.load_sweep(s);
        } else if key.starts_with("t/") {
            let t = SweepTrialV1::decode(bytes)?;
            self.insert_trial(&t.sweep_id, t.trial.unwrap_or_default());
        }
        Ok(())
    }

    fn keys(&self) -> Vec<(Table, String)> {
        let mut v = Vec::new();
        for s in self.sweeps.values() {
            v.push((Table::Rows, sweep_key(&s.id)));
            v.extend(s.trials.iter().map(|t| (Table::Rows, trial_key(&s.id, t.index))));
        }
        v
    }

    fn snapshot(&self, out: &mut StateSnapshotV1) {
        for s in self.sweeps.values() {
            out.sweeps.push(Sweep { trials: Vec::new(), ..s.clone() });
            out.sweep_trials
                .extend(s.trials.iter().map(|t| SweepTrialV1 { sweep_id: s.id.clone(), trial: Some(t.clone()) }));
        }
    }

    fn restore(&mut self, s: &mut StateSnapshotV1) {
        for sw in std::mem::take(&mut s.sweeps) {
            self.load_sweep(sw);
        }
        for t in std::mem::take(&mut s.sweep_trials) {
            self.insert_trial(&t.sweep_id, t.trial.unwrap_or_default());
        }
    }
}

impl SweepsState {
    /// A sweep row read back (its trials may arrive before or after it).
    fn load_sweep(&mut self, s: Sweep) {
        if !s.request_id.is_empty() {
            self.request_ids.insert(sweep_key_of(&s), s.id.clone());
        }
        let trials = self.sweeps.remove(&s.id).map(|x| x.trials).unwrap_or_default();
        self.sweeps.insert(s.id.clone(), Sweep { trials, ..s });
    }
}

impl Domain for SweepsState {
    fn apply(
        &mut self,
        cmd: &Command,
        now: i64,
        _jobs: &JobsState,
        dirty: &mut Dirty,
    ) -> Option<Result<CommandResultV1, Refusal>> {
        Some(match cmd {
            Command::CreateSweep(c) => self.create(c, now, dirty),
            Command::AddTrials(c) => self.add_trials(c, now, dirty),
            Command::UpdateTrial(c) => self.update_trial(c, dirty),
            Command::FinishSweep(c) => self.finish(c, now, dirty),
            Command::CancelSweep(c) => self.cancel(c, now, dirty),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ClusterState;
    use aidos_api::v1::CommandV1;

    fn apply(st: &mut ClusterState, c: Command) -> CommandResultV1 {
        st.apply(&CommandV1 { now_ms: 5, command: Some(c) }, &mut Dirty::default())
    }

    fn spec() -> aidos_api::v1::SweepSpec {
        aidos_api::sweep::parse_toml(
            "[sweep]\nmetric = \"y\"\nmax_trials = 2\n[sweep.params]\nx = { uniform = [0.0, 1.0] }\n[trial]\nprocess = { executable = \"/bin/true\" }\n",
        )
        .unwrap()
    }

    fn trial(i: u32) -> Trial {
        Trial { index: i, job_id: format!("job-{i}"), ..Default::default() }
    }

    #[test]
    fn trials_are_recorded_once_in_order_and_within_the_budget() {
        let mut st = ClusterState::default();
        let create = || {
            Command::CreateSweep(CreateSweepV1 {
                sweep: Some(Sweep { spec: Some(spec()), request_id: "r1".into(), ..Default::default() }),
            })
        };
        let id = apply(&mut st, create()).sweep.unwrap().id;
        assert_eq!(id, "sweep-1");
        assert_eq!(apply(&mut st, create()).sweep.unwrap().id, "sweep-1", "idempotent by request id");
        let add = |ts: Vec<Trial>| Command::AddTrials(AddTrialsV1 { sweep_id: id.clone(), trials: ts });
        assert!(apply(&mut st, add(vec![trial(1)])).error.contains("gap"));
        apply(&mut st, add(vec![trial(0)]));
        apply(&mut st, add(vec![trial(0), trial(1)]));
        assert_eq!(st.sweeps.sweeps[&id].trials.len(), 2, "a repeated trial is skipped");
        assert!(apply(&mut st, add(vec![trial(2)])).error.contains("max_trials"));
        // A trial ends once.
        let end = |state: TrialState, v: f64| {
            Command::UpdateTrial(UpdateTrialV1 {
                sweep_id: id.clone(),
                trial: Some(Trial { index: 0, state: state as i32, value: v, has_value: true, ..Default::default() }),
            })
        };
        apply(&mut st, end(TrialState::Pruned, 0.5));
        apply(&mut st, end(TrialState::Completed, 0.9));
        let t0 = &st.sweeps.sweeps[&id].trials[0];
        assert_eq!((t0.state, t0.value, t0.job_id.as_str()), (TrialState::Pruned as i32, 0.5, "job-0"));
        // Snapshot round trip keeps trials with their sweep.
        let back = ClusterState::from_snapshot(st.to_snapshot());
        assert_eq!(back.sweeps.sweeps[&id], st.sweeps.sweeps[&id]);
        // Rows round trip, trials loaded before their sweep.
        let mut rows = SweepsState::default();
        let mut keys = st.sweeps.keys();
        keys.reverse();
        for (t, k) in keys {
            rows.load_row(t, &k, &st.sweeps.row(t, &k).unwrap()).unwrap();
        }
        assert_eq!(rows.sweeps[&id], st.sweeps.sweeps[&id]);
    }

    #[test]
    fn a_paused_trial_runs_again_only_as_a_resume_one_rung_up() {
        let mut st = ClusterState::default();
        let create = Command::CreateSweep(CreateSweepV1 {
            sweep: Some(Sweep { spec: Some(spec()), request_id: "r1".into(), ..Default::default() }),
        });
        let id = apply(&mut st, create).sweep.unwrap().id;
        apply(&mut st, Command::AddTrials(AddTrialsV1 { sweep_id: id.clone(), trials: vec![trial(0)] }));
        let update = |state: TrialState, rung: u32, job: &str| {
            Command::UpdateTrial(UpdateTrialV1 {
                sweep_id: id.clone(),
                trial: Some(Trial { index: 0, state: state as i32, rung, job_id: job.into(), ..Default::default() }),
            })
        };
        let now = |st: &ClusterState| {
            let t = &st.sweeps.sweeps[&id].trials[0];
            (TrialState::try_from(t.state).unwrap(), t.rung, t.job_id.clone())
        };
        apply(&mut st, update(TrialState::Paused, 0, "job-x"));
        assert_eq!(now(&st), (TrialState::Paused, 0, "job-0".into()), "a pause keeps the job");
        // Running again without moving up a rung, or without a job: refused quietly.
        apply(&mut st, update(TrialState::Running, 0, "job-9"));
        apply(&mut st, update(TrialState::Running, 1, ""));
        assert_eq!(now(&st), (TrialState::Paused, 0, "job-0".into()));
        // The resume: one rung up, its new job.
        apply(&mut st, update(TrialState::Running, 1, "job-5"));
        assert_eq!(now(&st), (TrialState::Running, 1, "job-5".into()));
        // A stale update from before the resume changes nothing; the new rung's updates keep the new job.
        apply(&mut st, update(TrialState::Paused, 0, ""));
        assert_eq!(now(&st), (TrialState::Running, 1, "job-5".into()));
        apply(&mut st, update(TrialState::Completed, 1, "job-0"));
        assert_eq!(now(&st), (TrialState::Completed, 1, "job-5".into()));
    }

    #[test]
    fn a_bad_spec_is_refused_naming_the_field() {
        let mut st = ClusterState::default();
        let mut s = spec();
        s.max_trials = 0;
        let r = apply(
            &mut st,
            Command::CreateSweep(CreateSweepV1 { sweep: Some(Sweep { spec: Some(s), ..Default::default() }) }),
        );
        assert!(r.error.contains("sweep.max_trials"), "{}", r.error);
        assert!(st.sweeps.sweeps.is_empty());
    }
}
