//! Who may call a serving front: the contract ([`Authorizer`]) every HTTP route and gRPC method checks before it
//! does anything, and its two implementations: [`Open`] (a standalone `aidos serve`, an edge agent) and
//! [`KeyTable`] (a deployment's replicas and the gateway, fed by the scheduler's `ServeService.Routes`).
//!
//! Keys are aidos tokens (`aidos_<id>_<secret>`, `aidos_api::auth`), presented as `Authorization: Bearer <key>`
//! on HTTP and as `authorization` metadata on gRPC (tritonclient: `headers={"Authorization": "Bearer ..."}`).
//! The table holds, per token id, the BLAKE3 hash of its secret, its expiry and the deployments it may call; a
//! request costs one map lookup and one hash of 64 bytes.
//!
//! Invariants:
//! - Deny by default: until the table is first loaded every guarded request is refused (UNAVAILABLE, so a client
//!   retries), and a path with no rule ([`http_rule`]) is refused for everyone.
//! - A revoked token is simply absent from the next table: the front refuses it as soon as it has re-read the
//!   scheduler (the gateway every refresh, 250 ms; replicas every [`REFRESH`]).
//! - When the scheduler cannot be reached the front keeps the last table it had (and still checks expiry on its
//!   own clock): serving goes on, nobody new gets in.
//! - A key may also be limited in rate and requests in flight (the gateway's `--key-rate-limit-per-sec`, ...:
//!   `aidos_api::limits`, per key, service keys exempt): over them a request is refused at once with 429 /
//!   RESOURCE_EXHAUSTED and a retry hint, and spends nothing of another key's budget.
//! - Liveness, readiness and `/metrics` need no key (probes and Prometheus carry none; the metrics name
//!   deployments, never data).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aidos_api::limits::{Limiter, Permit, Refused};

use crate::error::ServeError;

/// How often a replica re-reads its keys (the gateway: its route refresh).
pub const REFRESH: Duration = Duration::from_millis(500);

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Nothing: health and metrics.
    Nothing,
    /// A key that may call this model (deployment).
    Model(&'a str),
    /// Any valid key (server metadata).
    AnyKey,
    /// A service key, one that may call every model (the repository's index, load and unload).
    Service,
}

/// The contract: may a request presenting `authorization` (the header's value, if any) do what `need` says?
/// Ok answers the key the request is counted against for per-key limits (`crate::ServerState::key_limits`):
/// `None` when it needs none (an open server, a public model, a route that needs no key) or presented a service
/// key (exempt, as the root token is on the control plane).
pub trait Authorizer: Send + Sync + 'static {
    fn check(&self, authorization: Option<&[u8]>, need: Need<'_>) -> Result<Option<String>, ServeError>;
}

/// No check: a standalone server the operator runs for themselves.
pub struct Open;

impl Authorizer for Open {
    fn check(&self, _: Option<&[u8]>, _: Need<'_>) -> Result<Option<String>, ServeError> {
        Ok(None)
    }
}

/// One accepted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// BLAKE3 of the secret.
    pub hash: [u8; 32],
    /// 0: never.
    pub expires_at_ms: i64,
    /// Every model (the root token, worker tokens: what gateways present to replicas).
    pub every: bool,
    /// Otherwise these.
    pub models: HashSet<String>,
}

/// Every key a front accepts now, and the models anyone may call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    pub by_id: HashMap<String, Key>,
    pub public: HashSet<String>,
}

/// The keys of a front, replaced whole by its refresh loop.
#[derive(Default)]
pub struct KeyTable {
    keys: RwLock<Option<Arc<Keys>>>,
}

impl KeyTable {
    /// An empty table that refuses everything until [`KeyTable::replace`] first fills it.
    pub fn new() -> Arc<KeyTable> {
        Arc::new(KeyTable::default())
    }

    pub fn replace(&self, keys: Keys) {
        *self.keys.write().expect("key table lock") = Some(Arc::new(keys));
    }

    /// Whether the table was ever loaded.
    pub fn loaded(&self) -> bool {
        self.keys.read().expect("key table lock").is_some()
    }
}

