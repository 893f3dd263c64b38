//! Replicas and the gateway in one process, no scheduler: a replica reports its endpoints (retrying only what the
//! reporter calls retryable); the gateway's routes follow what it is told to route (added, re-pointed, re-added
//! after an unload, removed) without touching local models; the gateway front answers through its replicas and
//! its sync loop stops with the server.

use std::sync::Arc;
use std::time::Duration;

use aidos_runtime::{DataType, Instance, ModelMetadata, ModelRuntime, RuntimeKind, Tensor, TensorSpec};
use aidos_serve::gateway::{self, GatewayConfig, RemoteModel, RouteSource, Routes};
use aidos_serve::remote::Pool;
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
    Replica::start(&cfg, doubler()).await.unwrap()
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
        endpoints: replicas.iter().map(|r| r.endpoints().grpc.clone()).collect(),
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
    let mut routes = Routes::new(repo.clone());
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
    let cfg = GatewayConfig { server: ServerConfig { http: any, grpc: any }, refresh: Duration::from_millis(20) };
    let gw = gateway::start(&cfg, Fixed(vec![route("m", &[&r])])).await.unwrap();
    // A client of the gateway: its metadata answers once the sync loop has added the route.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let client = loop {
        match Pool::connect("m", 1, 8, &[gw.grpc.to_string()]).await {
            Ok(p) => break p,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("the gateway never routed m:1: {e}"),
        }
    };
    assert_eq!(client.infer(row()).await.unwrap()[0].data, [2.0, -4.0]);
    tokio::time::timeout(Duration::from_secs(5), gw.shutdown()).await.expect("the sync loop stops with the server");
    r.shutdown().await;
}
