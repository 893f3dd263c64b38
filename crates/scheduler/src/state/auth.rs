//! The auth domain: API tokens (table `Rows`, `k/<token id>`) and the certificates the cluster CA issued to
//! workers (`c/<serial>`). A token record holds the BLAKE3 hash of its secret, never the secret (the leader draws
//! the secret, hashes it, proposes the record and answers the secret once).
//!
//! Invariants:
//! - Token ids are unique and never reused: a create of an existing id is refused (the leader draws ids at
//!   random; a collision is refused rather than overwriting another token).
//! - A revoked token stays revoked: its record keeps `revoked_at_ms` (so `aidos token list --all` shows it) and a
//!   second revocation changes nothing.
//! - The root token and job tokens are not records here (`aidos_api::auth`).
//! - A join token is used at most once: issuing a worker certificate for it revokes it in the same command, and
//!   an issue for a used, revoked, expired or non-join token is refused (two workers racing with one token: one
//!   gets a certificate).
//! - A revoked worker certificate stays revoked (until it expires); the auth layer refuses a certificate whose
//!   serial is not here, and an expired one.
//! - A renewal (`WorkerCert.renews`) stands on a valid certificate of the same worker, and retires the worker's
//!   other live certificates: a worker holds at most two (the one it presented and the new one). Every issue drops
//!   the certificates that expired (by the command's time, so every node drops the same ones).

use std::collections::BTreeMap;

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{CommandResultV1, CreateTokenV1, Role, StateSnapshotV1, Token, TokenRecordV1, WorkerCert};
use prost::Message;

use super::{Dirty, Domain, JobsState, Refusal, RowKind, Rows, Table, bad, not_found, refuse};

/// Most stored tokens (revoked ones included) the state keeps: bounds the domain.
pub const MAX_TOKENS: usize = 10_000;
const TOKEN_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "k/", snapshot_field: 15 };
/// Most worker certificates kept (revoked ones included).
pub const MAX_WORKER_CERTS: usize = 10_000;
const CERT_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "c/", snapshot_field: 19 };

pub fn token_key(id: &str) -> String {
    format!("k/{id}")
}

pub fn cert_key(serial: &str) -> String {
    format!("c/{serial}")
}

/// Stored tokens by id; worker certificates by serial.
#[derive(Debug, Default, Clone)]
pub struct AuthState {
    pub tokens: BTreeMap<String, TokenRecordV1>,
    pub worker_certs: BTreeMap<String, WorkerCert>,
}

impl Rows for AuthState {
    const ROWS: &'static [RowKind] = &[TOKEN_ROWS, CERT_ROWS];

    fn row(&self, _table: Table, key: &str) -> Option<Vec<u8>> {
        if let Some(serial) = key.strip_prefix(CERT_ROWS.prefix) {
            return self.worker_certs.get(serial).map(|c| c.encode_to_vec());
        }
        self.tokens.get(key.strip_prefix(TOKEN_ROWS.prefix)?).map(|t| t.encode_to_vec())
    }

    fn load_row(&mut self, _table: Table, key: &str, bytes: &[u8]) -> Result<(), prost::DecodeError> {
        if key.starts_with(CERT_ROWS.prefix) {
            let c = WorkerCert::decode(bytes)?;
            self.worker_certs.insert(c.serial.clone(), c);
            return Ok(());
        }
        let r = TokenRecordV1::decode(bytes)?;
        self.tokens.insert(r.token.as_ref().map(|t| t.id.clone()).unwrap_or_default(), r);
        Ok(())
    }

    fn keys(&self) -> Vec<(Table, String)> {
        let tokens = self.tokens.keys().map(|k| (Table::Rows, token_key(k)));
        tokens.chain(self.worker_certs.keys().map(|k| (Table::Rows, cert_key(k)))).collect()
    }

    fn snapshot(&self, out: &mut StateSnapshotV1) {
        out.tokens = self.tokens.values().cloned().collect();
        out.worker_certs = self.worker_certs.values().cloned().collect();
    }

