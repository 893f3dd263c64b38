use std::sync::Arc;

use aidos_api::auth_service_server::AuthService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, leader, ok};
use crate::auth::principal;
use crate::core::Core;
use crate::queries;

pub struct Auth(pub Arc<Core>);

#[tonic::async_trait]
impl AuthService for Auth {
    async fn create_token(&self, r: Request<CreateTokenRequest>) -> Res<CreateTokenResponse> {
        let (p, _) = principal(&r)?;
        ok(leader(&self.0)?.create_token(&p, r.into_inner()).await?)
    }

    async fn list_tokens(&self, r: Request<ListTokensRequest>) -> Res<ListTokensResponse> {
        let (p, _) = principal(&r)?;
        ok(leader(&self.0)?.read(|st| queries::list_tokens(st, &p, r.get_ref())))
    }

    async fn revoke_token(&self, r: Request<RevokeTokenRequest>) -> Res<Token> {
        let (p, _) = principal(&r)?;
        ok(leader(&self.0)?.revoke_token(&p, &r.get_ref().id).await?)
    }

    async fn who_am_i(&self, r: Request<WhoAmIRequest>) -> Res<WhoAmIResponse> {
        let (p, _) = principal(&r)?;
        ok(WhoAmIResponse {
            name: p.name,
            role: p.role as i32,
            project: p.project,
            token_id: p.token_id,
            allow_process: p.allow_process,
            expires_at_ms: p.expires_at_ms,
        })
    }
}

pub struct Audit(pub Arc<Core>);

#[tonic::async_trait]
impl aidos_api::audit_service_server::AuditService for Audit {
    async fn list(&self, r: Request<ListAuditRequest>) -> Res<ListAuditResponse> {
        let (p, project) = principal(&r)?;
        let every = p.project == aidos_api::auth::ALL_PROJECTS;
        let records =
            leader(&self.0)?.read(|st| crate::audit::list(st.audit.records.iter(), r.get_ref(), &project, every));
        ok(ListAuditResponse { records })
    }

    async fn append(&self, r: Request<AppendAuditRequest>) -> Res<AppendAuditResponse> {
        leader(&self.0)?;
        crate::audit::append(&self.0, r.into_inner().records).await?;
        ok(AppendAuditResponse {})
    }
}
