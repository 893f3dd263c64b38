//! The audit domain: what the nodes' auth layers saw of every mutation (`crate::audit`), in table `Rows` under
//! `a/<seq, 20 digits>`, oldest first.
//!
//! Invariants:
//! - Records are kept in `seq` order; `seq` only grows: an append numbers its records from the larger of the last
//!   record's `seq` + 1 and `now_ms` · 1000 (so an empty log after a restart never reuses a number, as long as the
//!   leader's clock does not go back by more than the records' age).
//! - Bounded: an append first drops the records older than its `retain_after_ms` (the leader's now minus the
//!   cluster's retention), then keeps the newest [`MAX_AUDIT_RECORDS`].
//! - At most [`MAX_RECORDS_PER_APPEND`] records per command, each field of bounded length (longer text is cut, so
//!   a hostile client cannot make a record large by sending a long path or token name).

use std::collections::VecDeque;

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{AppendAuditV1, AuditRecord, CommandResultV1, StateSnapshotV1};
use prost::Message;

use super::{Dirty, Domain, JobsState, Refusal, RowKind, Rows, Table, bad};

/// Most records the state keeps (the oldest go first).
pub const MAX_AUDIT_RECORDS: usize = 100_000;
/// Most records one append carries.
pub const MAX_RECORDS_PER_APPEND: usize = 1000;
/// Longest text field kept, in bytes.
pub const MAX_FIELD: usize = 256;
const AUDIT_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "a/", snapshot_field: 18 };

pub fn audit_key(seq: u64) -> String {
    format!("a/{seq:020}")
}

#[derive(Debug, Default, Clone)]
pub struct AuditState {
    pub records: VecDeque<AuditRecord>,
}

impl Rows for AuditState {
    const ROWS: &'static [RowKind] = &[AUDIT_ROWS];

    fn row(&self, _table: Table, key: &str) -> Option<Vec<u8>> {
        let seq: u64 = key.strip_prefix(AUDIT_ROWS.prefix)?.parse().ok()?;
        let i = self.records.binary_search_by_key(&seq, |r| r.seq).ok()?;
        Some(self.records[i].encode_to_vec())
    }

    fn load_row(&mut self, _table: Table, _key: &str, bytes: &[u8]) -> Result<(), prost::DecodeError> {
        let r = AuditRecord::decode(bytes)?;
        // Storage hands rows back in key order, which is seq order; keep the order whatever comes.
        let at = self.records.partition_point(|x| x.seq < r.seq);
        self.records.insert(at, r);
        Ok(())
    }

    fn keys(&self) -> Vec<(Table, String)> {
        self.records.iter().map(|r| (Table::Rows, audit_key(r.seq))).collect()
    }

    fn snapshot(&self, out: &mut StateSnapshotV1) {
        out.audit = self.records.iter().cloned().collect();
    }

    fn restore(&mut self, s: &mut StateSnapshotV1) {
        let mut v = std::mem::take(&mut s.audit);
        v.sort_by_key(|r| r.seq);
        self.records = v.into();
    }
}

impl Domain for AuditState {
    fn apply(
        &mut self,
        cmd: &Command,
        now: i64,
        _jobs: &JobsState,
        dirty: &mut Dirty,
    ) -> Option<Result<CommandResultV1, Refusal>> {
        match cmd {
            Command::AppendAudit(a) => Some(self.append(a, now, dirty)),
            _ => None,
        }
    }
}

/// `r` with every text field cut to [`MAX_FIELD`] bytes: what apply keeps, and what a node makes before a record
/// waits in its buffer (`crate::audit`).
pub fn bounded(mut r: AuditRecord) -> AuditRecord {
    for f in [&mut r.principal, &mut r.token_id, &mut r.project, &mut r.action, &mut r.code, &mut r.reason] {
        cut(f);
    }
    for f in [&mut r.peer, &mut r.via] {
        cut(f);
    }
    r
}

