//! Durable Raft storage in one redb file: the log and vote (`log_store`) and the state machine
//! (`state_machine`). Every redb call runs on the blocking pool, never on an async worker thread.
//!
//! Durability contract:
//! - Log appends, vote saves and truncations commit with `Durability::Immediate` (fsync) before openraft is told
//!   they are done: nothing is acknowledged before it is on disk.
//! - State-machine applies commit with `Durability::None`: they become durable with the next fsynced commit
//!   (the next log append), and after a crash the state machine comes back at an earlier, self-consistent
//!   `last_applied` from which openraft re-applies the (durable) log.
//! - Logs are purged only up to a built snapshot, and building one ends with a `Durability::Immediate` commit
//!   (after the snapshot file is fsynced), so no purged entry is needed to rebuild the state.
//! - Snapshots are built from a redb read transaction (an MVCC view of the last applied batch) and written to a
//!   file, so building one neither holds the in-memory state lock nor occupies redb's single writer.

pub mod log_store;
pub mod state_machine;

use std::path::Path;
use std::sync::Arc;

use openraft::AnyError;
use redb::{Database, TableDefinition};

use crate::state::Table;

/// Log entries by index, each an encoded `EntryV1`.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log_v1");
/// Raft metadata: `vote` (VoteV1), `committed` and `purged` (LogIdV1).
pub(crate) const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta_v1");
/// State-machine metadata: `applied` (LogIdV1), `membership` (StoredMembershipV1), `counters` (StateSnapshotV1
/// holding only the counters), `snapshot` (the last built snapshot: SnapshotMetaV1 then data, length-delimited).
pub(crate) const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta_v1");
/// Jobs by id, each an encoded `Job`.
pub(crate) const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_jobs_v1");
/// Workers by id, each an encoded `Worker`.
pub(crate) const WORKERS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_workers_v1");
/// The rows of every other domain (datasets, runs, models, deployments, edge devices and deployments, ...), keyed
/// `<prefix>/...` with a prefix per row kind (see `state::RowKind`), each its encoded message.
pub(crate) const ROWS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_ml_v1");

/// The state tables, in the order they are written and read.
pub(crate) const TABLES: [Table; 3] = [Table::Jobs, Table::Workers, Table::Rows];

/// The redb table a state table is stored in.
pub(crate) fn table_def(t: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match t {
        Table::Jobs => JOBS,
        Table::Workers => WORKERS,
        Table::Rows => ROWS,
    }
}

/// Opens (or creates) the node's redb file and makes sure every table exists.
pub fn open_db(dir: &Path) -> Result<Arc<Database>, redb::Error> {
    std::fs::create_dir_all(dir).map_err(redb::Error::Io)?;
    let db = Database::create(dir.join("raft.redb"))?;
    let tx = db.begin_write()?;
    tx.open_table(LOG)?;
    tx.open_table(RAFT_META)?;
    tx.open_table(SM_META)?;
    tx.open_table(JOBS)?;
    tx.open_table(WORKERS)?;
    tx.open_table(ROWS)?;
    tx.commit()?;
    Ok(Arc::new(db))
}

pub(crate) fn any(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

/// Runs blocking storage work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, redb::Error> + Send + 'static,
) -> Result<T, AnyError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(any),
        Err(e) => Err(AnyError::error(format!("storage task panicked: {e}"))),
    }
}
