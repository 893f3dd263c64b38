//! Replicas and the gateway in one process, no scheduler: a replica reports its endpoints (retrying only what the
//! reporter calls retryable); the gateway's routes follow what it is told to route (added, re-pointed, re-added
//! after an unload, removed) without touching local models; the gateway front answers through its replicas and
//! its sync loop stops with the server; it hands HTTP and gRPC requests to replicas unchanged (answers and
//! refusals alike), counts them per replica in its own metrics, and routes around a replica that went away; a
//! replica's HTTP front runs protobuf infer bodies as its gRPC front runs the message, and the gateway sends gRPC
//! requests that way (to a replica that takes none, over gRPC).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aidos_api::auth::{Credentials, format_token, hash_secret, new_secret};
use aidos_serve::auth::{Authorizer, Key, KeyTable, Keys};

use aidos_runtime::{DataType, Instance, ModelMetadata, ModelRuntime, RuntimeKind, Tensor, TensorSpec};
use aidos_serve::gateway::{self, GatewayAccess, GatewayConfig, RemoteModel, RouteSource, Routes};
use aidos_serve::grpc::pb::model_infer_request::InferInputTensor;
use aidos_serve::grpc::pb::{self, grpc_inference_service_client::GrpcInferenceServiceClient};
use aidos_serve::http::PROTOBUF;
use aidos_serve::remote::{Pool, ReplicaAddr};
use aidos_serve::replica::{EndpointReporter, Endpoints, Replica, ReplicaConfig};
use aidos_serve::{BatchConfig, Metrics, Repository, ServerConfig};

/// y = 2x, one row of two values.
struct Doubler(ModelMetadata);

struct DoublerInstance;

impl Instance for DoublerInstance {
    fn run(&mut self, inputs: &[Tensor]) -> aidos_runtime::Result<Vec<Tensor>> {
        Ok(vec![Tensor { shape: inputs[0].shape.clone(), data: inputs[0].data.iter().map(|v| v * 2.0).collect() }])
    }
}

impl ModelRuntime for Doubler {
    fn metadata(&self) -> &ModelMetadata {
        &self.0
    }
    fn instance(&self) -> aidos_runtime::Result<Box<dyn Instance>> {
        Ok(Box::new(DoublerInstance))
    }
}

fn doubler() -> Arc<dyn ModelRuntime> {
    let spec = |n: &str| TensorSpec { name: n.into(), datatype: DataType::Fp32, shape: vec![-1, 2] };
    Arc::new(Doubler(ModelMetadata { platform: "test".into(), inputs: vec![spec("x")], outputs: vec![spec("y")] }))
}

/// The keys every server here accepts: `svc` (every model: what the gateway presents to replicas) and `client`
/// (model `m` only), as token strings.
fn tokens() -> &'static (String, String, String) {
    static T: OnceLock<(String, String, String)> = OnceLock::new();
    T.get_or_init(|| {
        let other = format_token("other", &new_secret());
        (format_token("svc", &new_secret()), format_token("client", &new_secret()), other)
    })
}

/// A second key for model `m`, beside `client`.
fn client2() -> &'static String {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| format_token("client2", &new_secret()))
}

fn table() -> Arc<dyn Authorizer> {
    let key = |token: &str, every: bool, models: &[&str]| {
        let secret = aidos_api::auth::parse_token(token).unwrap().secret;
        Key {
            hash: hash_secret(&secret),
            expires_at_ms: 0,
            every,
            models: models.iter().map(|m| m.to_string()).collect(),
        }
    };
    let (svc, client, other) = tokens();
    let t = KeyTable::new();
    t.replace(Keys {
        by_id: HashMap::from([
            ("svc".to_string(), key(svc, true, &[])),
            ("client".to_string(), key(client, false, &["m"])),
            ("other".to_string(), key(other, false, &["n"])),
            ("client2".to_string(), key(client2(), false, &["m"])),
        ]),
        public: HashSet::new(),
    });
    t
}

fn service() -> Credentials {
    Credentials::token(tokens().0.clone())
}

fn client_creds() -> Credentials {
    Credentials::token(tokens().1.clone())
}

