//! Issue #5, edge agents end to end: a control plane and two agents with different labels; a deployment to one
//! selector runs only on the matching agent; with the control plane stopped, that agent restarts and still serves
//! from its cache, and the telemetry it buffered meanwhile is uploaded when the control plane returns; a deployment
//! signed by another key is refused, one that fails its health check is rolled back, and the agent keeps serving
//! the last good model throughout; a good new version then replaces it. The control plane has an enrolment token:
//! an agent without it cannot enrol, and nobody without cam-1's credential can enrol, sync or download as cam-1.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aidos_api::edge_service_client::EdgeServiceClient;
use aidos_api::v1::*;
use common::*;

const TOKEN: &str = "s3cret-enrolment-token";

/// One inference on an agent: (HTTP status, model_version answered).
fn infer(agent: SocketAddr) -> (u16, String) {
    let row: Vec<String> = (0..784).map(|i| format!("{:.3}", (i % 13) as f32 / 13.0)).collect();
    let body =
        format!(r#"{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1,784],"data":[{}]}}]}}"#, row.join(","));
    let (status, resp) = http(agent, "POST", "/v2/models/digits/infer", &body);
    if status != 200 {
        return (status, resp);
    }
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 10]), "{resp}");
    (status, v["model_version"].as_str().unwrap_or("?").to_string())
}

struct Agent {
    proc: Proc,
    ready_file: std::path::PathBuf,
}

impl Agent {
    fn start(c: &Cluster, name: &str, labels: &str) -> Agent {
        Self::start_with(c, name, labels, TOKEN)
    }

    /// An agent without an enrolment token (for a control plane without one).
    fn start_open(c: &Cluster, name: &str, labels: &str) -> Agent {
        Self::start_with(c, name, labels, "")
    }

    fn start_with(c: &Cluster, name: &str, labels: &str, token: &str) -> Agent {
        let (proc, ready_file) = c.spawn_edge_agent(name, labels, &["--enrollment-token", token]);
        Agent { proc, ready_file }
    }

    fn restart(&mut self) {
        self.proc.sigterm();
        let _ = std::fs::remove_file(&self.ready_file);
        self.proc.start();
    }

