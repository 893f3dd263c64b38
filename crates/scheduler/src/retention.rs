//! Retention of finished jobs, so that the state and its snapshots stay bounded on a control plane that runs for
//! months: which finished jobs the leader compacts ([`select`], pure), and which leader-local task log files are
//! left over once their job is gone ([`stale_log_files`], pure).
//!
//! Policy ([`RetentionPolicy`]): at most `max_finished_jobs` finished (succeeded, failed, cancelled) jobs are kept —
//! the most recently finished — and none that finished more than `max_age` ago. A job that is not finished is never
//! chosen. A job's end is its last update (`Job.updated_at_ms`, set by the transition that finished it).
//!
//! What compaction removes and keeps: the `CompactJobs` command removes the jobs' rows (tasks, attempts, idempotency
//! keys; see `state::jobs`); runs and model versions are the registry's and stay, and so do the blobs they name.
//! The blobs only a compacted job named (its attempts' output blobs) become unreferenced, and the blob collector
//! (`gc`) takes them after its grace period.
//!
//! Pinned: failed replica jobs of a deployment's current generation are the reconciler's crash-loop evidence
//! (`reconcile`), so [`crate::queries::finished_jobs`] leaves them out of the candidates (a crash loop stops after a
//! few, so they are few). So are the last jobs of paused sweep trials (promotion ASHA resumes a trial from its last
//! job's checkpoint, found through that job; at most `max_trials` per sweep).
//!
//! The leader (`loops::run_retention`) proposes the choice in commands of at most [`MAX_IDS_PER_COMMAND`] ids.
//! Task logs: the leader-local `<data_dir>/task-logs/<job>.log` files are not replicated, so each node deletes its own
//! lazily, in the same loop, on leaders and followers alike: a `job-<N>.log` whose job is absent from the applied
//! state while N is at most the last job sequence number was compacted (ids are never reused), and goes.

use std::time::Duration;

/// Most job ids in one `CompactJobs` command (bounds one Raft entry).
pub const MAX_IDS_PER_COMMAND: usize = 1000;

/// How many finished jobs the state keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// At most this many finished jobs are kept (the most recently finished).
    pub max_finished_jobs: usize,
    /// A finished job is kept at most this long after it finished.
    pub max_age: Duration,
}

/// Default of [`RetentionPolicy::max_finished_jobs`].
pub const DEFAULT_MAX_FINISHED_JOBS: usize = 10_000;
/// Default of [`RetentionPolicy::max_age`]: 7 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self { max_finished_jobs: DEFAULT_MAX_FINISHED_JOBS, max_age: DEFAULT_MAX_AGE }
    }
}

/// A finished job as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedJob {
    pub id: String,
    /// Submission order (breaks ties between jobs that finished in the same millisecond).
    pub seq: u64,
    /// When it finished (ms since the epoch, the leader's clock).
    pub ended_ms: i64,
}

