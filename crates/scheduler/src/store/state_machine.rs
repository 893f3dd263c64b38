//! The state machine: the in-memory [`ClusterState`] that serves reads, backed row by row by redb so that a
//! restarted node comes back with its state (see the durability contract in `store`).

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use aidos_api::v1 as pb;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{BasicNode, EntryPayload, LogId, RaftSnapshotBuilder, StorageIOError, StoredMembership};
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use tokio::sync::watch;

use super::{JOBS, ML, SM_META, WORKERS, any, blocking};
use crate::raft_types::{
    NodeId, SnapshotMeta, StorageError, TypeConfig, opt_log_id_from_pb, opt_log_id_to_pb, snapshot_meta_from_pb,
    snapshot_meta_to_pb, stored_membership_from_pb, stored_membership_to_pb,
};
use crate::state::{ClusterState, Dirty};

/// What has been applied, under one lock so that a snapshot sees state and `last_applied` together.
#[derive(Debug, Default)]
pub struct Applied {
    pub state: ClusterState,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
}

/// Shared, read-mostly view of the applied state. Hold the lock briefly and never across an `.await`.
pub type SharedState = Arc<RwLock<Applied>>;

pub struct StateMachineStore {
    db: Arc<Database>,
    snap_dir: PathBuf,
    applied: SharedState,
    /// Bumped after every applied batch; watchers (placement, worker streams, Watch RPCs) wait on it.
    version: watch::Sender<u64>,
}

