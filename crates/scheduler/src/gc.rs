//! Garbage collection of unreferenced blobs, so that the blob store stays bounded on a control plane that runs for
//! months: which listed blobs may go ([`collectable`], pure, over the references `queries::referenced_blobs` finds
//! in the applied state), and [`RefGate`], which orders the collector's deletes against the leader's commits of new
//! references. The leader runs the collector (`loops::run_blob_gc`) over its node's blob store, every
//! `SchedulerConfig::blob_gc_interval`; followers never delete.
//!
//! # Why a referenced blob is never deleted
//! A round: list the store; take `now`; read the state's references; the candidates are the listed blobs that are
//! unreferenced and whose modified time (last put or touch) is before `now - grace`. Then, batch by batch: claim
//! them in the gate, read the references again, and delete each still-unreferenced one with
//! `BlobStore::delete_if_older(now - grace)`, then release the batch.
//! 1. Writers reference what they put soon: aidos_blob's refresh rule, *a blob must be referenced within
//!    `grace - refresh_after` of its last put*. A put refreshes the modified time even of bytes the store already
//!    holds (the blob service's `Has` and `Upload` refresh what they report present), so a reference committed after
//!    the round read the state names a blob modified after `now - grace`, which the round does not delete.
//! 2. `delete_if_older` checks the modified time again at the delete, so a put between the listing and the delete
//!    keeps its blob (atomically for a local directory; for S3 a refresh landing between its `HEAD` and `DELETE` is
//!    lost, which 3 turns into a refusal).
//! 3. [`RefGate`]: every leader commit that adds references (dataset versions, checkpoints, model versions,
//!    artifacts) pins its blob ids from before its proposal until it has applied. The collector claims a batch
//!    (skipping pinned ids) *before* its second read of the state, and a commit waits while the collector holds
//!    any of its ids. So a commit either applied before that read (its blobs are seen referenced), or was pinned
//!    (its blobs are not claimed), or pins after the batch is released, and then a blob the round deleted is
//!    remembered (for `grace`) and the commit is refused — "upload it again" — unless the blob is back. A committed
//!    reference never names a blob the collector deleted.
//!
//! Limits: the gate is leader memory. A deposed leader stops collecting before its next batch (it checks that it
//! still leads), so at most one batch of its deletes overlaps a new leader's commits; those only matter to a writer
//! that breaks the rule of 1. The grace period must be far longer than such a batch, than clock skew between the
//! store and the leader, and than S3's `refresh_after` (checked at start: [`check_grace`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aidos_blob::{BlobId, BlobInfo, BlobStore};

use crate::error::SchedulerError;

/// Default of `SchedulerConfig::blob_gc_interval`: 10 minutes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);
/// Default of `SchedulerConfig::blob_gc_grace`: 1 hour.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// Blobs claimed, re-checked and deleted at once: bounds how long a commit can wait for the collector.
pub const BATCH: usize = 1000;
/// Longest a commit waits for the collector to release one of its blobs before it is refused as unavailable.
const PIN_WAIT: Duration = Duration::from_secs(60);

/// The listed blobs the collector may delete at `now`: unreferenced, and last put or touched before `now - grace`.
pub fn collectable(listed: &[BlobInfo], referenced: &HashSet<String>, now: SystemTime, grace: Duration) -> Vec<BlobId> {
    let Some(cutoff) = now.checked_sub(grace) else { return Vec::new() };
    listed.iter().filter(|b| b.modified < cutoff && !referenced.contains(b.id.as_str())).map(|b| b.id.clone()).collect()
}

/// The blob ids (64 lowercase hex digits, delimited by anything else) that free text names.
pub fn blob_ids_in(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_digit() || ('a'..='f').contains(&c))).filter(|t| t.len() == 64)
}