    fn restore(&mut self, s: &mut StateSnapshotV1) {
        for r in std::mem::take(&mut s.tokens) {
            self.tokens.insert(r.token.as_ref().map(|t| t.id.clone()).unwrap_or_default(), r);
        }
        for c in std::mem::take(&mut s.worker_certs) {
            self.worker_certs.insert(c.serial.clone(), c);
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
            Command::UseJoinToken(r) => {
                self.use_join(&r.id, now, dirty).map(|t| CommandResultV1 { token: Some(t), ..Default::default() })
            }
            Command::RevokeToken(r) => self.revoke(&r.id, now, dirty),
            Command::IssueWorkerCert(c) => self.issue_worker_cert(c, now, dirty),
            Command::RevokeWorker(r) => self.revoke_worker(&r.worker_id, now, dirty),
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

    /// Records `c` and consumes its join token.
    fn issue_worker_cert(&mut self, c: &WorkerCert, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        if c.serial.is_empty() || c.serial.len() > 64 || !c.serial.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("serial", format!("{:?} is not a certificate serial", c.serial)));
        }
        if !aidos_api::tls::valid_name(&c.worker_id) {
            return Err(bad("worker_id", format!("{:?} is not a worker id", c.worker_id)));
        }
        if self.worker_certs.contains_key(&c.serial) {
            return Err(refuse(tonic::Code::AlreadyExists, format!("certificate {} exists", c.serial)));
        }
        if !c.renews.is_empty() {
            // A renewal stands on the certificate it replaces: this worker's, not revoked, not expired.
            self.cert_valid(&c.renews, &c.worker_id).map_err(|why| refuse(tonic::Code::Unauthenticated, why))?;
            if self.worker_certs.get(&c.renews).is_some_and(|r| r.not_after_ms != 0 && r.not_after_ms <= now) {
                let why =
                    format!("certificate {} of worker {} expired: join again with a join token", c.renews, c.worker_id);
                return Err(refuse(tonic::Code::Unauthenticated, why));
            }
        }
        // Retired: every expired certificate (it can no longer complete a handshake), and on a renewal the worker's
        // other certificates but the one it renews, so a worker holds at most two live ones whatever it asks for.
        // Revoked ones still valid stay, to keep refusing them.
        let retired: Vec<String> = self
            .worker_certs
            .values()
            .filter(|w| {
                let expired = w.not_after_ms != 0 && w.not_after_ms <= now;
                let replaced =
                    !c.renews.is_empty() && w.worker_id == c.worker_id && w.serial != c.renews && w.revoked_at_ms == 0;
                expired || replaced
            })
            .map(|w| w.serial.clone())
            .collect();
        if self.worker_certs.len() - retired.len() >= MAX_WORKER_CERTS {
            return Err(refuse(
                tonic::Code::ResourceExhausted,
                format!("the cluster holds {MAX_WORKER_CERTS} worker certificates, the most it keeps"),
            ));
        }
        if c.renews.is_empty() {
            self.use_join(&c.join_token, now, dirty)?;
        }
        for serial in retired {
            dirty.mark(Table::Rows, cert_key(&serial));
            self.worker_certs.remove(&serial);
        }
        let cert = WorkerCert { issued_at_ms: now, revoked_at_ms: 0, ..c.clone() };
        dirty.mark(Table::Rows, cert_key(&cert.serial));
        self.worker_certs.insert(cert.serial.clone(), cert.clone());
        Ok(CommandResultV1 { worker_certs: vec![cert], ..Default::default() })
    }

    /// Uses up join token `id` (a worker's or a device's admission): refused unless it is a join token that is
    /// neither used, revoked nor expired. Exactly once, whatever races to use it: apply is serial.
    fn use_join(&mut self, id: &str, now: i64, dirty: &mut Dirty) -> Result<Token, Refusal> {
        let t = match self.tokens.get_mut(id).and_then(|r| r.token.as_mut()) {
            Some(t) if t.join => t,
            _ => return Err(refuse(tonic::Code::Unauthenticated, "not a join token".to_string())),
        };
        if t.revoked_at_ms != 0 {
            return Err(refuse(tonic::Code::Unauthenticated, format!("join token {} was used or revoked", t.id)));
        }
        if t.expires_at_ms != 0 && t.expires_at_ms <= now {
            return Err(refuse(tonic::Code::Unauthenticated, format!("join token {} expired", t.id)));
        }
        t.revoked_at_ms = now;
        dirty.mark(Table::Rows, token_key(id));
        Ok(t.clone())
    }