    /// The agent's local address, once it serves.
    async fn addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(t) = std::fs::read_to_string(&self.ready_file)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&t)
            {
                return v["http"].as_str().unwrap().parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "agent not serving ({}): {}",
                self.proc.exit_status(),
                self.proc.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn device(c: &Cluster, name: &str) -> Option<EdgeDevice> {
    let mut e = EdgeServiceClient::new(c.any_channel().await);
    let l = e.list_devices(ListDevicesRequest { name: name.into() }).await.ok()?.into_inner();
    l.devices.into_iter().next()
}

async fn wait_for<T>(what: &str, within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status(d: &EdgeDevice) -> EdgeStatus {
    d.status.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_run_signed_deployments_offline_and_roll_back_bad_ones() {
    let mut c = start_cluster_with(1, &["--edge-enrollment-token", TOKEN]).await;
    c.start_worker("w1", "2", "");
    // Two versions of a small model.
    c.train_digits(2).await;

    // Export runs as an `export` job on the worker; the file is recorded on the version.
    let int8 = c.path().join("digits-2-int8.onnx");
    let (code, out, err) =
        c.cli(&["model", "export", "digits:2", "--on-cluster", "--quantize", "int8", "-o", int8.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("artifact `onnx-int8`"), "{out}");
    assert!(std::fs::metadata(&int8).unwrap().len() > 1000);
    let (code, out, err) = c.cli(&["model", "export", "digits:2", "--on-cluster"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = c.cli(&["model", "export", "nosuch:1", "--on-cluster"]);
    assert_ne!(code, 0);
    assert!(err.contains("nosuch"), "{err}");
    let jobs = c.list_all().await;
    let exports: Vec<_> =
        jobs.iter().filter(|j| j.spec.as_ref().is_some_and(|s| s.kind == JobKind::Export as i32)).collect();
    assert_eq!(exports.len(), 2, "{exports:#?}");
    assert!(exports.iter().all(|j| state_of(j) == JobState::Succeeded), "{exports:#?}");

    let mut cams = Agent::start(&c, "cam-1", "fleet=cams,site=paris");
    let mut doors = Agent::start(&c, "door-1", "fleet=doors");
    let (cam_addr, door_addr) = (cams.addr().await, doors.addr().await);
    wait_for("both enrolled", Duration::from_secs(30), async || {
        (device(&c, "cam-1").await.is_some() && device(&c, "door-1").await.is_some()).then_some(())
    })
    .await;

    // Without the token nobody enrols; with a credential of its own nobody speaks for cam-1.
    let mut e = EdgeServiceClient::new(c.any_channel().await);
    let rogue = |device: &str, token: &str| EnrollRequest {
        device: device.into(),
        credential: vec![7; 32],
        enrollment_token: token.into(),
        ..Default::default()
    };
    let s = e.enroll(rogue("rogue-1", "")).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("enrolment token missing"), "{s:?}");
    let s = e.enroll(rogue("cam-1", "guess")).await.unwrap_err();
    assert!(s.message().contains("another credential"), "{s:?}");
    let s = e
        .sync(EdgeSyncRequest { device: "cam-1".into(), credential: vec![7; 32], ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert!(device(&c, "rogue-1").await.is_none());
    assert!(device(&c, "cam-1").await.unwrap().credential_hash.is_empty(), "the credential hash is listed");

    // Deploy to one selector: only the matching agent runs it.
    let (code, out, err) = c.cli(&["edge", "deploy", "digits:1", "--selector", "fleet=cams", "--export-on-cluster"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signed"), "{out}");
    assert!(err.contains("export job"), "digits:1 had no ONNX artifact: exported by a job: {err}");
    wait_for("serving v1 on cam-1", Duration::from_secs(30), async || {
        (infer(cam_addr) == (200, "1".into())).then_some(())
    })
    .await;
    let d = wait_for("cam-1 reported", Duration::from_secs(10), async || {
        device(&c, "cam-1").await.filter(|d| status(d).version == 1 && status(d).health == "ok")
    })
    .await;
    assert_eq!(status(&d).model, "digits");
    assert!(["tract", "ort"].contains(&status(&d).runtime.as_str()), "{d:?}");
    assert_eq!(infer(door_addr).0, 404, "the other fleet runs it too");
    let artifact1 = status(&d).artifact.clone();
    let s = e
        .download(DownloadRequest {
            device: "cam-1".into(),
            artifact: artifact1,
            max_bytes: 1024,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "a download without the device's credential: {s:?}");
    let (code, out, _) = c.cli(&["edge", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("cam-1") && out.contains("digits (digits:1)") && out.contains("door-1"), "{out}");
    // Devices and edge deployments belong to a project: another project's readers see none of them.
    let (code, out, err) = c.cli(&["--project", "other", "edge", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("cam-1") && !out.contains("digits"), "{out}");

    // The control plane goes away; the agent restarts and still serves from its cache; telemetry is buffered.
    c.kill_node(1);
    cams.restart();
    let cam_addr = cams.addr().await;
    wait_for("serving from the cache", Duration::from_secs(20), async || (infer(cam_addr).0 == 200).then_some(()))
        .await;
    for _ in 0..20 {
        assert_eq!(infer(cam_addr), (200, "1".into()));
    }
    tokio::time::sleep(Duration::from_millis(600)).await; // at least one telemetry interval closes offline
    c.restart_node(1);
    c.wait_leader(Duration::from_secs(30)).await;
    let total = wait_for("offline telemetry uploaded", Duration::from_secs(30), async || {
        let (code, out, _) = c.cli(&["-o", "json", "edge", "telemetry", "cam-1"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let n = v["requests"].as_u64()?;
        (code == 0 && n >= 21).then_some(n)
    })
    .await;
    eprintln!("telemetry after reconnecting: {total} requests");

    // A deployment signed by another key (a rogue control plane) is refused; v1 keeps serving.
    let key_file = c.path().join("node1").join("edge-signing.key");
    let good_key = std::fs::read(&key_file).unwrap();
    c.kill_node(1);
    std::fs::write(&key_file, [42u8; 32]).unwrap();
    c.restart_node(1);
    c.wait_leader(Duration::from_secs(30)).await;
    let (code, _, err) = c.cli(&["edge", "deploy", "digits:2", "--selector", "fleet=cams"]);
    assert_eq!(code, 0, "{err}");
    let d = wait_for("the rogue deployment refused", Duration::from_secs(30), async || {
        device(&c, "cam-1").await.filter(|d| status(d).last_error.contains("does not verify"))
    })
    .await;
    assert_eq!(status(&d).version, 1, "{d:?}");
    assert_eq!(infer(cam_addr), (200, "1".into()));

    // Back to the real key; a signed deployment whose health check fails is rolled back.
    c.kill_node(1);
    std::fs::write(&key_file, &good_key).unwrap();
    c.restart_node(1);
    c.wait_leader(Duration::from_secs(30)).await;
    let (code, out, err) = c.cli(&["-o", "json", "model", "show", "digits:2"]);
    assert_eq!(code, 0, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    let artifact = m["artifacts"]["onnx"].as_str().unwrap_or_else(|| panic!("no onnx artifact: {out}")).to_string();
    let mut e = EdgeServiceClient::new(c.any_channel().await);
    e.deploy(EdgeDeployRequest {
        name: "digits".into(),
        selector: [("fleet".to_string(), "cams".to_string())].into(),
        model: "digits".into(),
        version: 2,
        artifact,
        sample_input: vec![0.5; 784],
        sample_output: vec![1000.0; 10],
        requested: "digits:2 (wrong health sample)".into(),
    })
    .await
    .unwrap();
    let d = wait_for("the failing deployment rolled back", Duration::from_secs(30), async || {
        device(&c, "cam-1").await.filter(|d| status(d).last_error.contains("health check failed"))
    })
    .await;
    assert_eq!((status(&d).version, status(&d).health.as_str()), (1, "ok (rolled back)"), "{d:?}");
    assert_eq!(infer(cam_addr), (200, "1".into()));

    // A good deployment of version 2 replaces version 1.
    let (code, _, err) = c.cli(&["edge", "deploy", "digits:2", "--selector", "fleet=cams"]);
    assert_eq!(code, 0, "{err}");
    wait_for("serving v2", Duration::from_secs(30), async || (infer(cam_addr) == (200, "2".into())).then_some(()))
        .await;
    assert_eq!(infer(door_addr).0, 404);
    let d = device(&c, "door-1").await.unwrap();
    assert!(status(&d).model.is_empty(), "{d:?}");
}

/// "Last seen" is the leader's memory of the agents' syncs: every node answers it, followers by asking the leader.
/// An idle agent commits nothing after its first report, so a recent `last_seen_ms` well past `status_at_ms` can
/// only come from the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reports_when_a_device_was_last_seen() {
    let c = start_cluster(3).await;
    let mut cam = Agent::start_open(&c, "cam-9", "fleet=cams");
    cam.addr().await;
    let first = wait_for("cam-9 reported", Duration::from_secs(30), async || {
        device(&c, "cam-9").await.filter(|d| d.status_at_ms > 0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for addr in c.addrs() {
        let mut e = EdgeServiceClient::new(channel(&addr).await.unwrap());
        let d = e.list_devices(ListDevicesRequest { name: "cam-9".into() }).await.unwrap().into_inner().devices;
        let d = d.first().unwrap_or_else(|| panic!("{addr}: no cam-9"));
        assert_eq!(d.status_at_ms, first.status_at_ms, "an idle agent committed a report");
        assert!(
            d.last_seen_ms >= d.status_at_ms + 1000,
            "{addr}: last seen {} vs report {}",
            d.last_seen_ms,
            d.status_at_ms
        );
    }
}