/// A configuration the collector's safety argument holds for: a grace period of at least a second, and longer than
/// the store's `refresh_after` (S3), else a re-pushed old blob could be collected before it is referenced.
pub fn check_grace(grace: Duration, refresh_after: Option<Duration>) -> Result<(), String> {
    if grace < Duration::from_secs(1) {
        return Err(format!("the blob GC grace period must be at least 1 s, not {grace:?}"));
    }
    match refresh_after {
        Some(r) if r >= grace => Err(format!(
            "the blob GC grace period ({}s) must be longer than the S3 store's refresh_after ({}s): a blob must be \
             referenced within grace - refresh_after of its upload",
            grace.as_secs(),
            r.as_secs()
        )),
        _ => Ok(()),
    }
}

/// Orders the collector's deletes against commits of new references (see the module docs, point 3).
#[derive(Default)]
pub struct RefGate {
    inner: Mutex<Gate>,
    released: tokio::sync::Notify,
}

#[derive(Default)]
struct Gate {
    /// Blob ids commits hold, with how many commits hold each.
    pinned: HashMap<String, usize>,
    /// Blob ids the collector is re-checking or deleting now.
    claimed: HashSet<String>,
    /// Blob ids the collector deleted, and until when that is remembered.
    deleted: HashMap<String, Instant>,
}

/// A commit's hold on its blob ids; dropping it (after the commit applied, or failed) releases them.
pub struct Pin<'a> {
    gate: &'a RefGate,
    ids: Vec<String>,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut g = self.gate.lock();
        for id in &self.ids {
            if let Some(n) = g.pinned.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    g.pinned.remove(id);
                }
            }
        }
    }
}

