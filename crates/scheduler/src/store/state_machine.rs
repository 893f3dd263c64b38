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

use super::{SM_META, TABLES, any, blocking, table_def};
use crate::raft_types::{
    NodeId, SnapshotMeta, StorageError, TypeConfig, opt_log_id_from_pb, opt_log_id_to_pb, snapshot_meta_from_pb,
    snapshot_meta_to_pb, stored_membership_from_pb, stored_membership_to_pb,
};
use crate::state::{ClusterState, Dirty, Table};

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

/// One write of the state machine: rows to upsert or delete and the metadata, encoded outside the blocking pool.
#[derive(Default)]
struct RowWrites {
    /// `None`: the row was deleted (a deployment removed, say).
    rows: Vec<(Table, String, Option<Vec<u8>>)>,
    meta: Vec<(&'static str, Vec<u8>)>,
    /// Clear every state table first (a snapshot install).
    replace_all: bool,
}

fn meta_rows(a: &Applied) -> Vec<(&'static str, Vec<u8>)> {
    let counters = pb::StateSnapshotV1 {
        next_job_seq: a.state.jobs.next_job_seq,
        next_fencing_token: a.state.jobs.next_fencing_token,
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

fn write_rows(db: &Database, w: RowWrites, durability: Durability) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(durability).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    {
        for t in TABLES {
            let mut table = tx.open_table(table_def(t))?;
            if w.replace_all {
                table.retain(|_, _| false)?;
            }
            for (_, k, v) in w.rows.iter().filter(|(rt, _, _)| *rt == t) {
                match v {
                    Some(v) => {
                        table.insert(k.as_str(), v.as_slice())?;
                    }
                    None => {
                        table.remove(k.as_str())?;
                    }
                }
            }
        }
        let mut meta = tx.open_table(SM_META)?;
        for (k, v) in &w.meta {
            meta.insert(*k, v.as_slice())?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Every row of the state, encoded (after installing a snapshot).
fn all_rows(st: &ClusterState) -> Vec<(Table, String, Option<Vec<u8>>)> {
    st.keys().into_iter().filter_map(|(t, k)| st.row(t, &k).map(|b| (t, k, Some(b)))).collect()
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
    if let Some(v) = meta_t.get("counters")? {
        let c = pb::StateSnapshotV1::decode(v.value()).map_err(corrupt("counters"))?;
        encode_key(5, WireType::Varint, &mut out);
        encode_varint(c.next_job_seq, &mut out);
        encode_key(6, WireType::Varint, &mut out);
        encode_varint(c.next_fencing_token, &mut out);
    }
    // Each row kind of each domain becomes its own repeated field (`state::RowKind::snapshot_field`).
    let kinds = ClusterState::row_kinds();
    for t in TABLES {
        for r in tx.open_table(table_def(t))?.iter()? {
            let (k, v) = r?;
            if let Some(kind) = kinds.iter().find(|kind| kind.owns(t, k.value())) {
                field(&mut out, kind.snapshot_field, v.value());
            }
        }
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
                a.state.jobs.next_job_seq = c.next_job_seq;
                a.state.jobs.next_fencing_token = c.next_fencing_token;
            }
            if let Some(v) = meta.get("membership")? {
                let m = pb::StoredMembershipV1::decode(v.value()).map_err(|e| corrupt("membership", e))?;
                a.membership = stored_membership_from_pb(&m).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            }
            if let Some(v) = meta.get("applied")? {
                let l = pb::LogIdV1::decode(v.value()).map_err(|e| corrupt("applied", e))?;
                a.last_applied = opt_log_id_from_pb(&Some(l)).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            }
            for t in TABLES {
                for r in tx.open_table(table_def(t))?.iter()? {
                    let (k, v) = r?;
                    a.state.load_row(t, k.value(), v.value()).map_err(|e| corrupt("state row", e))?;
                }
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
        let started = std::time::Instant::now();
        let (meta, data) = blocking(move || {
            let (meta, data) = image_from_tables(&db)?;
            persist_snapshot(&db, &dir, &meta, &data)?;
            Ok((meta, data))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, e))?;
        // benches/retention.sh reads these fields: the snapshot's size and build time as the state grows or stays.
        tracing::info!(
            id = %meta.snapshot_id,
            bytes = data.len(),
            millis = started.elapsed().as_millis() as u64,
            "built a snapshot"
        );
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
            dirty.rows.sort_unstable();
            dirty.rows.dedup();
            RowWrites {
                rows: dirty
                    .rows
                    .into_iter()
                    .map(|(t, k)| {
                        let row = a.state.row(t, &k);
                        (t, k, row)
                    })
                    .collect(),
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
            RowWrites { rows: all_rows(&a.state), meta: meta_rows(&a), replace_all: true }
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
        let deployment = pb::Deployment {
            name: "digits".into(),
            replicas: 2,
            spec: Some(pb::ServeSpec { model: "mnist-mlp".into(), version: 1, ..Default::default() }),
            ..Default::default()
        };
        let edge_deployment = pb::EdgeDeployment {
            name: "cams".into(),
            model: "mnist-mlp".into(),
            signature: vec![1; 64],
            sample_input: vec![0.5],
            sample_output: vec![1.0],
            ..Default::default()
        };
        let experiment = pb::Experiment { name: "tuning".into(), ..Default::default() };
        a.apply(vec![
            entry(1, submit("x")),
            entry(2, submit("y")),
            entry(3, Command::RegisterWorker(pb::RegisterWorkerV1 { worker: Some(worker) })),
            entry(4, Command::CommitDataset(pb::CommitDatasetRequest { manifest: Some(ds) })),
            entry(5, Command::Deploy(pb::DeployV1 { deployment: Some(deployment) })),
            entry(6, Command::EnrollDevice(pb::EnrollRequest { device: "cam-1".into(), ..Default::default() })),
            entry(7, Command::EdgeDeploy(edge_deployment)),
            entry(8, Command::CreateExperiment(pb::CreateExperimentV1 { experiment: Some(experiment) })),
            entry(9, Command::CreateModel(pb::RegisteredModel { name: "later".into(), ..Default::default() })),
        ])
        .await
        .unwrap();
        {
            let sa = a.applied.read().unwrap();
            assert_eq!(sa.state.serving.deployments.len(), 1, "the deploy applied");
            assert_eq!((sa.state.edge.devices.len(), sa.state.edge.deployments.len()), (1, 1), "the edge rows applied");
        }
        let snap = a.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id.unwrap().index, 9);
        assert_eq!(a.get_current_snapshot().await.unwrap().unwrap().meta.snapshot_id, snap.meta.snapshot_id);

        let db2 = crate::store::open_db(&d.path().join("b")).unwrap();
        let mut b = StateMachineStore::open(db2.clone(), d.path().join("b/snapshots")).unwrap();
        b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        {
            let (sa, sb) = (a.applied.read().unwrap(), b.applied.read().unwrap());
            assert_eq!(sa.state.jobs.by_id, sb.state.jobs.by_id);
            assert_eq!(sa.state.jobs.workers, sb.state.jobs.workers);
            assert_eq!(sa.state.registry.datasets, sb.state.registry.datasets);
            assert_eq!(sa.state.jobs.next_job_seq, sb.state.jobs.next_job_seq);
            assert_eq!(sb.last_applied, sa.last_applied);
            assert_eq!(sb.state.jobs.request_ids.len(), 2);
            // Every domain's rows travel in the image (deployments and edge rows were once left out).
            assert_eq!(sa.state.serving.deployments, sb.state.serving.deployments);
            assert_eq!(sa.state.edge.devices, sb.state.edge.devices);
            assert_eq!(sa.state.edge.deployments, sb.state.edge.deployments);
            assert_eq!(sb.state.registry.experiments.len(), 1);
            assert_eq!(sa.state.registry.experiments, sb.state.registry.experiments);
            assert_eq!(sa.state.registry.model_names, sb.state.registry.model_names);
        }
        // And the installed state survives a reopen from disk.
        drop(b);
        let c = StateMachineStore::open(db2, d.path().join("b/snapshots")).unwrap();
        let sc = &c.applied.read().unwrap().state;
        assert_eq!(sc.jobs.by_id.len(), 2);
        assert_eq!((sc.serving.deployments.len(), sc.edge.devices.len(), sc.edge.deployments.len()), (1, 1, 1));
        assert_eq!((sc.registry.experiments.len(), sc.registry.model_names.len()), (1, 1));
    }
}
