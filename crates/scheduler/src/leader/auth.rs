//! The leader path of tokens: create (the leader draws the id and the secret and proposes only the secret's
//! hash) and revoke. Who may do either is the pure `aidos_api::auth::authorize_token_admin`.

use aidos_api::auth::{self, Principal};
use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{
    CreateTokenRequest, CreateTokenResponse, CreateTokenV1, JoinRequest, JoinResponse, RenewCertRequest, RevokeTokenV1,
    RevokeWorkerResponse, RevokeWorkerV1, Role, Token, TokenRecordV1, WorkerCert,
};

use super::LeaderHandler;
use crate::error::SchedulerError;

/// Longest lifetime a token may be given: 10 years.
pub const MAX_TTL_SECS: i64 = 10 * 365 * 24 * 3600;

fn invalid(m: String) -> SchedulerError {
    SchedulerError::InvalidArgument(m)
}

/// The token `by` asks for, validated: everything but its id and times. Pure.
pub fn token_for(by: &Principal, r: &CreateTokenRequest) -> Result<Token, SchedulerError> {
    let role = Role::try_from(r.role).unwrap_or(Role::Unspecified);
    if role == Role::Unspecified {
        return Err(invalid("role: missing (viewer, member, admin, worker or infer)".into()));
    }
    if !r.deployments.is_empty() && !matches!(role, Role::Member | Role::Admin | Role::Infer) {
        return Err(invalid(format!(
            "deployments: a {} token calls no deployment (only admin, member and infer tokens do)",
            auth::role_name(role)
        )));
    }
    if r.join && role != Role::Worker {
        return Err(invalid(format!("join: a join token is a worker's (role worker), not {}", auth::role_name(role))));
    }
    if r.deployments.len() > 64 {
        return Err(invalid(format!("deployments: {} named, at most 64", r.deployments.len())));
    }
    for d in &r.deployments {
        crate::state::check_name("deployments", d).map_err(|e| invalid(e.message))?;
    }
    let name = r.name.trim();
    if name.is_empty() || name.len() > auth::MAX_NAME || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!("name: {:?} is not a valid name (1-64 characters, no spaces)", r.name)));
    }
    let project = if r.project.is_empty() { auth::DEFAULT_PROJECT } else { r.project.as_str() };
    if project != auth::ALL_PROJECTS {
        crate::state::check_name("project", project).map_err(|e| invalid(e.message))?;
    }
    if !(0..=MAX_TTL_SECS).contains(&r.ttl_seconds) {
        return Err(invalid(format!("ttl_seconds: {} (expected 0..={MAX_TTL_SECS}; 0: never expires)", r.ttl_seconds)));
    }
    auth::authorize_token_admin(by, role, project).map_err(|e| SchedulerError::PermissionDenied(e.to_string()))?;
    Ok(Token {
        name: name.to_string(),
        role: role as i32,
        project: project.to_string(),
        // Never more than the creator has: an admin without `process` cannot mint a token with it.
        allow_process: !r.no_process && by.allow_process && matches!(role, Role::Member | Role::Admin),
        created_by: by.name.clone(),
        deployments: r.deployments.clone(),
        join: r.join,
        ..Default::default()
    })
}

/// Longest a join token may live: a day (it is a bearer secret on its way to a new machine).
pub const MAX_JOIN_TTL_SECS: i64 = 24 * 3600;
/// A join token's lifetime when none is asked for.
pub const DEFAULT_JOIN_TTL_SECS: i64 = 3600;

impl LeaderHandler {
    pub async fn create_token(
        &self,
        by: &Principal,
        r: CreateTokenRequest,
    ) -> Result<CreateTokenResponse, SchedulerError> {
        let mut token = token_for(by, &r)?;
        token.id = auth::new_token_id();
        let ttl = match (r.join, r.ttl_seconds) {
            (true, 0) => DEFAULT_JOIN_TTL_SECS,
            (true, t) if t > MAX_JOIN_TTL_SECS => {
                return Err(invalid(format!("ttl_seconds: a join token lives at most {MAX_JOIN_TTL_SECS} s")));
            }
            (_, t) => t,
        };
        if ttl > 0 {
            token.expires_at_ms = aidos_api::now_ms() + ttl * 1000;
        }
        // ... and never outliving the creator's own token.
        if by.expires_at_ms != 0 && (token.expires_at_ms == 0 || token.expires_at_ms > by.expires_at_ms) {
            token.expires_at_ms = by.expires_at_ms;
        }
        let secret = auth::new_secret();
        let record = TokenRecordV1 { token: Some(token.clone()), secret_hash: auth::hash_secret(&secret).to_vec() };
        let res = self.core.propose(Command::CreateToken(CreateTokenV1 { record: Some(record) })).await?;
        Ok(CreateTokenResponse { secret: auth::format_token(&token.id, &secret), token: res.token })
    }