/// Cuts `s` to at most [`MAX_FIELD`] bytes (on a character boundary).
fn cut(s: &mut String) {
    if s.len() > MAX_FIELD {
        let mut end = MAX_FIELD;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

impl AuditState {
    fn append(&mut self, a: &AppendAuditV1, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        if a.records.len() > MAX_RECORDS_PER_APPEND {
            return Err(bad("records", format!("{} in one append, at most {MAX_RECORDS_PER_APPEND}", a.records.len())));
        }
        while self.records.front().is_some_and(|r| r.at_ms < a.retain_after_ms) {
            let r = self.records.pop_front().expect("checked");
            dirty.mark(Table::Rows, audit_key(r.seq));
        }
        let floor = u64::try_from(now).unwrap_or(0).saturating_mul(1000);
        let first = self.records.back().map_or(floor, |r| (r.seq + 1).max(floor));
        for (seq, r) in (first..).zip(&a.records) {
            let mut r = bounded(r.clone());
            r.seq = seq;
            dirty.mark(Table::Rows, audit_key(r.seq));
            self.records.push_back(r);
        }
        while self.records.len() > MAX_AUDIT_RECORDS {
            let r = self.records.pop_front().expect("non-empty");
            dirty.mark(Table::Rows, audit_key(r.seq));
        }
        Ok(CommandResultV1::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at_ms: i64, action: &str) -> AuditRecord {
        AuditRecord { at_ms, action: action.into(), allowed: true, ..Default::default() }
    }

    fn append(st: &mut AuditState, records: Vec<AuditRecord>, retain_after_ms: i64, now: i64) -> Dirty {
        let mut dirty = Dirty::default();
        let cmd = Command::AppendAudit(AppendAuditV1 { records, retain_after_ms });
        st.apply(&cmd, now, &JobsState::default(), &mut dirty).unwrap().unwrap();
        dirty
    }

    #[test]
    fn appends_number_in_order_and_drop_what_is_older_than_the_retention() {
        let mut st = AuditState::default();
        let d = append(&mut st, vec![rec(10, "a"), rec(11, "b")], 0, 5);
        assert_eq!(st.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [5000, 5001]);
        assert_eq!(d.rows.len(), 2);
        // The same millisecond again: numbers go on from the last one.
        append(&mut st, vec![rec(12, "c")], 0, 5);
        assert_eq!(st.records.back().unwrap().seq, 5002);
        // Retention: records seen before 12 ms go, and their rows are deleted.
        let d = append(&mut st, vec![rec(20, "d")], 12, 9);
        assert_eq!(st.records.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(), ["c", "d"]);
        assert!(d.rows.contains(&(Table::Rows, audit_key(5000))));
        assert_eq!(st.records.back().unwrap().seq, 9000, "a later millisecond starts at its own floor");
        // A row reads back, and survives a snapshot round trip in order.
        assert!(st.row(Table::Rows, &audit_key(5002)).is_some());
        let mut snap = StateSnapshotV1::default();
        st.snapshot(&mut snap);
        snap.audit.reverse();
        let mut back = AuditState::default();
        back.restore(&mut snap);
        assert_eq!(back.records, st.records);
    }

    #[test]
    fn the_log_is_bounded_in_count_and_in_field_length() {
        let mut st = AuditState::default();
        for i in 0..(MAX_AUDIT_RECORDS / MAX_RECORDS_PER_APPEND + 1) {
            append(&mut st, (0..MAX_RECORDS_PER_APPEND).map(|_| rec(1, "x")).collect(), 0, i as i64);
        }
        assert_eq!(st.records.len(), MAX_AUDIT_RECORDS);
        let too_many = Command::AppendAudit(AppendAuditV1 {
            records: vec![rec(1, "x"); MAX_RECORDS_PER_APPEND + 1],
            retain_after_ms: 0,
        });
        let e = st.apply(&too_many, 1, &JobsState::default(), &mut Dirty::default()).unwrap().unwrap_err();
        assert_eq!(e.code, tonic::Code::InvalidArgument);
        let mut long = rec(1, &"é".repeat(MAX_FIELD));
        long.principal = "p".repeat(10 * MAX_FIELD);
        append(&mut st, vec![long], 0, 10_000);
        let last = st.records.back().unwrap();
        assert!(last.action.len() <= MAX_FIELD && last.principal.len() == MAX_FIELD);
    }
}