    /// Revokes every certificate of `worker_id` (NOT_FOUND when it has none).
    fn revoke_worker(&mut self, worker_id: &str, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let mut certs = Vec::new();
        for c in self.worker_certs.values_mut().filter(|c| c.worker_id == worker_id) {
            if c.revoked_at_ms == 0 {
                c.revoked_at_ms = now;
                dirty.mark(Table::Rows, cert_key(&c.serial));
            }
            certs.push(c.clone());
        }
        if certs.is_empty() {
            return Err(not_found(format!("no certificate was issued to worker {worker_id}")));
        }
        Ok(CommandResultV1 { worker_certs: certs, ..Default::default() })
    }

    /// Whether the certificate `serial` is one the cluster issued and has not revoked.
    pub fn cert_valid(&self, serial: &str, worker_id: &str) -> Result<(), String> {
        match self.worker_certs.get(serial) {
            None => Err(format!("certificate {serial} was not issued by this cluster")),
            Some(c) if c.worker_id != worker_id => Err(format!("certificate {serial} names another worker")),
            Some(c) if c.revoked_at_ms != 0 => Err(format!("the certificate of worker {worker_id} was revoked")),
            Some(_) => Ok(()),
        }
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
    use aidos_api::v1::RevokeTokenV1;

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

    #[test]
    fn a_valid_certificate_renews_itself_expired_ones_are_dropped_and_a_revoked_one_renews_nothing() {
        let mut st = AuthState::default();
        let join = TokenRecordV1 {
            token: Some(Token { id: "j1".into(), role: Role::Worker as i32, join: true, ..Default::default() }),
            secret_hash: vec![1; 32],
        };
        st.create(&CreateTokenV1 { record: Some(join) }, 1, &mut Dirty::default()).unwrap();
        let cert = |serial: &str, worker: &str, token: &str, renews: &str, not_after| WorkerCert {
            serial: serial.into(),
            worker_id: worker.into(),
            join_token: token.into(),
            renews: renews.into(),
            not_after_ms: not_after,
            ..Default::default()
        };
        let issue = |st: &mut AuthState, c: WorkerCert, now, dirty: &mut Dirty| {
            st.apply(&Command::IssueWorkerCert(c), now, &JobsState::default(), dirty).unwrap()
        };
        issue(&mut st, cert("0a", "w1", "j1", "", 100), 5, &mut Dirty::default()).unwrap();
        // Another worker's certificate, or one never issued, renews nothing.
        let e = issue(&mut st, cert("0b", "w2", "", "0a", 200), 60, &mut Dirty::default()).unwrap_err();
        assert_eq!(e.code, tonic::Code::Unauthenticated, "{e:?}");
        let e = issue(&mut st, cert("0b", "w1", "", "ff", 200), 60, &mut Dirty::default()).unwrap_err();
        assert_eq!(e.code, tonic::Code::Unauthenticated, "{e:?}");
        // Renewed before it expires: both valid until the old one runs out.
        issue(&mut st, cert("0b", "w1", "", "0a", 200), 60, &mut Dirty::default()).unwrap();
        assert!(st.cert_valid("0a", "w1").is_ok() && st.cert_valid("0b", "w1").is_ok());
        // The next renewal, after 0a expired, drops it (its row deleted from storage).
        let mut dirty = Dirty::default();
        issue(&mut st, cert("0c", "w1", "", "0b", 300), 150, &mut dirty).unwrap();
        assert!(!st.worker_certs.contains_key("0a"));
        assert!(dirty.rows.contains(&(Table::Rows, cert_key("0a"))));
        assert_eq!(st.worker_certs.len(), 2);
        // Renewing from 0b again retires 0c: however often a worker asks, it holds two live certificates.
        for (i, serial) in ["0d", "0e", "0f"].into_iter().enumerate() {
            issue(&mut st, cert(serial, "w1", "", "0b", 300), 160 + i as i64, &mut Dirty::default()).unwrap();
            assert_eq!(st.worker_certs.keys().collect::<Vec<_>>(), ["0b", serial]);
        }
        // An expired certificate renews nothing, even one still stored.
        let e = issue(&mut st, cert("10", "w1", "", "0b", 400), 200, &mut Dirty::default()).unwrap_err();
        assert!(e.message.contains("expired"), "{e:?}");
        // Revoked: the worker's certificates renew nothing.
        let revoke = Command::RevokeWorker(aidos_api::v1::RevokeWorkerV1 { worker_id: "w1".into() });
        st.apply(&revoke, 170, &JobsState::default(), &mut Dirty::default()).unwrap().unwrap();
        let e = issue(&mut st, cert("11", "w1", "", "0f", 400), 180, &mut Dirty::default()).unwrap_err();
        assert!(e.message.contains("revoked"), "{e:?}");
    }

    #[test]
    fn a_join_token_issues_one_certificate_and_revoking_the_worker_revokes_it() {
        let mut st = AuthState::default();
        let join = |id: &str, expires| TokenRecordV1 {
            token: Some(Token {
                id: id.into(),
                role: Role::Worker as i32,
                join: true,
                expires_at_ms: expires,
                ..Default::default()
            }),
            secret_hash: vec![1; 32],
        };
        for (id, exp) in [("j1", 0), ("j2", 10)] {
            st.create(&CreateTokenV1 { record: Some(join(id, exp)) }, 1, &mut Dirty::default()).unwrap();
        }
        create(&mut st, "plain", 1).unwrap();
        let cert = |serial: &str, token: &str| WorkerCert {
            serial: serial.into(),
            worker_id: "w1".into(),
            join_token: token.into(),
            not_after_ms: 99,
            ..Default::default()
        };
        let issue = |st: &mut AuthState, c: WorkerCert, now| {
            st.apply(&Command::IssueWorkerCert(c), now, &JobsState::default(), &mut Dirty::default()).unwrap()
        };
        let got = issue(&mut st, cert("0a", "j1"), 5).unwrap();
        assert_eq!(got.worker_certs[0].issued_at_ms, 5);
        assert!(st.cert_valid("0a", "w1").is_ok());
        assert!(st.cert_valid("0a", "w2").is_err(), "names another worker");
        assert!(st.cert_valid("0b", "w1").is_err(), "not issued");
        // Used once: the second exchange is refused, as are an expired, a plain and an unknown token.
        assert_eq!(issue(&mut st, cert("0b", "j1"), 6).unwrap_err().code, tonic::Code::Unauthenticated);
        assert_eq!(issue(&mut st, cert("0b", "j2"), 11).unwrap_err().code, tonic::Code::Unauthenticated);
        assert_eq!(issue(&mut st, cert("0b", "plain"), 6).unwrap_err().code, tonic::Code::Unauthenticated);
        assert_eq!(issue(&mut st, cert("0b", "nope"), 6).unwrap_err().code, tonic::Code::Unauthenticated);
        assert_eq!(issue(&mut st, cert("zz", "j2"), 6).unwrap_err().code, tonic::Code::InvalidArgument);
        assert!(st.tokens["j1"].token.as_ref().unwrap().revoked_at_ms == 5, "consumed");
        // A device's enrolment uses a join token up the same way: once, and only a join token.
        create(&mut st, "plain2", 1).unwrap();
        st.create(&CreateTokenV1 { record: Some(join("j3", 0)) }, 1, &mut Dirty::default()).unwrap();
        let use_join = |st: &mut AuthState, id: &str| {
            let cmd = Command::UseJoinToken(aidos_api::v1::UseJoinTokenV1 { id: id.into() });
            st.apply(&cmd, 8, &JobsState::default(), &mut Dirty::default()).unwrap()
        };
        assert_eq!(use_join(&mut st, "j3").unwrap().token.unwrap().revoked_at_ms, 8);
        assert_eq!(use_join(&mut st, "j3").unwrap_err().code, tonic::Code::Unauthenticated, "used once");
        assert_eq!(use_join(&mut st, "plain2").unwrap_err().code, tonic::Code::Unauthenticated);
        assert_eq!(st.tokens["plain2"].token.as_ref().unwrap().revoked_at_ms, 0, "a plain token is left alone");
        let revoke = Command::RevokeWorker(aidos_api::v1::RevokeWorkerV1 { worker_id: "w1".into() });
        let r = st.apply(&revoke, 7, &JobsState::default(), &mut Dirty::default()).unwrap().unwrap();
        assert_eq!(r.worker_certs[0].revoked_at_ms, 7);
        assert!(st.cert_valid("0a", "w1").unwrap_err().contains("revoked"));
        let none = Command::RevokeWorker(aidos_api::v1::RevokeWorkerV1 { worker_id: "w9".into() });
        let e = st.apply(&none, 7, &JobsState::default(), &mut Dirty::default()).unwrap().unwrap_err();
        assert_eq!(e.code, tonic::Code::NotFound);
        let mut snap = StateSnapshotV1::default();
        st.snapshot(&mut snap);
        let mut back = AuthState::default();
        back.restore(&mut snap);
        assert_eq!(back.worker_certs["0a"].revoked_at_ms, 7);
    }
}
