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
    /// Where an append hands its callback once its entries are committed (readable) but not yet fsynced.
    flushes: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Self {
        let (flushes, pending) = std::sync::mpsc::channel();
        let db2 = db.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_loop(&db2, &pending))
            .expect("spawning the Raft log's flush thread");
        Self { db, flushes }
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

/// Group commit for appends. Each round takes every callback handed over since the last one, makes one
/// `Durability::Immediate` commit (an fsync, which also makes every earlier non-durable commit durable, the
/// appends' included) and calls those callbacks in order. While the leader's fsync runs, openraft keeps
/// replicating, as `RaftLogStorage::append` asks ("return once readable, call back once persisted"): the leader's
/// own write and the followers' proceed in parallel instead of one after the other.
///
/// Invariant: a callback is handed over only after its entries' commit returned, so the round that takes it
/// fsyncs them. It ends when every `LogStore` (so every sender) is gone.
fn flush_loop(db: &Database, pending: &std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    let mut round: u64 = 0;
    while let Ok(first) = pending.recv() {
        let batch: Vec<LogFlushed<TypeConfig>> = std::iter::once(first).chain(pending.try_iter()).collect();
        round += 1;
        let res = (|| -> Result<(), redb::Error> {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            // A row, so the commit is never an empty one.
            tx.open_table(RAFT_META)?.insert("flushed", round.to_le_bytes().as_slice())?;
            tx.commit()?;
            Ok(())
        })();
        for cb in batch {
            cb.log_io_completed(res.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
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
        // Committed without an fsync: readable (replication sends the entries at once) but not yet durable. The
        // flush thread fsyncs and only then calls back, which is when openraft counts this node's copy.
        let res = blocking(move || {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::None).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
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
                if let Err(back) = self.flushes.send(callback) {
                    // The flush thread is gone (it never stops while a store exists): say so rather than hang.
                    back.0.log_io_completed(Err(std::io::Error::other("the Raft log's flush thread stopped")));
                }
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