    /// Revokes token `id`: its project's admins may, and so may its holder.
    pub async fn revoke_token(&self, by: &Principal, id: &str) -> Result<Token, SchedulerError> {
        let t = self
            .read(|st| st.auth.tokens.get(id).and_then(|r| r.token.clone()))
            .ok_or_else(|| SchedulerError::NotFound(format!("token {id} not found")))?;
        if by.token_id != t.id {
            let role = Role::try_from(t.role).unwrap_or(Role::Unspecified);
            auth::authorize_token_admin(by, role, &t.project)
                .map_err(|e| SchedulerError::PermissionDenied(e.to_string()))?;
        }
        let res = self.core.propose(Command::RevokeToken(RevokeTokenV1 { id: id.to_string() })).await?;
        Ok(res.token.unwrap_or_default())
    }

    /// The join token `presented` names, if it is one that may still be used (apply checks again, and uses it up
    /// exactly once).
    pub fn join_token(&self, presented: &str) -> Result<Token, SchedulerError> {
        let now = aidos_api::now_ms();
        let presented = auth::parse_token(presented)?;
        let known = self.read(|st| st.auth.tokens.get(&presented.id).cloned());
        let rec = known.ok_or_else(|| auth::Unauthenticated::Unknown(presented.id.clone()))?;
        let t = rec.token.clone().unwrap_or_default();
        if !auth::secret_matches(&presented.secret, &rec.secret_hash) {
            return Err(auth::Unauthenticated::WrongSecret(presented.id).into());
        }
        if !t.join {
            return Err(auth::Unauthenticated::Certificate(format!("token {} is not a join token", t.id)).into());
        }
        if t.revoked_at_ms != 0 {
            return Err(auth::Unauthenticated::Certificate(format!("join token {} was used or revoked", t.id)).into());
        }
        if t.expires_at_ms != 0 && t.expires_at_ms <= now {
            return Err(auth::Unauthenticated::Expired(t.id).into());
        }
        Ok(t)
    }

    /// A worker's certificate for its join token: the token is checked here (a clear refusal before anything is
    /// signed) and consumed by the command that records the certificate (so it buys one certificate, however
    /// many workers race with it).
    pub async fn join(&self, r: JoinRequest) -> Result<JoinResponse, SchedulerError> {
        let ca = self.worker_ca(&r.worker_id, &r.csr_pem)?;
        let t = self.join_token(&r.token)?;
        self.issue_worker_cert(ca, r.worker_id, &r.csr_pem, t.id, String::new()).await
    }

    /// A new certificate for worker `r.worker_id`, which presented its certificate `presented` (the auth layer
    /// refused the call unless it is valid, and apply checks again: a certificate revoked meanwhile renews nothing).
    pub async fn renew_worker_cert(
        &self,
        r: RenewCertRequest,
        presented: String,
    ) -> Result<JoinResponse, SchedulerError> {
        let ca = self.worker_ca(&r.worker_id, &r.csr_pem)?;
        self.issue_worker_cert(ca, r.worker_id, &r.csr_pem, String::new(), presented).await
    }

    /// The CA, once the request's worker id and signing request pass their checks.
    fn worker_ca(&self, worker_id: &str, csr_pem: &str) -> Result<&crate::core::NodeTls, SchedulerError> {
        let Some(ca) = self.core.ca() else {
            return Err(SchedulerError::Stale(
                "this cluster does not serve TLS: workers authenticate with worker tokens (--token)".into(),
            ));
        };
        if !aidos_api::tls::valid_name(worker_id) {
            return Err(invalid(format!("worker_id: {worker_id:?} is not a worker id")));
        }
        if csr_pem.len() > 16 << 10 {
            return Err(invalid("csr_pem: larger than 16 KiB".into()));
        }
        Ok(ca)
    }