/// The finished jobs to compact at `now_ms`, oldest first: every one beyond the newest `max_finished_jobs`, and every
/// one that finished before `now_ms - max_age`.
pub fn select(finished: &[FinishedJob], now_ms: i64, policy: &RetentionPolicy) -> Vec<String> {
    let mut newest_first: Vec<&FinishedJob> = finished.iter().collect();
    newest_first.sort_by_key(|j| std::cmp::Reverse((j.ended_ms, j.seq)));
    let max_age_ms = i64::try_from(policy.max_age.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms.saturating_sub(max_age_ms);
    let mut out: Vec<String> = newest_first
        .into_iter()
        .enumerate()
        .filter(|(i, j)| *i >= policy.max_finished_jobs || j.ended_ms < cutoff)
        .map(|(_, j)| j.id.clone())
        .collect();
    out.reverse();
    out
}

/// The task log files (names in the task-log directory) whose job was compacted: `job-<N>.log` with `N <= last_seq`
/// and no such job in the state (`exists`). Anything else (other names, jobs not yet applied here) is kept.
pub fn stale_log_files<'a>(
    names: impl IntoIterator<Item = &'a str>,
    last_seq: u64,
    exists: impl Fn(&str) -> bool,
) -> Vec<String> {
    names
        .into_iter()
        .filter(|name| {
            let Some(id) = name.strip_suffix(".log") else { return false };
            let Some(seq) = id.strip_prefix("job-").and_then(|n| n.parse::<u64>().ok()) else { return false };
            seq <= last_seq && crate::state::job_id_for_seq(seq) == id && !exists(id)
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(seq: u64, ended_ms: i64) -> FinishedJob {
        FinishedJob { id: format!("job-{seq}"), seq, ended_ms }
    }

    const DAY_MS: i64 = 24 * 3600 * 1000;

    #[test]
    fn keeps_the_newest_within_count_and_age() {
        let policy = RetentionPolicy { max_finished_jobs: 3, max_age: Duration::from_secs(7 * 24 * 3600) };
        let now = 100 * DAY_MS;
        // Finished out of submission order: job-5 ended first.
        let jobs = vec![job(1, now - 5), job(2, now - 4), job(3, now - 3), job(4, now - 2), job(5, now - 10)];
        assert_eq!(select(&jobs, now, &policy), vec!["job-5", "job-1"], "oldest first, beyond the newest 3");
        // Age alone: everything that ended more than 7 days ago, however few.
        let old = vec![job(1, now - 8 * DAY_MS), job(2, now - 6 * DAY_MS), job(3, now - 9 * DAY_MS)];
        let big = RetentionPolicy { max_finished_jobs: 100, ..policy };
        assert_eq!(select(&old, now, &big), vec!["job-3", "job-1"]);
        // Both: count and age together, each job once.
        assert_eq!(select(&old, now, &RetentionPolicy { max_finished_jobs: 1, ..policy }), vec!["job-3", "job-1"]);
        assert_eq!(
            select(&old, now, &RetentionPolicy { max_finished_jobs: 0, ..policy }),
            vec!["job-3", "job-1", "job-2"]
        );
        // Ties in end time: the later submission counts as newer.
        let tie = vec![job(7, now), job(6, now)];
        assert_eq!(select(&tie, now, &RetentionPolicy { max_finished_jobs: 1, ..policy }), vec!["job-6"]);
        // Nothing to do, and extreme policies do not overflow.
        assert!(select(&jobs, now, &RetentionPolicy { max_finished_jobs: 10, ..policy }).is_empty());
        assert!(select(&[], now, &policy).is_empty());
        let forever = RetentionPolicy { max_finished_jobs: usize::MAX, max_age: Duration::MAX };
        assert!(select(&old, i64::MIN, &forever).is_empty());
    }

    /// Through the real state machine (redb rows, snapshots): after submitting and finishing many jobs and
    /// compacting what `select` chooses, the state, a snapshot built from the tables and a reopened store all hold
    /// at most the policy's count of finished jobs; unfinished jobs and runs stay.
    #[tokio::test]
    async fn compaction_bounds_the_state_and_its_snapshots() {
        use crate::queries;
        use crate::store::state_machine::StateMachineStore;
        use aidos_api::v1 as pb;
        use aidos_api::v1::command_v1::Command;
        use openraft::storage::RaftStateMachine;
        use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
        use prost::Message;

        let mut index = 0;
        let mut entry = |now_ms: i64, cmd: Command| {
            index += 1;
            Entry::<crate::raft_types::TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(pb::CommandV1 { now_ms, command: Some(cmd) }),
            }
        };
        let d = tempfile::tempdir().unwrap();
        let db = crate::store::open_db(&d.path().join("a")).unwrap();
        let mut sm = StateMachineStore::open(db.clone(), d.path().join("a/snapshots")).unwrap();
        let shared = sm.shared();
        let (n, keep) = (300u64, 25usize);
        let now = 1_000 * DAY_MS;
        let submit = |i: u64| {
            Command::SubmitJobs(pb::SubmitJobsV1 {
                requests: vec![pb::SubmitRequest {
                    spec: Some(pb::JobSpec { name: format!("j{i}"), ..Default::default() }),
                    request_id: format!("r{i}"),
                }],
            })
        };
        // n jobs, all cancelled (finished) at increasing times, the first 100 more than 7 days ago; then one that
        // stays pending, and a run of job-1 (the registry's, which compaction leaves alone).
        let mut entries = Vec::new();
        for i in 1..=n {
            entries.push(entry(now - 10 * DAY_MS, submit(i)));
            let ended = if i <= 100 { now - 8 * DAY_MS + i as i64 } else { now - DAY_MS + i as i64 };
            let cancel = pb::CancelJobV1 { job_id: format!("job-{i}"), reason: String::new() };
            entries.push(entry(ended, Command::CancelJob(cancel)));
        }
        entries.push(entry(now, submit(n + 1)));
        sm.apply(entries).await.unwrap();
        shared
            .write()
            .unwrap()
            .state
            .registry
            .runs
            .insert("job-1.1".into(), pb::Run { id: "job-1.1".into(), job_id: "job-1".into(), ..Default::default() });

        let policy = RetentionPolicy { max_finished_jobs: keep, max_age: Duration::from_secs(7 * 24 * 3600) };
        let chosen = {
            let a = shared.read().unwrap();
            select(&queries::finished_jobs(&a.state), now, &policy)
        };
        assert_eq!(chosen.len(), n as usize - keep);
        assert_eq!(chosen.first().map(String::as_str), Some("job-1"), "oldest first");
        let batches: Vec<_> = chosen
            .chunks(100)
            .map(|b| entry(now, Command::CompactJobs(pb::CompactJobsV1 { job_ids: b.to_vec() })))
            .collect();
        sm.apply(batches).await.unwrap();

        let finished = |st: &crate::state::ClusterState| queries::finished_jobs(st).len();
        {
            let a = shared.read().unwrap();
            assert_eq!(finished(&a.state), keep);
            assert_eq!(a.state.jobs.by_id.len(), keep + 1, "the pending job stays");
            assert!(a.state.jobs.by_id.contains_key(&format!("job-{}", n + 1)));
            assert_eq!(a.state.jobs.request_ids.len(), keep + 1);
            assert_eq!(a.state.jobs.next_job_seq, n + 1, "ids are never reused");
            assert!(a.state.registry.runs.contains_key("job-1.1"), "runs stay");
            // Again: nothing more to compact.
            assert!(select(&queries::finished_jobs(&a.state), now, &policy).is_empty());
        }
        // A snapshot built from the stored rows holds only the retained jobs.
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let image = pb::StateSnapshotV1::decode(snap.snapshot.into_inner().as_slice()).unwrap();
        assert_eq!(image.jobs.len(), keep + 1);
        assert!(image.jobs.iter().all(|j| j.seq > n - keep as u64), "the newest finished jobs are kept");
        // And so does the store reopened from disk.
        drop(sm);
        let reopened = StateMachineStore::open(db, d.path().join("a/snapshots")).unwrap();
        let shared = reopened.shared();
        let st = &shared.read().unwrap().state;
        assert_eq!((st.jobs.by_id.len(), finished(st)), (keep + 1, keep));
    }

    #[test]
    fn stale_logs_are_those_of_compacted_jobs_only() {
        let names = ["job-1.log", "job-2.log", "job-9.log", "job-01.log", "notes.txt", "job-x.log", ".job-1.log"];
        let stale = stale_log_files(names, 5, |id| id == "job-2");
        assert_eq!(stale, vec!["job-1.log"], "job-2 exists, job-9 is not applied here yet, the rest are not logs");
    }
}