fn access() -> GatewayAccess {
    GatewayAccess { auth: table(), creds: service(), key_limits: None }
}

async fn replica() -> Replica {
    let cfg = ReplicaConfig {
        deployment: "m".into(),
        version: 1,
        runtime: RuntimeKind::Tract,
        batch: BatchConfig::default(),
        advertise_host: "127.0.0.1".into(),
        drain_delay: Duration::from_millis(10),
        report_for: Duration::from_secs(5),
    };
    Replica::start(&cfg, doubler(), table()).await.unwrap()
}

/// Fails `retryable` times with a retryable error, then `refusals` times with a final one, then accepts.
struct Reporter {
    retryable: usize,
    refusals: usize,
    calls: Vec<Endpoints>,
}

impl EndpointReporter for Reporter {
    type Error = bool;
    async fn report(&mut self, ep: &Endpoints) -> Result<(), bool> {
        self.calls.push(ep.clone());
        if self.retryable > 0 {
            self.retryable -= 1;
            return Err(true);
        }
        if self.refusals > 0 {
            self.refusals -= 1;
            return Err(false);
        }
        Ok(())
    }
    fn retryable(e: &bool) -> bool {
        *e
    }
}

fn route(name: &str, replicas: &[&Replica]) -> RemoteModel {
    RemoteModel {
        name: name.into(),
        version: 1,
        runtime: RuntimeKind::Tract,
        max_batch: 8,
        endpoints: replicas
            .iter()
            .map(|r| ReplicaAddr { grpc: r.endpoints().grpc.clone(), http: r.endpoints().http.clone() })
            .collect(),
        canary_percent: 0,
    }
}

fn row() -> Vec<Tensor> {
    vec![Tensor { shape: vec![1, 2], data: vec![1.0, -2.0] }]
}

#[tokio::test]
async fn a_replica_reports_retrying_only_retryable_failures() {
    let r = replica().await;
    assert!(r.endpoints().http.starts_with("127.0.0.1:") && r.endpoints().grpc.starts_with("127.0.0.1:"));
    let mut rep = Reporter { retryable: 2, refusals: 0, calls: vec![] };
    r.report(&mut rep).await.unwrap();
    assert_eq!(rep.calls.len(), 3);
    assert!(rep.calls.iter().all(|e| e == r.endpoints()));
    let mut rep = Reporter { retryable: 1, refusals: 1, calls: vec![] };
    assert_eq!(r.report(&mut rep).await, Err(false));
    assert_eq!(rep.calls.len(), 2, "a final refusal is not retried");
    r.drain().await;
}

#[tokio::test]
async fn routes_follow_what_is_wanted_and_leave_local_models_alone() {
    let (a, b) = (replica().await, replica().await);
    let repo = Arc::new(Repository::new(Arc::new(Metrics::default())));
    repo.load("local", 1, RuntimeKind::Tract, doubler(), BatchConfig::default()).unwrap();
    let local = repo.get("local", 1).unwrap();
    let mut routes = Routes::new(repo.clone(), service());
    let (ea, eb) = (a.endpoints().grpc.clone(), b.endpoints().grpc.clone());

    assert_eq!(routes.sync(&[route("m", &[&a])]).await, [format!("m:1 added, replicas {ea}")]);
    let v = repo.resolve("m", "").unwrap();
    assert_eq!(v.backend.max_batch_size(), 8);
    assert_eq!(v.backend.metadata().inputs[0].name, "x");
    assert_eq!(v.backend.infer(row()).await.unwrap()[0].data, [2.0, -4.0]);

    assert_eq!(routes.sync(&[route("m", &[&a, &b])]).await, [format!("m:1 replicas {ea},{eb}")]);
    assert!(routes.sync(&[route("m", &[&a, &b])]).await.is_empty(), "nothing changed");

    // Unloaded through the repository API: added again on the next sync.
    repo.unload("m", None).unwrap();
    assert_eq!(routes.sync(&[route("m", &[&b])]).await, [format!("m:1 added, replicas {eb}")]);

    // A local model of the routed name and version is neither replaced nor removed.
    assert!(routes.sync(&[route("m", &[&b]), route("local", &[&a])]).await.is_empty());
    assert!(Arc::ptr_eq(&repo.get("local", 1).unwrap(), &local));

    // Not wanted (or left without endpoints): removed.
    assert_eq!(routes.sync(&[route("m", &[])]).await, ["m:1 removed"]);
    assert_eq!(repo.versions("m"), Vec::<u64>::new());
    assert!(Arc::ptr_eq(&repo.get("local", 1).unwrap(), &local));
    a.shutdown().await;
    b.shutdown().await;
}