    async fn issue_worker_cert(
        &self,
        ca: &crate::core::NodeTls,
        worker_id: String,
        csr_pem: &str,
        join_token: String,
        renews: String,
    ) -> Result<JoinResponse, SchedulerError> {
        let identity = aidos_api::tls::Identity::Worker(worker_id.clone());
        let issued =
            ca.ca.sign_request(csr_pem, &identity, ca.worker_cert_lifetime).map_err(|e| invalid(e.to_string()))?;
        let cert = WorkerCert {
            serial: issued.serial.clone(),
            worker_id,
            not_after_ms: issued.not_after_ms,
            join_token,
            renews,
            ..Default::default()
        };
        self.core.propose(Command::IssueWorkerCert(cert)).await?;
        Ok(JoinResponse {
            cert_pem: issued.cert_pem,
            ca_pem: ca.ca.cert_pem().to_string(),
            not_after_ms: issued.not_after_ms,
        })
    }

    /// Revokes every certificate of `worker_id`.
    pub async fn revoke_worker(&self, worker_id: &str) -> Result<RevokeWorkerResponse, SchedulerError> {
        let res = self.core.propose(Command::RevokeWorker(RevokeWorkerV1 { worker_id: worker_id.to_string() })).await?;
        Ok(RevokeWorkerResponse { certs: res.worker_certs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_requests_are_validated() {
        let root = Principal::root();
        let req = |role: Role, project: &str, ttl: i64| CreateTokenRequest {
            name: "ann".into(),
            role: role as i32,
            project: project.into(),
            ttl_seconds: ttl,
            no_process: false,
            deployments: vec![],
            join: false,
        };
        let t = token_for(&root, &req(Role::Member, "", 0)).unwrap();
        let join = |role| CreateTokenRequest { join: true, ..req(role, "*", 0) };
        assert!(token_for(&root, &join(Role::Worker)).unwrap().join);
        assert!(token_for(&root, &join(Role::Admin)).unwrap_err().to_string().contains("join"));
        assert_eq!((t.project.as_str(), t.allow_process, t.created_by.as_str()), ("default", true, "root"));
        assert!(!token_for(&root, &req(Role::Viewer, "a", 0)).unwrap().allow_process);
        assert!(!token_for(&root, &req(Role::Worker, "*", 0)).unwrap().allow_process);
        assert!(token_for(&root, &req(Role::Unspecified, "a", 0)).unwrap_err().to_string().contains("role"));
        assert!(token_for(&root, &req(Role::Member, "a b", 0)).unwrap_err().to_string().contains("project"));
        assert!(token_for(&root, &req(Role::Member, "a", -1)).unwrap_err().to_string().contains("ttl"));
        let mut no_name = req(Role::Member, "a", 0);
        no_name.name = " ".into();
        assert!(token_for(&root, &no_name).unwrap_err().to_string().contains("name"));
        let no_process_admin = Principal { token_id: "t1".into(), allow_process: false, ..Principal::root() };
        assert!(!token_for(&no_process_admin, &req(Role::Member, "a", 0)).unwrap().allow_process);
        let viewer = Principal { role: Role::Viewer, project: "a".into(), ..Principal::root() };
        assert!(matches!(token_for(&viewer, &req(Role::Viewer, "a", 0)), Err(SchedulerError::PermissionDenied(_))));
        let key = CreateTokenRequest { deployments: vec!["digits".into()], ..req(Role::Infer, "a", 0) };
        let t = token_for(&root, &key).unwrap();
        assert_eq!((t.deployments.as_slice(), t.allow_process), (&["digits".to_string()][..], false));
        let bad = CreateTokenRequest { deployments: vec!["no such".into()], ..req(Role::Infer, "a", 0) };
        assert!(token_for(&root, &bad).unwrap_err().to_string().contains("deployments"));
        let viewer_key = CreateTokenRequest { deployments: vec!["digits".into()], ..req(Role::Viewer, "a", 0) };
        assert!(token_for(&root, &viewer_key).unwrap_err().to_string().contains("calls no deployment"));
    }
}
