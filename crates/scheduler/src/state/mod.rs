//! The replicated state, split by domain, and its deterministic `apply`.
//!
//! [`ClusterState`] composes one sub-state per domain:
//!
//! | domain | module | rows (table, key prefix) | snapshot fields | commands |
//! |---|---|---|---|---|
//! | jobs and workers | [`jobs`] | `Jobs` (job id), `Workers` (worker id), counters in the meta table | 3–6 | submit, cancel, assign, task transitions, worker registration and loss, job reasons, replica endpoints, compaction of finished jobs (retention) |
//! | datasets, runs, models | [`registry`] | `Rows` `d/`, `r/`, `m/` | 7–9 | commit dataset, metrics, checkpoints, register model, alias, artifact |
//! | model deployments | [`serving`] | `Rows` `s/` | 10 | deploy, delete, deployment status |
//! | edge devices and deployments | [`edge`] | `Rows` `e/`, `x/` | 11–12 | enrol, edge deploy, edge report |
//! | hyperparameter sweeps | [`sweeps`] | `Rows` `w/`, `t/` | 13–14 | create, add trials, update a trial, finish, cancel |
//! | API tokens | [`auth`] | `Rows` `k/` | 15 | create, revoke |
//! | the audit log | [`audit`] | `Rows` `a/` | 18 | append (with retention) |
//!
//! Every domain owns its rows ([`Rows`]: key prefixes, encoding, loading, its part of a snapshot) and its `apply`
//! arms ([`Domain`]). The jobs domain is the base the others build on: it applies first, and every other domain
//! receives it read-only (fencing checks: "is this report from the current attempt?"). A domain never writes
//! another domain's rows; reads that span domains (a deployment with its replica jobs) live in `crate::queries`.
//!
//! Invariants (checked by the tests of each domain and relied on by placement and the worker streams):
//! - `apply` is a pure function of (state, command): the leader fixes every timestamp and choice before proposing,
//!   so every node reaches the same state. It never panics on bad input: a refusal goes into the result.
//! - What one `apply` changed is listed in [`Dirty`], row by row, so the store writes only those rows; a row that
//!   a domain no longer has is deleted from storage.
//! - Each (table, key prefix) pair belongs to exactly one domain, and maps to one `StateSnapshotV1` field, so a
//!   snapshot image can be assembled from the stored rows alone (`store::state_machine`).
//!
//! # How to add a replicated domain
//! 1. Messages: add the domain's records and its commands (`...V1`) to `proto/aidos/v1/*.proto`, the commands to
//!    `CommandV1`'s oneof and the records to `StateSnapshotV1` as new `repeated` fields (never reuse a number).
//! 2. A module here, `state/<domain>.rs`, with a `#[derive(Debug, Default, Clone)]` struct that holds the domain's
//!    maps and implements [`Rows`] (a [`RowKind`] per record kind: table [`Table::Rows`], a fresh one-letter key
//!    prefix, its snapshot field) and [`Domain`] (`apply` returns `None` for commands that are not its own). Put
//!    limits and invariants in its module doc and unit tests of `apply` beside it.
//! 3. One registration line in the `domains!` invocation below. Storage, snapshots (building, installing,
//!    loading) and the dispatch of commands then include the domain with no further edits.
//! 4. The leader path: validation that needs no state and the proposal in `leader/<domain>.rs`; reads in
//!    `queries.rs`; the gRPC adapter in `grpc/`. Forwarding to the leader needs no code (`forward.rs`).

pub mod audit;
pub mod auth;
pub mod edge;
pub mod jobs;
pub mod registry;
pub mod serving;
pub mod sweeps;
pub mod tracking;

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{CommandResultV1, CommandV1, StateSnapshotV1};

pub use jobs::{JobsState, add, job_id_for_seq};

/// The storage tables state rows live in (`store` maps them to redb tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Jobs,
    Workers,
    /// Rows of every domain after the first, told apart by key prefix.
    Rows,
}

/// One kind of row: where it is stored and which `StateSnapshotV1` field it becomes in a snapshot image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowKind {
    pub table: Table,
    /// Key prefix within the table (`""` when the domain has the table to itself).
    pub prefix: &'static str,
    /// Field number of the `repeated` message field of `StateSnapshotV1` that holds these rows.
    pub snapshot_field: u32,
}

impl RowKind {
    pub fn owns(&self, table: Table, key: &str) -> bool {
        self.table == table && key.starts_with(self.prefix)
    }
}

/// What one `apply` changed, so the store writes only those rows.
#[derive(Debug, Default)]
pub struct Dirty {
    pub rows: Vec<(Table, String)>,
}

impl Dirty {
    pub fn mark(&mut self, table: Table, key: impl Into<String>) {
        self.rows.push((table, key.into()));
    }
}

/// A refusal of a command; becomes `CommandResultV1.error` with a gRPC code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: tonic::Code,
    pub message: String,
}

pub(crate) fn refuse(code: tonic::Code, message: impl Into<String>) -> Refusal {
    Refusal { code, message: message.into() }
}

/// An invalid field: `"<field>: <why>"`.
pub(crate) fn bad(field: &str, why: impl Into<String>) -> Refusal {
    refuse(tonic::Code::InvalidArgument, format!("{field}: {}", why.into()))
}

pub(crate) fn not_found(what: impl Into<String>) -> Refusal {
    refuse(tonic::Code::NotFound, what)
}

/// Names of datasets, models, aliases, deployments and devices: 1..=64 of `[A-Za-z0-9._-]`, not starting with `.`
/// (they appear in keys and file names).
pub fn check_name(field: &str, s: &str) -> Result<(), Refusal> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok { Ok(()) } else { Err(bad(field, format!("{s:?} is not a valid name (1-64 of A-Z a-z 0-9 . _ -)"))) }
}