struct Fixed(Vec<RemoteModel>);

impl RouteSource for Fixed {
    async fn routes(&mut self) -> Result<Vec<RemoteModel>, String> {
        Ok(self.0.clone())
    }
}

#[tokio::test]
async fn the_gateway_answers_through_its_replicas_and_stops_with_its_server() {
    let r = replica().await;
    let any = "127.0.0.1:0".parse().unwrap();
    let cfg = GatewayConfig { server: ServerConfig::plain(any, any), refresh: Duration::from_millis(20) };
    let gw = gateway::start(&cfg, Fixed(vec![route("m", &[&r])]), access()).await.unwrap();
    // A client of the gateway: its metadata answers once the sync loop has added the route.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let client = loop {
        let at = ReplicaAddr { grpc: gw.grpc.to_string(), http: gw.http.to_string() };
        match Pool::connect("m", 1, 8, &[at], Metrics::default().gateway(), &client_creds()).await {
            Ok(p) => break p,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("the gateway never routed m:1: {e}"),
        }
    };
    assert_eq!(client.infer(row()).await.unwrap()[0].data, [2.0, -4.0]);
    tokio::time::timeout(Duration::from_secs(5), gw.shutdown()).await.expect("the sync loop stops with the server");
    r.shutdown().await;
}

/// POSTs `body` to `http://ADDR/PATH` and answers (status, content type, body).
async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String, String) {
    post_as(addr, path, body, Some(&tokens().1)).await
}

