//! The scheduler's HTTP API: JSON for tools that speak HTTP rather than gRPC, on a listener of its own
//! (`SchedulerConfig::http`). Every node serves it from its own applied state (a follower may lag the leader by a
//! heartbeat), behind the same tokens and rules as the gRPC API (`auth::check_access`); it is not rate-limited.
//!
//! - `GET /v1/http_sd`: Prometheus HTTP service discovery (`http_sd_configs`): one target group per ready serving
//!   replica, its HTTP address (where `/metrics` is) with labels `deployment`, `version`, `generation`, `replica`
//!   (the job), `worker` and `canary`. A replica that restarts elsewhere shows at its new address on the next
//!   refresh. Read access; Prometheus presents the token with `authorization: {credentials: ...}`.

use std::sync::Arc;

use aidos_api::auth::Access;
use aidos_api::v1::Deployment;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::core::Core;
use crate::queries;
use crate::state::ClusterState;
use crate::state::serving::canary_generation;

/// The API's routes.
pub fn router(core: Arc<Core>) -> Router {
    Router::new().route("/v1/http_sd", get(http_sd)).with_state(core)
}

/// Serves [`router`] on `listener` until `stop` turns true.
pub async fn serve(listener: tokio::net::TcpListener, core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let addr = listener.local_addr().ok();
    let shutdown = async move {
        let _ = stop.wait_for(|v| *v).await;
    };
    if let Err(e) = axum::serve(listener, router(core)).with_graceful_shutdown(shutdown).await {
        tracing::error!(?addr, "HTTP API: {e}");
    }
}

/// Checks the caller against `access`, then answers `f` of the applied state.
fn read(core: &Core, headers: &HeaderMap, access: Access, f: impl FnOnce(&ClusterState) -> Value) -> Response {
    let st = &core.state.read().expect("state lock").state;
    match crate::auth::check_access(access, headers, &core.cfg.root_token, st, aidos_api::now_ms(), None) {
        Ok(_) => axum::Json(f(st)).into_response(),
        Err(s) => {
            let code = match s.code() {
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                _ => StatusCode::FORBIDDEN,
            };
            (code, axum::Json(json!({"error": s.message()}))).into_response()
        }
    }
}

async fn http_sd(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
    read(&core, &headers, Access::Read, |st| Value::Array(targets(&queries::deployment_views(st, ""))))
}

/// The target groups of [`http_sd`]. Pure.
pub fn targets(deployments: &[Deployment]) -> Vec<Value> {
    let mut out = Vec::new();
    for d in deployments {
        let canary = canary_generation(d);
        for r in d.replica_status.iter().filter(|r| r.ready && !r.http.is_empty()) {
            out.push(json!({
                "targets": [r.http],
                "labels": {
                    "deployment": d.name,
                    "version": r.version.to_string(),
                    "generation": r.generation.to_string(),
                    "replica": r.job_id,
                    "worker": r.worker_id,
                    "canary": (Some(r.generation) == canary).to_string(),
                },
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use aidos_api::v1::{Canary, Replica, ServeSpec};

    use super::*;

    #[test]
    fn only_ready_replicas_are_targets_labelled_with_where_they_belong() {
        let rep = |job: &str, g: u64, ready: bool, http: &str| Replica {
            job_id: job.into(),
            generation: g,
            version: g as u32,
            ready,
            http: http.into(),
            worker_id: "w1".into(),
            ..Default::default()
        };
        let d = Deployment {
            name: "mnist".into(),
            generation: 1,
            canary: Some(Canary {
                spec: Some(ServeSpec { version: 2, generation: 2, ..Default::default() }),
                ..Default::default()
            }),
            replica_status: vec![
                rep("job-1", 1, true, "10.0.0.1:80"),
                rep("job-2", 1, false, ""),
                rep("job-3", 2, true, "10.0.0.2:80"),
            ],
            ..Default::default()
        };
        let t = targets(&[d]);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["targets"], json!(["10.0.0.1:80"]));
        assert_eq!(t[0]["labels"]["deployment"], "mnist");
        assert_eq!(t[0]["labels"]["canary"], "false");
        assert_eq!(t[1]["labels"]["replica"], "job-3");
        assert_eq!(t[1]["labels"]["canary"], "true");
        assert_eq!(t[1]["labels"]["version"], "2");
    }
}
