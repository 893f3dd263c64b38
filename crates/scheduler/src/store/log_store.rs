//! The Raft log, vote and committed index in redb (see the durability contract in `store`).

// openraft's `StorageError` is large (~224 bytes), and it is the error type openraft's storage traits require of
// us: boxing it would only add a conversion at every trait boundary.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use aidos_api::v1 as pb;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogReader, StorageIOError, Vote};
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use super::{LOG, RAFT_META, any, blocking};
use crate::raft_types::{
    NodeId, StorageError, TypeConfig, entry_from_pb, entry_to_pb, log_id_from_pb, log_id_to_pb, vote_from_pb,
    vote_to_pb,
};

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    fn read_meta(&self, key: &'static str) -> Result<Option<Vec<u8>>, redb::Error> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RAFT_META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    async fn write_meta(
        &self,
        key: &'static str,
        val: Vec<u8>,
        durability: Durability,
    ) -> Result<(), openraft::AnyError> {
        let db = self.db.clone();
        blocking(move || {
            let mut tx = db.begin_write()?;
            tx.set_durability(durability).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            tx.open_table(RAFT_META)?.insert(key, val.as_slice())?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    fn read_log_id(&self, key: &'static str) -> Result<Option<LogId<NodeId>>, StorageError> {
        let raw = self.read_meta(key).map_err(|e| StorageIOError::read_logs(any(e)))?;
        match raw {
            None => Ok(None),
            Some(b) => {
                let l = pb::LogIdV1::decode(b.as_slice()).map_err(|e| StorageIOError::read_logs(any(e)))?;
                Ok(Some(log_id_from_pb(&l).map_err(|e| StorageIOError::read_logs(any(e)))?))
            }
        }
    }
}

fn bound_start(b: Bound<&u64>) -> u64 {
    match b {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x + 1,
        Bound::Unbounded => 0,
    }
}
fn bound_end(b: Bound<&u64>) -> Option<u64> {
    match b {
        Bound::Included(x) => Some(x + 1),
        Bound::Excluded(x) => Some(*x),
        Bound::Unbounded => None,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = bound_start(range.start_bound());
        let end = bound_end(range.end_bound());
        let db = self.db.clone();
        let raw = blocking(move || {
            let tx = db.begin_read()?;
            let t = tx.open_table(LOG)?;
            let it = match end {
                Some(e) => t.range(start..e)?,
                None => t.range(start..)?,
            };
            let mut out = Vec::new();
            for r in it {
                let (_, v) = r?;
                out.push(v.value().to_vec());
            }
            Ok(out)
        })
        .await
        .map_err(StorageIOError::read_logs)?;
        raw.into_iter()
            .map(|b| {
                let e = pb::EntryV1::decode(b.as_slice()).map_err(|e| StorageIOError::read_logs(any(e)))?;
                entry_from_pb(e).map_err(|e| StorageIOError::read_logs(any(e)).into())
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged = self.read_log_id("purged")?;
        let db = self.db.clone();
        let last = blocking(move || {
            let tx = db.begin_read()?;
            let t = tx.open_table(LOG)?;
            Ok(t.last()?.map(|(_, v)| v.value().to_vec()))
        })
        .await
        .map_err(StorageIOError::read_logs)?;
        let last = match last {
            Some(b) => {
                let e = pb::EntryV1::decode(b.as_slice()).map_err(|e| StorageIOError::read_logs(any(e)))?;
                Some(entry_from_pb(e).map_err(|e| StorageIOError::read_logs(any(e)))?.log_id)
            }
            None => purged,
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let b = vote_to_pb(vote).encode_to_vec();
        self.write_meta("vote", b, Durability::Immediate).await.map_err(StorageIOError::write_vote)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let raw = self.read_meta("vote").map_err(|e| StorageIOError::read_vote(any(e)))?;
        match raw {
            None => Ok(None),
            Some(b) => {
                let v = pb::VoteV1::decode(b.as_slice()).map_err(|e| StorageIOError::read_vote(any(e)))?;
                Ok(Some(vote_from_pb(&v).map_err(|e| StorageIOError::read_vote(any(e)))?))
            }
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            // Not fsynced on its own: losing it only means re-learning the commit index from the leader.
            let b = log_id_to_pb(&c).encode_to_vec();
            self.write_meta("committed", b, Durability::None).await.map_err(StorageIOError::write)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        self.read_log_id("committed")
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let rows: Vec<(u64, Vec<u8>)> =
            entries.into_iter().map(|e| (e.log_id.index, entry_to_pb(&e).encode_to_vec())).collect();
        let db = self.db.clone();
        // One fsynced commit, then the callback. openraft 0.9 awaits the callback before it goes on (its
        // `RaftCore::append_to_log` is "a temp wrapper to make non-blocking append_to_log a blocking"), so fsyncing
        // on a separate thread and calling back later overlaps nothing there: that was tried and measured as noise.
        let res = blocking(move || {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            {
                let mut t = tx.open_table(LOG)?;
                for (i, b) in &rows {
                    t.insert(*i, b.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            tx.open_table(LOG)?.retain_in(log_id.index.., |_, _| false)?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(StorageIOError::write_logs)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        let purged = log_id_to_pb(&log_id).encode_to_vec();
        blocking(move || {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            tx.open_table(RAFT_META)?.insert("purged", purged.as_slice())?;
            tx.open_table(LOG)?.retain_in(..=log_id.index, |_, _| false)?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(StorageIOError::write_logs)?;
        Ok(())
    }
}