/// [`post`] presenting `key` (None: no key).
async fn post_as(addr: std::net::SocketAddr, path: &str, body: &str, key: Option<&str>) -> (u16, String, String) {
    use hyper_util::client::legacy::Client;
    let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<axum::body::Body>();
    let mut req = axum::http::Request::post(format!("http://{addr}{path}"));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.header("content-type", "application/json").body(axum::body::Body::from(body.to_string())).unwrap();
    let r = client.request(req).await.unwrap();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let status = r.status().as_u16();
    let b = axum::body::to_bytes(axum::body::Body::new(r.into_body()), usize::MAX).await.unwrap();
    (status, ct, String::from_utf8_lossy(&b).into_owned())
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of the sample line that starts with `series` in OpenMetrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn the_gateway_forwards_requests_unchanged_counts_them_and_routes_around_a_lost_replica() {
    let (a, b) = (replica().await, replica().await);
    let any = "127.0.0.1:0".parse().unwrap();
    let cfg = GatewayConfig { server: ServerConfig::plain(any, any), refresh: Duration::from_millis(20) };
    let gw = gateway::start(&cfg, Fixed(vec![route("m", &[&a, &b])]), access()).await.unwrap();
    let json = r#"{"id":"q1","inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1.5,-2]}]}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, ct, body) = loop {
        let r = post(gw.http, "/v2/models/m/infer", json).await;
        if r.0 != 404 || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((status, ct.as_str()), (200, "application/json"), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], "q1");
    assert_eq!(v["model_name"], "m");
    assert_eq!(v["model_version"], "1");
    assert_eq!(v["outputs"][0]["data"], serde_json::json!([3.0, -4.0]));

    // Binary outputs: the replica's header length and raw bytes come back as they were.
    let bin = r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}],"parameters":{"binary_data_output":true}}"#;
    let (status, ct, _) = post(gw.http, "/v2/models/m/versions/1/infer", bin).await;
    assert_eq!((status, ct.as_str()), (200, "application/octet-stream"));

    // A refusal is the replica's, word for word.
    let bad = r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
    let direct = post(a.endpoints().http.parse().unwrap(), "/v2/models/m/infer", bad).await;
    let through = post(gw.http, "/v2/models/m/infer", bad).await;
    assert_eq!(direct.0, 400);
    assert_eq!(through, direct);

    // gRPC through the gateway, then both fronts' requests in the gateway's own metrics, per replica.
    let at = ReplicaAddr { grpc: gw.grpc.to_string(), http: gw.http.to_string() };
    let client = Pool::connect("m", 1, 8, &[at], Metrics::default().gateway(), &client_creds()).await.unwrap();
    for _ in 0..4 {
        assert_eq!(client.infer(row()).await.unwrap()[0].data, [2.0, -4.0]);
    }
    let m = get(gw.http, "/metrics").await;
    let count = |replica: &Replica, outcome: &str| {
        let series = format!(
            "aidos_gateway_requests_total{{model=\"m\",version=\"1\",replica=\"{}\",outcome=\"{outcome}\"}}",
            replica.endpoints().grpc
        );
        sample(&m, &series).unwrap_or_else(|| panic!("no {series} in\n{m}"))
    };
    assert_eq!(count(&a, "ok") + count(&b, "ok"), 6.0, "{m}");
    assert_eq!(count(&a, "refused") + count(&b, "refused"), 1.0);
    assert!(m.contains("aidos_gateway_request_seconds_count{model=\"m\",version=\"1\"} 7"), "{m}");

    // One replica goes away: every request is still answered (by the other), the lost one counted as failed.
    let lost = b.endpoints().grpc.clone();
    b.shutdown().await;
    for _ in 0..6 {
        let (status, _, body) = post(gw.http, "/v2/models/m/infer", json).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(client.infer(row()).await.unwrap()[0].data, [2.0, -4.0]);
    }
    let m = get(gw.http, "/metrics").await;
    let failed =
        format!("aidos_gateway_requests_total{{model=\"m\",version=\"1\",replica=\"{lost}\",outcome=\"failed\"}}");
    assert!(sample(&m, &failed).unwrap() >= 1.0, "{m}");
    assert!(sample(&m, "aidos_gateway_retries_total{model=\"m\",version=\"1\"}").unwrap() >= 1.0);
    gw.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn the_gateway_and_its_replicas_refuse_calls_without_a_key_that_may_make_them() {
    use aidos_serve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
    use aidos_serve::grpc::pb::{ModelMetadataRequest, ServerReadyRequest};
    let r = replica().await;
    let any = "127.0.0.1:0".parse().unwrap();
    let cfg = GatewayConfig { server: ServerConfig::plain(any, any), refresh: Duration::from_millis(20) };
    let gw = gateway::start(&cfg, Fixed(vec![route("m", &[&r])]), access()).await.unwrap();
    let json = r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while post(gw.http, "/v2/models/m/infer", json).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the gateway never routed m:1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (svc, client, other) = tokens();
    let forged = format_token("client", &new_secret());
    let replica_http: std::net::SocketAddr = r.endpoints().http.parse().unwrap();
    for (front, addr) in [("gateway", gw.http), ("replica", replica_http)] {
        for (key, want) in [(None, 401), (Some("aidos_nope"), 401), (Some(forged.as_str()), 401), (Some(other), 403)] {
            let (status, _, body) = post_as(addr, "/v2/models/m/infer", json, key).await;
            assert_eq!(status, want, "{front} with {key:?}: {body}");
            assert!(body.contains("\"error\""), "{body}");
        }
        assert_eq!(post_as(addr, "/v2/models/m/infer", json, Some(client)).await.0, 200, "{front}");
        assert_eq!(post_as(addr, "/v2/models/m/infer", json, Some(svc)).await.0, 200, "{front}");
        // Only a service key may load or unload models; probes and metrics need none.
        let (status, _, _) = post_as(addr, "/v2/repository/models/m/unload", "", Some(client)).await;
        assert_eq!(status, 403, "{front}");
        assert!(get(addr, "/v2/health/ready").await.starts_with("HTTP/1.1 200"), "{front}");
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200"), "{front}");
        let unauthorized = get(addr, "/v2/models/m").await;
        assert!(unauthorized.starts_with("HTTP/1.1 401"), "{unauthorized}");
        assert!(unauthorized.to_ascii_lowercase().contains("www-authenticate: bearer"), "{unauthorized}");
    }
    // gRPC: the same keys, in metadata (what tritonclient sends with `headers=`).
    let grpc_addr = format!("http://{}", gw.grpc);
    let mut g = GrpcInferenceServiceClient::connect(grpc_addr).await.unwrap();
    let meta = || tonic::Request::new(ModelMetadataRequest { name: "m".into(), version: String::new() });
    assert_eq!(g.model_metadata(meta()).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut as_other = meta();
    as_other.metadata_mut().insert("authorization", format!("Bearer {other}").parse().unwrap());
    assert_eq!(g.model_metadata(as_other).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    let mut as_client = meta();
    as_client.metadata_mut().insert("authorization", format!("Bearer {client}").parse().unwrap());
    assert_eq!(g.model_metadata(as_client).await.unwrap().into_inner().name, "m");
    assert!(g.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready, "readiness needs no key");
    gw.shutdown().await;
    r.shutdown().await;
}

#[tokio::test]
async fn a_key_over_its_limit_is_refused_with_a_retry_hint_and_other_keys_are_not() {
    let r = replica().await;
    let any = "127.0.0.1:0".parse().unwrap();
    let cfg = GatewayConfig { server: ServerConfig::plain(any, any), refresh: Duration::from_millis(20) };
    // One request every 10 s after a burst of 5: the test runs well inside one refill (a refusal is held for
    // its hint, at most 1 s, before it is answered).
    let limits = aidos_api::limits::LimitConfig { rate_per_sec: 0.1, burst: 5.0, max_in_flight: 0 };
    let access = GatewayAccess { key_limits: Some(limits), ..access() };
    let gw = gateway::start(&cfg, Fixed(vec![route("m", &[&r])]), access).await.unwrap();
    let json = r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#;
    let (svc, client, _) = tokens();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while post_as(gw.http, "/v2/models/m/infer", json, Some(svc)).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the gateway never routed m:1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `client` spends its burst of 5 (and what refills meanwhile), then is refused with a hint.
    let mut codes = Vec::new();
    for _ in 0..7 {
        codes.push(post_as(gw.http, "/v2/models/m/infer", json, Some(client)).await.0);
    }
    let ok = codes.iter().filter(|c| **c == 200).count();
    assert_eq!(ok, 5, "{codes:?}");
    assert!(codes[ok..].iter().all(|c| *c == 429), "refusals after the burst: {codes:?}");
    let raw = raw_post(gw.http, "/v2/models/m/infer", json, client).await;
    assert!(raw.starts_with("HTTP/1.1 429"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("retry-after: "), "{raw}");
    assert!(raw.contains("over its rate limit"), "{raw}");
    // Over gRPC too, with the hint in metadata.
    use aidos_serve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
    let mut g = GrpcInferenceServiceClient::connect(format!("http://{}", gw.grpc)).await.unwrap();
    let mut req =
        tonic::Request::new(aidos_serve::grpc::pb::ModelMetadataRequest { name: "m".into(), version: String::new() });
    req.metadata_mut().insert("authorization", format!("Bearer {client}").parse().unwrap());
    let e = g.model_metadata(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(e.metadata().get("retry-after-ms").is_some());
    // Another key has its own budget; a service key none.
    assert_eq!(post_as(gw.http, "/v2/models/m/infer", json, Some(client2())).await.0, 200);
    for _ in 0..20 {
        assert_eq!(post_as(gw.http, "/v2/models/m/infer", json, Some(svc)).await.0, 200);
    }
    gw.shutdown().await;
    r.shutdown().await;
}

/// A POST presenting `key`, answered as raw HTTP/1.1 text (status line and headers included).
async fn raw_post(addr: std::net::SocketAddr, path: &str, body: &str, key: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// POSTs `body` with `content_type` (presenting `key`, if any) and answers (status, headers, body).
async fn post_bytes(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    key: Option<&str>,
) -> (u16, axum::http::HeaderMap, axum::body::Bytes) {
    use hyper_util::client::legacy::Client;
    let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<axum::body::Body>();
    let mut req = axum::http::Request::post(format!("http://{addr}{path}")).header("content-type", content_type);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let r = client.request(req.body(axum::body::Body::from(body)).unwrap()).await.unwrap();
    let (parts, body) = r.into_parts();
    let b = axum::body::to_bytes(axum::body::Body::new(body), usize::MAX).await.unwrap();
    (parts.status.as_u16(), parts.headers, b)
}

/// A gRPC inference client of `addr` presenting `creds`.
async fn grpc_client(addr: &str, creds: &Credentials) -> GrpcInferenceServiceClient<aidos_api::auth::AuthChannel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    GrpcInferenceServiceClient::new(aidos_api::auth::with_credentials(ch, creds))
}

fn le(values: &[f32]) -> axum::body::Bytes {
    values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()
}

/// One input `x` of `shape` with `values`, for model `model`.
fn infer_request(model: &str, shape: Vec<i64>, values: &[f32]) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        id: "q".into(),
        inputs: vec![InferInputTensor { name: "x".into(), datatype: "FP32".into(), shape, ..Default::default() }],
        raw_input_contents: vec![le(values)],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_replica_runs_protobuf_bodies_as_its_grpc_front_does() {
    use prost::Message as _;
    let r = replica().await;
    let http: std::net::SocketAddr = r.endpoints().http.parse().unwrap();
    let key = Some(tokens().1.as_str());
    // The path names the model and wins over the message (the key was checked against the path).
    let body = infer_request("other", vec![1, 2], &[1.5, -2.0]).encode_to_vec();
    let (status, h, body) = post_bytes(http, "/v2/models/m/infer", PROTOBUF, body, key).await;
    assert_eq!((status, h.get("content-type").unwrap().to_str().unwrap()), (200, PROTOBUF));
    let resp = pb::ModelInferResponse::decode(body).unwrap();
    assert_eq!((resp.model_name.as_str(), resp.model_version.as_str(), resp.id.as_str()), ("m", "1", "q"));
    assert_eq!(resp.raw_output_contents, [le(&[3.0, -4.0])]);

    // A refusal: the HTTP status, and the gRPC front's code and message in grpc-status / grpc-message.
    let bad = infer_request("m", vec![1, 3], &[1.0, 2.0, 3.0]);
    let direct = grpc_client(&r.endpoints().grpc, &client_creds()).await.model_infer(bad.clone()).await.unwrap_err();
    assert_eq!(direct.code(), tonic::Code::InvalidArgument);
    let (status, h, _) = post_bytes(http, "/v2/models/m/infer", PROTOBUF, bad.encode_to_vec(), key).await;
    let st = tonic::Status::from_header_map(&h).expect("grpc-status");
    assert_eq!((status, st.code(), st.message()), (400, direct.code(), direct.message()));

    // Not a message at all: the handler's refusal.
    let (status, h, _) = post_bytes(http, "/v2/models/m/infer", PROTOBUF, vec![0xff; 8], key).await;
    let st = tonic::Status::from_header_map(&h).expect("grpc-status");
    assert_eq!((status, st.code()), (400, tonic::Code::InvalidArgument));
    assert!(st.message().contains("not a protobuf ModelInferRequest"), "{st:?}");
    // No key, and a key for another model: the key check's refusals, in gRPC's terms too.
    for (who, want) in [(None, 401), (Some(tokens().2.as_str()), 403)] {
        let creds = who.map(|t| Credentials::token(t.to_string())).unwrap_or_default();
        let direct = grpc_client(&r.endpoints().grpc, &creds).await.model_infer(bad.clone()).await.unwrap_err();
        let (status, h, _) = post_bytes(http, "/v2/models/m/infer", PROTOBUF, bad.encode_to_vec(), who).await;
        let st = tonic::Status::from_header_map(&h).expect("grpc-status");
        assert_eq!((status, st.code(), st.message()), (want, direct.code(), direct.message()));
    }
    r.shutdown().await;
}

#[tokio::test]
async fn the_gateway_sends_grpc_requests_as_protobuf_bodies_and_grpc_to_a_replica_that_takes_none() {
    use axum::response::IntoResponse;
    use prost::Message as _;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let r = replica().await;
    // Stands in for the replica's HTTP front (its gRPC front is the real one). Mode 0: answers a protobuf body
    // itself (y = [42]); 1: refuses it with a gRPC status, as a replica does; 2: refuses it as a release before
    // protobuf bodies did (400, JSON); 3: refuses it without a gRPC status otherwise (413, as axum's body limit
    // does). Records (content type, authorization, model version) of each.
    let mode = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, String, String)>::new()));
    let handler = {
        let (mode, seen) = (mode.clone(), seen.clone());
        move |h: axum::http::HeaderMap, body: axum::body::Bytes| {
            let (mode, seen) = (mode.clone(), seen.clone());
            async move {
                let req = pb::ModelInferRequest::decode(body).unwrap();
                let hv = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                seen.lock().unwrap().push((hv("content-type"), hv("authorization"), req.model_version.clone()));
                match mode.load(SeqCst) {
                    0 => {
                        let resp = pb::ModelInferResponse {
                            model_name: "m".into(),
                            model_version: "1".into(),
                            raw_output_contents: vec![le(&[42.0])],
                            ..Default::default()
                        };
                        ([("content-type", PROTOBUF)], resp.encode_to_vec()).into_response()
                    }
                    1 => (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [("grpc-status", "8"), ("grpc-message", "queue%20full")],
                        "{}",
                    )
                        .into_response(),
                    2 => {
                        (axum::http::StatusCode::BAD_REQUEST, r#"{"error":"expected value at line 1"}"#).into_response()
                    }
                    _ => (axum::http::StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded").into_response(),
                }
            }
        }
    };
    let app = axum::Router::new().route("/v2/models/m/versions/1/infer", axum::routing::post(handler));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stub = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let mut to = route("m", &[&r]);
    to.endpoints[0].http = stub.to_string();
    let any = "127.0.0.1:0".parse().unwrap();
    let cfg = GatewayConfig { server: ServerConfig::plain(any, any), refresh: Duration::from_millis(20) };
    let gw = gateway::start(&cfg, Fixed(vec![to]), access()).await.unwrap();
    let mut c = grpc_client(&gw.grpc.to_string(), &client_creds()).await;
    let row = infer_request("m", vec![1, 2], &[1.0, -2.0]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        match c.model_infer(row.clone()).await {
            Err(s) if s.code() == tonic::Code::NotFound && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            r => break r.unwrap().into_inner(),
        }
    };
    // Mode 0: the answer is the stub's, so the request went to the HTTP front, with the gateway's own key.
    assert_eq!(first.raw_output_contents, [le(&[42.0])]);
    let svc = format!("Bearer {}", tokens().0);
    assert_eq!(seen.lock().unwrap().last().unwrap(), &(PROTOBUF.to_string(), svc, "1".to_string()));

    // Mode 1: the replica's gRPC status is the client's.
    mode.store(1, SeqCst);
    let s = c.model_infer(row.clone()).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::ResourceExhausted);
    assert!(s.message().contains("queue full"), "{s:?}");

    // Mode 3: answered by the real replica over gRPC, this once.
    mode.store(3, SeqCst);
    assert_eq!(c.model_infer(row.clone()).await.unwrap().into_inner().raw_output_contents, [le(&[2.0, -4.0])]);
    mode.store(0, SeqCst);
    assert_eq!(c.model_infer(row.clone()).await.unwrap().into_inner().raw_output_contents, [le(&[42.0])]);

    // Mode 2: answered by the real replica over gRPC, and that endpoint is sent gRPC from then on.
    mode.store(2, SeqCst);
    let n = seen.lock().unwrap().len();
    for _ in 0..3 {
        assert_eq!(c.model_infer(row.clone()).await.unwrap().into_inner().raw_output_contents, [le(&[2.0, -4.0])]);
    }
    assert_eq!(seen.lock().unwrap().len(), n + 1);
    gw.shutdown().await;
    r.shutdown().await;
}