impl Authorizer for KeyTable {
    fn check(&self, authorization: Option<&[u8]>, need: Need<'_>) -> Result<Option<String>, ServeError> {
        if need == Need::Nothing {
            return Ok(None);
        }
        let keys = self.keys.read().expect("key table lock").clone();
        let Some(keys) = keys else {
            return Err(ServeError::Unavailable(
                "this server".into(),
                "its keys have not been read from the scheduler yet; retry".into(),
            ));
        };
        decide(&keys, authorization, need, now_ms())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The rule, given the keys: pure. Ok: the key to count the request against (see [`Authorizer::check`]).
pub fn decide(
    keys: &Keys,
    authorization: Option<&[u8]>,
    need: Need<'_>,
    now_ms: i64,
) -> Result<Option<String>, ServeError> {
    let model = match need {
        Need::Nothing => return Ok(None),
        Need::Model(m) if keys.public.contains(m) => return Ok(None),
        Need::Model(m) => Some(m),
        Need::AnyKey | Need::Service => None,
    };
    let Some(raw) = authorization else {
        return Err(ServeError::Unauthenticated(
            "no key: send `Authorization: Bearer <key>` (make one with `aidos token create --role infer`)".into(),
        ));
    };
    let raw = std::str::from_utf8(raw).map_err(|_| ServeError::Unauthenticated("malformed key".into()))?;
    let t = aidos_api::auth::parse_token(raw).map_err(|e| ServeError::Unauthenticated(e.to_string()))?;
    let unknown = || ServeError::Unauthenticated(format!("unknown key `{}` (revoked, or never made)", t.id));
    let key = keys.by_id.get(&t.id).ok_or_else(unknown)?;
    if !aidos_api::auth::secret_matches(&t.secret, &key.hash) {
        return Err(unknown());
    }
    if key.expires_at_ms != 0 && key.expires_at_ms <= now_ms {
        return Err(ServeError::Unauthenticated(format!("key `{}` has expired", t.id)));
    }
    let allowed = match (need, model) {
        (Need::Service, _) => key.every,
        (_, Some(m)) => key.every || key.models.contains(m),
        _ => true,
    };
    if allowed {
        Ok((!key.every).then_some(t.id))
    } else {
        let what = model.map_or("load or unload models".to_string(), |m| format!("call deployment `{m}`"));
        Err(ServeError::PermissionDenied(format!("key `{}` may not {what}", t.id)))
    }
}

impl Keys {
    /// The keys the scheduler's `ServeService.Routes` answered (hashes of any other length are skipped).
    pub fn from_routes(r: &aidos_api::v1::RoutesResponse) -> Keys {
        let by_id = r
            .keys
            .iter()
            .filter_map(|k| {
                let key = Key {
                    hash: <[u8; 32]>::try_from(k.secret_hash.as_slice()).ok()?,
                    expires_at_ms: k.expires_at_ms,
                    every: k.every_deployment,
                    models: k.deployments.iter().cloned().collect(),
                };
                Some((k.token_id.clone(), key))
            })
            .collect();
        let public = r.deployments.iter().filter(|d| d.public).map(|d| d.name.clone()).collect();
        Keys { by_id, public }
    }
}

/// What each HTTP route (axum's route template) needs; `None`: the path has no rule and is refused. `model` is the
/// route's `{model}` parameter.
pub fn http_rule<'a>(template: &str, model: Option<&'a str>) -> Option<Need<'a>> {
    Some(match template {
        "/v2/health/live" | "/v2/health/ready" | "/metrics" => Need::Nothing,
        "/v2" => Need::AnyKey,
        // The index names every model the server holds (a gateway: every project's deployments).
        "/v2/repository/index" => Need::Service,
        "/v2/models/{model}"
        | "/v2/models/{model}/versions/{version}"
        | "/v2/models/{model}/ready"
        | "/v2/models/{model}/versions/{version}/ready"
        | "/v2/models/{model}/infer"
        | "/v2/models/{model}/versions/{version}/infer" => Need::Model(model?),
        "/v2/repository/models/{model}/load" | "/v2/repository/models/{model}/unload" => Need::Service,
        _ => return None,
    })
}

/// What each gRPC method of `inference.GRPCInferenceService` needs (`model`: the request's model name); `None`:
/// no rule (refused).
pub fn grpc_rule<'a>(method: &str, model: &'a str) -> Option<Need<'a>> {
    Some(match method {
        "ServerLive" | "ServerReady" => Need::Nothing,
        "ServerMetadata" => Need::AnyKey,
        "ModelReady" | "ModelMetadata" | "ModelInfer" => Need::Model(model),
        _ => return None,
    })
}

/// Admits a request of `key` (what [`Authorizer::check`] answered) under `limits`: the permit holds its place
/// among the key's requests in flight until dropped. A refusal is held for its retry hint before it is answered
/// (`aidos_api::limits::hold_for`, at most `MAX_HELD` at once), so a client that ignores the hint is slowed to the
/// pace it was asked for instead of spending the front's CPU on refusals.
pub(crate) async fn admit(limits: Option<&Arc<Limiter>>, key: Option<String>) -> Result<Option<Permit>, ServeError> {
    let (Some(l), Some(key)) = (limits, key) else { return Ok(None) };
    match l.admit(&key) {
        Ok(permit) => Ok(permit),
        Err(r) => {
            let retry_after_ms = match &r {
                Refused::Rate { retry_after } => retry_after.as_millis().max(1) as u64,
                Refused::InFlight { .. } => 10,
            };
            let message = r.status(&key, l.config()).message().to_string();
            if let Some((wait, _slot)) = l.hold(&r) {
                tokio::time::sleep(wait).await;
            }
            Err(ServeError::OverLimit { message, retry_after_ms })
        }
    }
}