/// A 64-hex-digit BLAKE3 blob id.
pub(crate) fn check_blob_id(s: &str) -> Result<(), String> {
    let ok = s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok { Ok(()) } else { Err(format!("{s:?} is not a blob id")) }
}

fn refusal(r: Refusal) -> CommandResultV1 {
    CommandResultV1 { error: r.message, error_code: r.code as u32, ..Default::default() }
}

/// The storage side of a domain: its rows and its part of a snapshot.
pub trait Rows {
    /// The kinds of rows this domain owns; no (table, prefix) pair is another domain's.
    const ROWS: &'static [RowKind];
    /// The encoded row stored under (`table`, `key`), of one of [`Self::ROWS`]; `None`: there is no such row (any
    /// more).
    fn row(&self, table: Table, key: &str) -> Option<Vec<u8>>;
    /// Loads one row read back from storage.
    fn load_row(&mut self, table: Table, key: &str, bytes: &[u8]) -> Result<(), prost::DecodeError>;
    /// Every row's key (a snapshot install rewrites them all).
    fn keys(&self) -> Vec<(Table, String)>;
    /// Adds this domain's records to a snapshot image.
    fn snapshot(&self, out: &mut StateSnapshotV1);
    /// Takes this domain's records out of a snapshot image.
    fn restore(&mut self, s: &mut StateSnapshotV1);
}

/// A domain layered on the jobs domain.
pub trait Domain: Rows {
    /// Applies `cmd` when it is one of this domain's commands (`None`: not mine). `jobs` is read-only here.
    fn apply(
        &mut self,
        cmd: &Command,
        now: i64,
        jobs: &JobsState,
        dirty: &mut Dirty,
    ) -> Option<Result<CommandResultV1, Refusal>>;
}

/// Declares [`ClusterState`] from the jobs domain plus the listed domains, with the dispatch over all of them.
macro_rules! domains {
    ($($name:ident: $ty:ty),* $(,)?) => {
        /// The state machine's in-memory image: one sub-state per domain. redb holds the same rows durably (see
        /// `store::state_machine`).
        #[derive(Debug, Default, Clone)]
        pub struct ClusterState {
            pub jobs: JobsState,
            $(pub $name: $ty,)*
        }

        impl ClusterState {
            /// Applies one command. Never panics on bad input: a refusal is returned in the result.
            pub fn apply(&mut self, cmd: &CommandV1, dirty: &mut Dirty) -> CommandResultV1 {
                let Some(c) = &cmd.command else {
                    return refusal(refuse(tonic::Code::InvalidArgument, "empty command"));
                };
                let mut res = self.jobs.apply(c, cmd.now_ms, dirty);
                $(if res.is_none() {
                    res = self.$name.apply(c, cmd.now_ms, &self.jobs, dirty);
                })*
                match res {
                    Some(Ok(r)) => r,
                    Some(Err(r)) => refusal(r),
                    None => refusal(refuse(tonic::Code::Unimplemented, "a command no domain applies")),
                }
            }

            /// Every kind of row, of every domain.
            pub fn row_kinds() -> Vec<RowKind> {
                let mut v = JobsState::ROWS.to_vec();
                $(v.extend_from_slice(<$ty as Rows>::ROWS);)*
                v
            }

            /// The encoded row under (`table`, `key`); `None`: no such row.
            pub fn row(&self, table: Table, key: &str) -> Option<Vec<u8>> {
                if JobsState::ROWS.iter().any(|k| k.owns(table, key)) {
                    return self.jobs.row(table, key);
                }
                $(if <$ty as Rows>::ROWS.iter().any(|k| k.owns(table, key)) {
                    return self.$name.row(table, key);
                })*
                None
            }

            /// Loads a row read back from storage (rows of no known kind are ignored).
            pub fn load_row(&mut self, table: Table, key: &str, bytes: &[u8]) -> Result<(), prost::DecodeError> {
                if JobsState::ROWS.iter().any(|k| k.owns(table, key)) {
                    return self.jobs.load_row(table, key, bytes);
                }
                $(if <$ty as Rows>::ROWS.iter().any(|k| k.owns(table, key)) {
                    return self.$name.load_row(table, key, bytes);
                })*
                Ok(())
            }

            /// Every row's key, of every domain.
            pub fn keys(&self) -> Vec<(Table, String)> {
                let mut v = self.jobs.keys();
                $(v.extend(self.$name.keys());)*
                v
            }

            pub fn to_snapshot(&self) -> StateSnapshotV1 {
                let mut s = StateSnapshotV1::default();
                self.jobs.snapshot(&mut s);
                $(self.$name.snapshot(&mut s);)*
                s
            }

            pub fn from_snapshot(mut s: StateSnapshotV1) -> Self {
                let mut st = ClusterState::default();
                st.jobs.restore(&mut s);
                $(st.$name.restore(&mut s);)*
                st
            }
        }
    };
}

domains! {
    registry: registry::RegistryState,
    serving: serving::ServingState,
    edge: edge::EdgeState,
    sweeps: sweeps::SweepsState,
    auth: auth::AuthState,
    audit: audit::AuditState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_kinds_are_disjoint_and_map_to_distinct_snapshot_fields() {
        let kinds = ClusterState::row_kinds();
        for (i, a) in kinds.iter().enumerate() {
            for b in &kinds[i + 1..] {
                assert_ne!(a.snapshot_field, b.snapshot_field, "{a:?} / {b:?}");
                let overlap = a.table == b.table && (a.prefix.starts_with(b.prefix) || b.prefix.starts_with(a.prefix));
                assert!(!overlap, "{a:?} and {b:?} share keys");
            }
        }
    }
}