/// One write of the state machine: rows to upsert and the metadata, encoded outside the blocking pool.
#[derive(Default)]
struct Rows {
    jobs: Vec<(String, Vec<u8>)>,
    workers: Vec<(String, Vec<u8>)>,
    /// `None`: the row was deleted (a deployment removed).
    ml: Vec<(String, Option<Vec<u8>>)>,
    meta: Vec<(&'static str, Vec<u8>)>,
    replace_all: bool,
}

fn meta_rows(a: &Applied) -> Vec<(&'static str, Vec<u8>)> {
    let counters = pb::StateSnapshotV1 {
        next_job_seq: a.state.next_job_seq,
        next_fencing_token: a.state.next_fencing_token,
        ..Default::default()
    };
    let mut v = vec![
        ("counters", counters.encode_to_vec()),
        ("membership", stored_membership_to_pb(&a.membership).encode_to_vec()),
    ];
    if let Some(l) = opt_log_id_to_pb(&a.last_applied) {
        v.push(("applied", l.encode_to_vec()));
    }
    v
}

fn write_rows(db: &Database, rows: Rows, durability: Durability) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(durability).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    {
        let mut jobs = tx.open_table(JOBS)?;
        let mut workers = tx.open_table(WORKERS)?;
        let mut ml = tx.open_table(ML)?;
        if rows.replace_all {
            jobs.retain(|_, _| false)?;
            workers.retain(|_, _| false)?;
            ml.retain(|_, _| false)?;
        }
        for (k, v) in &rows.ml {
            match v {
                Some(v) => {
                    ml.insert(k.as_str(), v.as_slice())?;
                }
                None => {
                    ml.remove(k.as_str())?;
                }
            }
        }
        for (k, v) in &rows.jobs {
            jobs.insert(k.as_str(), v.as_slice())?;
        }
        for (k, v) in &rows.workers {
            workers.insert(k.as_str(), v.as_slice())?;
        }
        let mut meta = tx.open_table(SM_META)?;
        for (k, v) in &rows.meta {
            meta.insert(*k, v.as_slice())?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Every ML row of the state (after installing a snapshot).
fn all_ml_rows(st: &ClusterState) -> Vec<(String, Option<Vec<u8>>)> {
    use crate::ml_state::{dataset_key, model_key, run_key};
    use crate::serve_state::deployment_key;
    let mut keys: Vec<String> = Vec::new();
    keys.extend(st.datasets.values().flatten().map(|d| dataset_key(&d.name, d.version)));
    keys.extend(st.models.values().flatten().map(|m| model_key(&m.name, m.version)));
    keys.extend(st.runs.keys().map(|r| run_key(r)));
    keys.extend(st.deployments.keys().map(|d| deployment_key(d)));
    keys.extend(st.edge_devices.keys().map(|d| crate::edge_state::device_key(d)));
    keys.extend(st.edge_deployments.keys().map(|d| crate::edge_state::edge_deployment_key(d)));
    keys.into_iter().filter_map(|k| st.ml_row(&k).map(|b| (k, Some(b)))).collect()
}

/// Snapshots live in files beside the redb file (`<data_dir>/snapshots/<id>.snap`, an encoded `StateSnapshotV1`);
/// `SM_META["snapshot"]` names the current one: its length-delimited `SnapshotMetaV1`, then the file name.
/// Keeping tens of megabytes out of redb keeps its single writer (which log appends wait on) free.
fn persist_snapshot(db: &Database, dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<(), redb::Error> {
    let io = |e: std::io::Error| redb::Error::Io(e);
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = format!("{}.snap", meta.snapshot_id);
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(data).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, dir.join(&name)).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    let mut stored = snapshot_meta_to_pb(meta).encode_length_delimited_to_vec();
    stored.extend_from_slice(name.as_bytes());
    // fsynced: this also makes every earlier (non-fsynced) apply durable, which is what lets openraft purge the
    // log up to this snapshot.
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    tx.open_table(SM_META)?.insert("snapshot", stored.as_slice())?;
    tx.commit()?;
    for e in std::fs::read_dir(dir).map_err(io)?.flatten() {
        if e.file_name().to_str().is_some_and(|n| n.ends_with(".snap") && n != name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Builds a snapshot image from a redb read transaction: a consistent MVCC view of the last applied batch, read
/// without the in-memory state lock, so applies go on while it is built. The stored rows are already encoded
/// messages, so the image is their concatenation under `StateSnapshotV1`'s field numbers (no decode/re-encode).
fn image_from_tables(db: &Database) -> Result<(SnapshotMeta, Vec<u8>), redb::Error> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    fn corrupt(what: &'static str) -> impl Fn(prost::DecodeError) -> redb::Error {
        move |e| redb::Error::Corrupted(format!("{what}: {e}"))
    }
    let tx = db.begin_read()?;
    let meta_t = tx.open_table(SM_META)?;
    let mut out = Vec::new();
    let field = |out: &mut Vec<u8>, tag: u32, bytes: &[u8]| {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    };
    let applied_raw = meta_t.get("applied")?.map(|v| v.value().to_vec());
    let membership_raw = meta_t.get("membership")?.map(|v| v.value().to_vec());
    let last_log_id = match &applied_raw {
        Some(b) => opt_log_id_from_pb(&Some(pb::LogIdV1::decode(b.as_slice()).map_err(corrupt("applied"))?))
            .map_err(|e| redb::Error::Corrupted(e.to_string()))?,
        None => None,
    };
    let last_membership = match &membership_raw {
        Some(b) => {
            stored_membership_from_pb(&pb::StoredMembershipV1::decode(b.as_slice()).map_err(corrupt("membership"))?)
                .map_err(|e| redb::Error::Corrupted(e.to_string()))?
        }
        None => StoredMembership::default(),
    };
    if let Some(b) = &applied_raw {
        field(&mut out, 1, b);
    }
    if let Some(b) = &membership_raw {
        field(&mut out, 2, b);
    }
    for r in tx.open_table(JOBS)?.iter()? {
        let (_, v) = r?;
        field(&mut out, 3, v.value());
    }
    for r in tx.open_table(WORKERS)?.iter()? {
        let (_, v) = r?;
        field(&mut out, 4, v.value());
    }
    if let Some(v) = meta_t.get("counters")? {
        let c = pb::StateSnapshotV1::decode(v.value()).map_err(corrupt("counters"))?;
        encode_key(5, WireType::Varint, &mut out);
        encode_varint(c.next_job_seq, &mut out);
        encode_key(6, WireType::Varint, &mut out);
        encode_varint(c.next_fencing_token, &mut out);
    }
    for r in tx.open_table(ML)?.iter()? {
        let (k, v) = r?;
        let tag = match k.value().as_bytes().first() {
            Some(b'd') => 7,
            Some(b'r') => 8,
            Some(b'm') => 9,
            _ => continue,
        };
        field(&mut out, tag, v.value());
    }
    let snapshot_id = match &last_log_id {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "empty".to_string(),
    };
    Ok((SnapshotMeta { last_log_id, last_membership, snapshot_id }, out))
}

impl StateMachineStore {
    /// Loads the applied state from redb; snapshots are kept in `snap_dir`.
    pub fn open(db: Arc<Database>, snap_dir: PathBuf) -> Result<Self, redb::Error> {
        let mut a = Applied::default();
        {
            let tx = db.begin_read()?;
            let meta = tx.open_table(SM_META)?;
            let corrupt = |what: &str, e: prost::DecodeError| redb::Error::Corrupted(format!("{what}: {e}"));
            if let Some(v) = meta.get("counters")? {
                let c = pb::StateSnapshotV1::decode(v.value()).map_err(|e| corrupt("counters", e))?;
                a.state.next_job_seq = c.next_job_seq;
                a.state.next_fencing_token = c.next_fencing_token;
            }
            if let Some(v) = meta.get("membership")? {
                let m = pb::StoredMembershipV1::decode(v.value()).map_err(|e| corrupt("membership", e))?;
                a.membership = stored_membership_from_pb(&m).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            }
            if let Some(v) = meta.get("applied")? {
                let l = pb::LogIdV1::decode(v.value()).map_err(|e| corrupt("applied", e))?;
                a.last_applied = opt_log_id_from_pb(&Some(l)).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            }
            for r in tx.open_table(JOBS)?.iter()? {
                let (_, v) = r?;
                a.state.insert_job(pb::Job::decode(v.value()).map_err(|e| corrupt("job", e))?);
            }
            for r in tx.open_table(WORKERS)?.iter()? {
                let (_, v) = r?;
                let w = pb::Worker::decode(v.value()).map_err(|e| corrupt("worker", e))?;
                a.state.workers.insert(w.id.clone(), w);
            }
            for r in tx.open_table(ML)?.iter()? {
                let (k, v) = r?;
                a.state.load_ml_row(k.value(), v.value()).map_err(|e| corrupt("ml row", e))?;
            }
        }
        Ok(Self { db, snap_dir, applied: Arc::new(RwLock::new(a)), version: watch::channel(0).0 })
    }

    pub fn shared(&self) -> SharedState {
        self.applied.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

pub struct SnapshotBuilder {
    db: Arc<Database>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (db, dir) = (self.db.clone(), self.dir.clone());
        let (meta, data) = blocking(move || {
            let (meta, data) = image_from_tables(&db)?;
            persist_snapshot(&db, &dir, &meta, &data)?;
            Ok((meta, data))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, e))?;
        tracing::info!(id = %meta.snapshot_id, bytes = data.len(), "built a snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let a = self.applied.read().expect("state lock poisoned");
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<pb::CommandResultV1>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        let mut dirty = Dirty::default();
        let rows = {
            let mut a = self.applied.write().expect("state lock poisoned");
            for e in entries {
                a.last_applied = Some(e.log_id);
                match e.payload {
                    EntryPayload::Blank => results.push(pb::CommandResultV1::default()),
                    EntryPayload::Normal(cmd) => results.push(a.state.apply(&cmd, &mut dirty)),
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(e.log_id), m);
                        results.push(pb::CommandResultV1::default());
                    }
                }
            }
            dirty.jobs.sort_unstable();
            dirty.jobs.dedup();
            dirty.workers.sort_unstable();
            dirty.workers.dedup();
            dirty.ml.sort_unstable();
            dirty.ml.dedup();
            Rows {
                jobs: dirty
                    .jobs
                    .iter()
                    .filter_map(|id| a.state.jobs.get(id).map(|j| (id.clone(), j.encode_to_vec())))
                    .collect(),
                workers: dirty
                    .workers
                    .iter()
                    .filter_map(|id| a.state.workers.get(id).map(|w| (id.clone(), w.encode_to_vec())))
                    .collect(),
                ml: dirty.ml.iter().map(|k| (k.clone(), a.state.ml_row(k))).collect(),
                meta: meta_rows(&a),
                replace_all: false,
            }
        };
        let db = self.db.clone();
        blocking(move || write_rows(&db, rows, Durability::None)).await.map_err(StorageIOError::write_state_machine)?;
        self.bump();
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), dir: self.snap_dir.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let img = pb::StateSnapshotV1::decode(data.as_slice())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(e)))?;
        let rows = {
            let mut a = self.applied.write().expect("state lock poisoned");
            a.state = ClusterState::from_snapshot(img);
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            Rows {
                jobs: a.state.jobs.iter().map(|(k, j)| (k.clone(), j.encode_to_vec())).collect(),
                workers: a.state.workers.iter().map(|(k, w)| (k.clone(), w.encode_to_vec())).collect(),
                ml: all_ml_rows(&a.state),
                meta: meta_rows(&a),
                replace_all: true,
            }
        };
        let (db, dir, meta2) = (self.db.clone(), self.snap_dir.clone(), meta.clone());
        blocking(move || {
            write_rows(&db, rows, Durability::None)?;
            persist_snapshot(&db, &dir, &meta2, &data)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        self.bump();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let (db, dir) = (self.db.clone(), self.snap_dir.clone());
        let found = blocking(move || {
            let tx = db.begin_read()?;
            let Some(raw) = tx.open_table(SM_META)?.get("snapshot")?.map(|v| v.value().to_vec()) else {
                return Ok(None);
            };
            let mut buf = raw.as_slice();
            let m = pb::SnapshotMetaV1::decode_length_delimited(&mut buf)
                .map_err(|e| redb::Error::Corrupted(format!("snapshot meta: {e}")))?;
            let name = String::from_utf8_lossy(buf).to_string();
            let data = std::fs::read(dir.join(&name)).map_err(redb::Error::Io)?;
            Ok(Some((m, data)))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, e))?;
        let Some((m, data)) = found else { return Ok(None) };
        let meta = snapshot_meta_from_pb(&m).map_err(|e| StorageIOError::read_snapshot(None, any(e)))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft_types::TypeConfig;
    use aidos_api::v1::command_v1::Command;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(pb::CommandV1 { now_ms: 7, command: Some(cmd) }),
        }
    }

    fn submit(name: &str) -> Command {
        Command::SubmitJobs(pb::SubmitJobsV1 {
            requests: vec![pb::SubmitRequest {
                spec: Some(pb::JobSpec { name: name.into(), replicas: 2, ..Default::default() }),
                request_id: format!("r-{name}"),
            }],
        })
    }

    #[tokio::test]
    async fn snapshot_built_from_tables_installs_to_the_same_state() {
        let d = tempfile::tempdir().unwrap();
        let db = crate::store::open_db(&d.path().join("a")).unwrap();
        let mut a = StateMachineStore::open(db, d.path().join("a/snapshots")).unwrap();
        let worker = pb::Worker { id: "w1".into(), ..Default::default() };
        let ds = pb::DatasetManifest { name: "mnist".into(), ..Default::default() };
        a.apply(vec![
            entry(1, submit("x")),
            entry(2, submit("y")),
            entry(3, Command::RegisterWorker(pb::RegisterWorkerV1 { worker: Some(worker) })),
            entry(4, Command::CommitDataset(pb::CommitDatasetRequest { manifest: Some(ds) })),
        ])
        .await
        .unwrap();
        let snap = a.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id.unwrap().index, 4);
        assert_eq!(a.get_current_snapshot().await.unwrap().unwrap().meta.snapshot_id, snap.meta.snapshot_id);

        let db2 = crate::store::open_db(&d.path().join("b")).unwrap();
        let mut b = StateMachineStore::open(db2.clone(), d.path().join("b/snapshots")).unwrap();
        b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        {
            let (sa, sb) = (a.applied.read().unwrap(), b.applied.read().unwrap());
            assert_eq!(sa.state.jobs, sb.state.jobs);
            assert_eq!(sa.state.workers, sb.state.workers);
            assert_eq!(sa.state.datasets, sb.state.datasets);
            assert_eq!(sa.state.next_job_seq, sb.state.next_job_seq);
            assert_eq!(sb.last_applied, sa.last_applied);
            assert_eq!(sb.state.request_ids.len(), 2);
        }
        // And the installed state survives a reopen from disk.
        drop(b);
        let c = StateMachineStore::open(db2, d.path().join("b/snapshots")).unwrap();
        assert_eq!(c.applied.read().unwrap().state.jobs.len(), 2);
    }
}