/// Checks a gRPC request of `method` against the server's authorizer and per-key limits; the permit is to be held
/// while the request runs.
pub(crate) async fn check_grpc<T>(
    s: &crate::ServerState,
    method: &str,
    model: &str,
    r: &tonic::Request<T>,
) -> Result<Option<Permit>, tonic::Status> {
    let need = grpc_rule(method, model)
        .ok_or_else(|| tonic::Status::permission_denied(format!("{method}: no access rule (refused)")))?;
    let authorization = r.metadata().get(aidos_api::auth::AUTHORIZATION).map(|v| v.as_bytes());
    let key = s.auth.check(authorization, need)?;
    Ok(admit(s.key_limits.as_ref(), key).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (Keys, String, String, String) {
        let (s1, s2, s3) =
            (aidos_api::auth::new_secret(), aidos_api::auth::new_secret(), aidos_api::auth::new_secret());
        let key = |s: &str, expires_at_ms, every, models: &[&str]| Key {
            hash: aidos_api::auth::hash_secret(s),
            expires_at_ms,
            every,
            models: models.iter().map(|m| m.to_string()).collect(),
        };
        let by_id = HashMap::from([
            ("t1".to_string(), key(&s1, 0, false, &["digits"])),
            ("t2".to_string(), key(&s2, 1_000, false, &["digits"])),
            ("root".to_string(), key(&s3, 0, true, &[])),
        ]);
        let public = HashSet::from(["demo".to_string()]);
        let tok = |id: &str, s: &str| format!("Bearer {}", aidos_api::auth::format_token(id, s));
        (Keys { by_id, public }, tok("t1", &s1), tok("t2", &s2), tok("root", &s3))
    }

    fn code<T>(r: Result<T, ServeError>) -> u16 {
        r.map_or_else(|e| e.http_status(), |_| 200)
    }

    #[test]
    fn keys_are_checked_for_the_model_asked_for() {
        let (k, t1, t2, root) = keys();
        let d = |a: Option<&str>, need| code(decide(&k, a.map(str::as_bytes), need, 500));
        assert_eq!(d(Some(&t1), Need::Model("digits")), 200);
        assert_eq!(decide(&k, Some(t1.as_bytes()), Need::Model("digits"), 0).unwrap().as_deref(), Some("t1"));
        assert_eq!(
            decide(&k, Some(root.as_bytes()), Need::Model("digits"), 0).unwrap(),
            None,
            "service keys: no limits"
        );
        assert_eq!(d(Some(&t1), Need::Model("other")), 403);
        assert_eq!(d(Some(&t1), Need::AnyKey), 200);
        assert_eq!(d(Some(&t1), Need::Service), 403);
        assert_eq!(d(Some(&root), Need::Service), 200);
        assert_eq!(d(Some(&root), Need::Model("other")), 200);
        assert_eq!(d(None, Need::Model("digits")), 401);
        assert_eq!(d(None, Need::Model("demo")), 200, "a public deployment");
        assert_eq!(d(None, Need::Nothing), 200);
        assert_eq!(d(Some("Bearer nope"), Need::Model("digits")), 401);
        let wrong = format!("Bearer {}", aidos_api::auth::format_token("t1", &aidos_api::auth::new_secret()));
        assert_eq!(d(Some(&wrong), Need::Model("digits")), 401);
        let gone = format!("Bearer {}", aidos_api::auth::format_token("t9", &aidos_api::auth::new_secret()));
        assert_eq!(d(Some(&gone), Need::Model("digits")), 401);
        assert_eq!(d(Some(&t2), Need::Model("digits")), 200, "not expired at 500 ms");
        assert_eq!(code(decide(&k, Some(t2.as_bytes()), Need::Model("digits"), 1_000)), 401, "expired at 1000 ms");
        let e = decide(&k, None, Need::Model("digits"), 0).unwrap_err().to_string();
        assert!(e.contains("Authorization: Bearer"), "{e}");
        let e = decide(&k, Some(t1.as_bytes()), Need::Model("other"), 0).unwrap_err().to_string();
        assert!(e.contains("t1") && e.contains("other"), "{e}");
    }

    #[test]
    fn an_unloaded_table_refuses_and_an_open_server_does_not() {
        let t = KeyTable::new();
        assert_eq!(code(t.check(None, Need::Model("digits"))), 503);
        assert_eq!(code(t.check(None, Need::Nothing)), 200);
        t.replace(Keys::default());
        assert!(t.loaded());
        assert_eq!(code(t.check(None, Need::Model("digits"))), 401);
        assert_eq!(code(Open.check(None, Need::Service)), 200);
    }

    #[test]
    fn every_route_and_method_has_a_rule_and_unknown_ones_have_none() {
        for template in crate::http::ROUTES {
            assert!(http_rule(template, Some("m")).is_some(), "{template} has no rule");
        }
        assert_eq!(http_rule("/v2/secret", None), None);
        let methods = crate::grpc::method_names();
        assert!(methods.len() >= 6, "{methods:?}");
        for m in &methods {
            assert!(grpc_rule(m, "m").is_some(), "{m} has no rule");
        }
        assert_eq!(grpc_rule("RepositoryModelLoad", "m"), None);
    }
}