impl RefGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The collector takes `candidates` for re-checking and deleting, except those a commit holds.
    pub fn claim(&self, candidates: &[BlobId]) -> Vec<BlobId> {
        let mut g = self.lock();
        let claimed: Vec<BlobId> =
            candidates.iter().filter(|id| !g.pinned.contains_key(id.as_str())).cloned().collect();
        g.claimed.extend(claimed.iter().map(|id| id.to_string()));
        claimed
    }

    /// The collector is done with `claimed`; of those, `deleted` are remembered for `remember`.
    pub fn release(&self, claimed: &[BlobId], deleted: &[BlobId], remember: Duration) {
        {
            let mut g = self.lock();
            let now = Instant::now();
            g.deleted.retain(|_, until| *until > now);
            for id in claimed {
                g.claimed.remove(id.as_str());
            }
            for id in deleted {
                g.deleted.insert(id.to_string(), now + remember);
            }
        }
        self.released.notify_waiters();
    }

    /// Holds `ids` for a commit that references them, until the returned pin drops: waits while the collector
    /// holds any of them, and refuses the commit when the collector deleted one that `store` does not hold again.
    /// (Not an `async fn`: the ids are collected before the future is made, so an iterator borrowing the request
    /// does not become part of the caller's future.)
    pub fn pin<'a, 's>(
        &'a self,
        ids: impl IntoIterator<Item = &'s str>,
        store: Option<&Arc<dyn BlobStore>>,
    ) -> impl std::future::Future<Output = Result<Pin<'a>, SchedulerError>> + Send + 'a {
        let mut ids: Vec<String> = ids.into_iter().filter(|s| !s.is_empty()).map(str::to_string).collect();
        ids.sort_unstable();
        ids.dedup();
        self.pin_ids(ids, store.cloned())
    }

    async fn pin_ids(&self, ids: Vec<String>, store: Option<Arc<dyn BlobStore>>) -> Result<Pin<'_>, SchedulerError> {
        let deadline = tokio::time::Instant::now() + PIN_WAIT;
        let deleted = loop {
            // Registered before the check, so a release between the check and the wait is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut g = self.lock();
                if !ids.iter().any(|id| g.claimed.contains(id)) {
                    for id in &ids {
                        *g.pinned.entry(id.clone()).or_default() += 1;
                    }
                    let now = Instant::now();
                    break ids
                        .iter()
                        .filter(|id| g.deleted.get(*id).is_some_and(|u| *u > now))
                        .cloned()
                        .collect::<Vec<_>>();
                }
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(SchedulerError::Unavailable(
                    "blob garbage collection is deleting a blob this names; retry".into(),
                ));
            }
        };
        let pin = Pin { gate: self, ids };
        if deleted.is_empty() {
            return Ok(pin);
        }
        let Some(store) = store else { return Ok(pin) };
        let missing = tokio::task::spawn_blocking(move || {
            deleted.into_iter().find(|id| !BlobId::parse(id).and_then(|b| store.contains(&b)).unwrap_or(false))
        })
        .await
        .map_err(|e| SchedulerError::Storage(format!("blob store task: {e}")))?;
        match missing {
            None => Ok(pin),
            Some(id) => Err(SchedulerError::Stale(format!(
                "blob {id} was garbage-collected before it was referenced (unreferenced for longer than the blob GC \
                 grace period since its upload); upload it again and retry"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queries::referenced_blobs;
    use crate::state::{ClusterState, Dirty};
    use aidos_api::v1::command_v1::Command;
    use aidos_api::v1::*;

    fn id(n: u8) -> String {
        BlobId::of(&[n]).to_string()
    }

    fn apply(st: &mut ClusterState, c: Command) {
        let r = st.apply(&CommandV1 { now_ms: 1, command: Some(c) }, &mut Dirty::default());
        assert!(r.error.is_empty(), "{r:?}");
    }

    /// A state naming blobs 1..=12 in every kind of reference (and nothing else).
    fn state() -> ClusterState {
        let mut st = ClusterState::default();
        let chunk = |n, rows| ChunkRef { blob: id(n), rows, bytes: 1 };
        apply(
            &mut st,
            Command::CommitDataset(CommitDatasetRequest {
                manifest: Some(DatasetManifest {
                    name: "d".into(),
                    rows: 2,
                    feature_chunks: vec![chunk(1, 1), chunk(2, 1)],
                    label_chunks: vec![chunk(3, 2)],
                    row_hashes_blob: id(4),
                    ..Default::default()
                }),
            }),
        );
        let mut m = ModelVersion { name: "m".into(), weights_blob: id(5), ..Default::default() };
        m.artifacts.insert("onnx".into(), id(6));
        apply(&mut st, Command::RegisterModel(RegisterModelRequest { model: Some(m), ..Default::default() }));
        apply(
            &mut st,
            Command::SetArtifact(SetArtifactRequest { name: "m".into(), version: 1, key: "int8".into(), blob: id(7) }),
        );
        // Runs, edge rows and job attempts are set directly: their commands need workers, fencing and signatures.
        st.registry.runs.insert(
            "job-1.1".into(),
            Run {
                id: "job-1.1".into(),
                checkpoints: vec![CheckpointRef { blob: id(8), ..Default::default() }],
                ..Default::default()
            },
        );
        st.edge
            .deployments
            .insert("e".into(), EdgeDeployment { name: "e".into(), artifact: id(9), ..Default::default() });
        st.edge.devices.insert(
            "cam".into(),
            EdgeDevice {
                name: "cam".into(),
                status: Some(EdgeStatus { artifact: id(10), ..Default::default() }),
                ..Default::default()
            },
        );
        let spec = JobSpec {
            payload: Some(job_spec::Payload::Process(ProcessSpec {
                executable: "x".into(),
                args: vec![format!("--in={}", id(11))],
                ..Default::default()
            })),
            ..Default::default()
        };
        let attempt = Attempt { log_blob: id(12), ..Default::default() };
        st.jobs.insert_job(Job {
            id: "job-1".into(),
            spec: Some(spec),
            tasks: vec![Task { attempts: vec![attempt], ..Default::default() }],
            ..Default::default()
        });
        st
    }

    #[test]
    fn every_kind_of_reference_is_found() {
        let st = state();
        let want: HashSet<String> = (1..=12).map(id).collect();
        assert_eq!(referenced_blobs(&st), want);
        // A compacted job's blobs are no longer referenced; its run's checkpoint still is.
        let mut st = st;
        st.jobs.by_id.remove("job-1");
        let r = referenced_blobs(&st);
        assert!(!r.contains(&id(11)) && !r.contains(&id(12)) && r.contains(&id(8)));
    }

    #[test]
    fn only_old_unreferenced_blobs_are_collectable() {
        let now = SystemTime::now();
        let grace = Duration::from_secs(3600);
        let info = |n, age_s| BlobInfo {
            id: BlobId::parse(&id(n)).unwrap(),
            size: 1,
            modified: now - Duration::from_secs(age_s),
        };
        let listed = vec![info(1, 7200), info(2, 7200), info(3, 60), info(4, 3600), info(5, 3601)];
        let referenced: HashSet<String> = [id(1)].into();
        let got: Vec<String> = collectable(&listed, &referenced, now, grace).iter().map(|b| b.to_string()).collect();
        assert_eq!(got, vec![id(2), id(5)], "referenced (1), young (3) and exactly-at-the-cutoff (4) stay");
        assert!(collectable(&listed, &referenced, SystemTime::UNIX_EPOCH, grace).is_empty());
        // A blob modified in the future (clock skew) is young.
        let future = vec![BlobInfo { modified: now + grace, ..info(6, 0) }];
        assert!(collectable(&future, &HashSet::new(), now, grace).is_empty());
    }

    #[test]
    fn blob_ids_in_free_text() {
        let a = id(1);
        let text = format!("--data={a} {a}0 x{}y", &a[..63]);
        assert_eq!(blob_ids_in(&text).collect::<Vec<_>>(), vec![a.as_str()]);
        assert_eq!(blob_ids_in(&a.to_uppercase()).count(), 0);
    }

    #[test]
    fn grace_must_exceed_refresh_after() {
        assert!(check_grace(Duration::from_secs(3600), Some(Duration::from_secs(600))).is_ok());
        assert!(check_grace(Duration::from_secs(2), None).is_ok());
        assert!(check_grace(Duration::ZERO, None).is_err());
        let e = check_grace(Duration::from_secs(600), Some(Duration::from_secs(600))).unwrap_err();
        assert!(e.contains("refresh_after"), "{e}");
    }

    #[tokio::test]
    async fn the_gate_orders_commits_against_the_collector() {
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn BlobStore> = Arc::new(aidos_blob::LocalDirStore::open(d.path()).unwrap());
        let gate = RefGate::default();
        let (a, b) = (BlobId::of(b"a"), BlobId::of(b"b"));
        let hour = Duration::from_secs(3600);

        // A pinned blob is not claimed.
        let pin = gate.pin([a.as_str()], Some(&store)).await.unwrap();
        assert_eq!(gate.claim(&[a.clone(), b.clone()]), vec![b.clone()]);
        drop(pin);
        // A commit naming a claimed blob waits for the release; the collector deleted it: refused.
        let waiting = tokio::spawn({
            let gate = Arc::new(RefGate::default());
            let g2 = gate.clone();
            let store = store.clone();
            let b = b.clone();
            let claimed = g2.claim(std::slice::from_ref(&b));
            assert_eq!(claimed.len(), 1);
            let commit = async move {
                let r = gate.pin([b.as_str()], Some(&store)).await.map(|_| ());
                r.map_err(|e| e.to_string())
            };
            let collector = async move {
                tokio::task::yield_now().await;
                g2.release(&claimed, &claimed, hour);
            };
            async move { tokio::join!(commit, collector).0 }
        });
        let refused = waiting.await.unwrap().unwrap_err();
        assert!(refused.contains("garbage-collected") && refused.contains(b.as_str()), "{refused}");
        // Once the blob is back (uploaded again), a commit naming it goes through.
        gate.release(std::slice::from_ref(&b), std::slice::from_ref(&b), hour);
        assert!(gate.pin([b.as_str()], Some(&store)).await.is_err());
        assert_eq!(store.put(b"b").unwrap(), b);
        assert!(gate.pin([b.as_str()], Some(&store)).await.is_ok());
        // Released without a delete: no refusal.
        let claimed = gate.claim(std::slice::from_ref(&a));
        gate.release(&claimed, &[], hour);
        assert!(gate.pin([a.as_str()], Some(&store)).await.is_ok());
    }
}
