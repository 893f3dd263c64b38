//! The auth domain: API tokens (table `Rows`, `k/<token id>`). A record holds the BLAKE3 hash of its secret,
//! never the secret (the leader draws the secret, hashes it, proposes the record and answers the secret once).
//!
//! Invariants:
//! - Token ids are unique and never reused: a create of an existing id is refused (the leader draws ids at
//!   random; a collision is refused rather than overwriting another token).
//! - A revoked token stays revoked: its record keeps `revoked_at_ms` (so `aidos token list --all` shows it) and a
//!   second revocation changes nothing.
//! - The root token and job tokens are not records here (`aidos_api::auth`).

use std::collections::BTreeMap;

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{CommandResultV1, CreateTokenV1, Role, StateSnapshotV1, TokenRecordV1};
use prost::Message;

use super::{Dirty, Domain, JobsState, Refusal, RowKind, Rows, Table, bad, not_found, refuse};

/// Most stored tokens (revoked ones included) the state keeps: bounds the domain.
pub const MAX_TOKENS: usize = 10_000;
const TOKEN_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "k/", snapshot_field: 15 };

pub fn token_key(id: &str) -> String {
    format!("k/{id}")
}

/// Stored tokens by id.
#[derive(Debug, Default, Clone)]
pub struct AuthState {
    pub tokens: BTreeMap<String, TokenRecordV1>,
}

impl Rows for AuthState {
    const ROWS: &'static [RowKind] = &[TOKEN_ROWS];

    fn row(&self, _table: Table, key: &str) -> Option<Vec<u8>> {
        self.tokens.get(key.strip_prefix(TOKEN_ROWS.prefix)?).map(|t| t.encode_to_vec())
    }

    fn load_row(&mut self, _table: Table, _key: &str, bytes: &[u8]) -> Result<(), prost::DecodeError> {
        let r = TokenRecordV1::decode(bytes)?;
        self.tokens.insert(r.token.as_ref().map(|t| t.id.clone()).unwrap_or_default(), r);
        Ok(())
    }

    fn keys(&self) -> Vec<(Table, String)> {
        self.tokens.keys().map(|k| (Table::Rows, token_key(k))).collect()
    }

    fn snapshot(&self, out: &mut StateSnapshotV1) {
        out.tokens = self.tokens.values().cloned().collect();
    }

    fn restore(&mut self, s: &mut StateSnapshotV1) {
        for r in std::mem::take(&mut s.tokens) {
            self.tokens.insert(r.token.as_ref().map(|t| t.id.clone()).unwrap_or_default(), r);
        }
    }
}

impl Domain for AuthState {
    fn apply(
        &mut self,
        cmd: &Command,
        now: i64,
        _jobs: &JobsState,
        dirty: &mut Dirty,
    ) -> Option<Result<CommandResultV1, Refusal>> {
        Some(match cmd {
            Command::CreateToken(c) => self.create(c, now, dirty),
            Command::RevokeToken(r) => self.revoke(&r.id, now, dirty),
            _ => return None,
        })
    }
}

impl AuthState {
    fn create(&mut self, c: &CreateTokenV1, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let mut rec = c.record.clone().ok_or_else(|| bad("record", "missing"))?;
        let t = rec.token.as_mut().ok_or_else(|| bad("token", "missing"))?;
        if aidos_api::auth::parse_token(&aidos_api::auth::format_token(&t.id, &"0".repeat(64))).is_err()
            || t.id == aidos_api::auth::ROOT_ID
            || t.id.starts_with("job-")
        {
            return Err(bad("id", format!("{:?} is not a token id", t.id)));
        }
        if rec.secret_hash.len() != 32 {
            return Err(bad("secret_hash", "expected 32 bytes"));
        }
        if Role::try_from(t.role).unwrap_or(Role::Unspecified) == Role::Unspecified {
            return Err(bad("role", "missing"));
        }
        if self.tokens.contains_key(&t.id) {
            return Err(refuse(tonic::Code::AlreadyExists, format!("token {} exists", t.id)));
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Err(refuse(
                tonic::Code::ResourceExhausted,
                format!("the cluster holds {MAX_TOKENS} tokens, the most it keeps"),
            ));
        }
        t.created_at_ms = now;
        t.revoked_at_ms = 0;
        let token = t.clone();
        dirty.mark(Table::Rows, token_key(&token.id));
        self.tokens.insert(token.id.clone(), rec);
        Ok(CommandResultV1 { token: Some(token), ..Default::default() })
    }

    fn revoke(&mut self, id: &str, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let rec = self.tokens.get_mut(id).ok_or_else(|| not_found(format!("token {id} not found")))?;
        let t = rec.token.get_or_insert_default();
        if t.revoked_at_ms == 0 {
            t.revoked_at_ms = now;
            dirty.mark(Table::Rows, token_key(id));
        }
        Ok(CommandResultV1 { token: Some(t.clone()), ..Default::default() })
    }
}

#[cfg(test)]
mod tests {
    use aidos_api::v1::{RevokeTokenV1, Token};

    use super::*;

    fn create(st: &mut AuthState, id: &str, now: i64) -> Result<CommandResultV1, Refusal> {
        let rec = TokenRecordV1 {
            token: Some(Token { id: id.into(), name: "ann".into(), role: Role::Member as i32, ..Default::default() }),
            secret_hash: vec![7; 32],
        };
        st.create(&CreateTokenV1 { record: Some(rec) }, now, &mut Dirty::default())
    }

    #[test]
    fn create_revoke_and_refusals() {
        let mut st = AuthState::default();
        let t = create(&mut st, "t1", 5).unwrap().token.unwrap();
        assert_eq!(t.created_at_ms, 5);
        assert_eq!(create(&mut st, "t1", 6).unwrap_err().code, tonic::Code::AlreadyExists);
        assert_eq!(create(&mut st, "root", 6).unwrap_err().code, tonic::Code::InvalidArgument);
        assert_eq!(create(&mut st, "job-3", 6).unwrap_err().code, tonic::Code::InvalidArgument);
        assert_eq!(create(&mut st, "a_b", 6).unwrap_err().code, tonic::Code::InvalidArgument);
        let cmd = Command::RevokeToken(RevokeTokenV1 { id: "t1".into() });
        let mut dirty = Dirty::default();
        let r = st.apply(&cmd, 9, &JobsState::default(), &mut dirty).unwrap().unwrap();
        assert_eq!(r.token.unwrap().revoked_at_ms, 9);
        assert_eq!(dirty.rows.len(), 1);
        // A second revocation keeps the first time and writes nothing.
        let mut dirty = Dirty::default();
        let r = st.apply(&cmd, 12, &JobsState::default(), &mut dirty).unwrap().unwrap();
        assert_eq!(r.token.unwrap().revoked_at_ms, 9);
        assert!(dirty.rows.is_empty());
        let missing = Command::RevokeToken(RevokeTokenV1 { id: "t9".into() });
        let e = st.apply(&missing, 12, &JobsState::default(), &mut Dirty::default()).unwrap().unwrap_err();
        assert_eq!(e.code, tonic::Code::NotFound);
        // The secret hash survives a snapshot round trip.
        let mut snap = StateSnapshotV1::default();
        st.snapshot(&mut snap);
        let mut back = AuthState::default();
        back.restore(&mut snap);
        assert_eq!(back.tokens["t1"].secret_hash, vec![7; 32]);
    }
}
