//! Serving, "what must show": the standard Python `tritonclient` (HTTP and gRPC) queries health and metadata and
//! runs inference against an aidos server; outputs match the model run in-process. The same conformance checks
//! run against every runtime (tract, burn, and ort when built with `--features ort` and ORT_DYLIB_PATH is set) on
//! both fronts. Bad input of every kind gets a 4xx / INVALID_ARGUMENT or NOT_FOUND that names the problem, and
//! the server keeps serving.
//!
//! The model is the reference MLP trained briefly in-process on the real MNIST subset.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aidos_runtime::{ModelRuntime, RuntimeKind};
use aidos_serve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use aidos_serve::grpc::pb::{InferTensorContents, ModelInferRequest, model_infer_request::InferInputTensor};
use aidos_serve::{BatchConfig, Limits, Metrics, Repository, RunningServer, ServerConfig, ServerState};
use aidos_train::builtin::Standardization;
use aidos_train::onnx::{ExportOptions, export};
use aidos_train::*;
use common::python;

const ROWS: usize = 32; // = the default max_batch_size

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Fixture {
    onnx: Vec<u8>,
    burn: Arc<dyn ModelRuntime>,
    x: Vec<f32>,
    expected: Vec<f32>,
}

fn fixture() -> Fixture {
    let dir = repo_root().join("data/mnist10k");
    let raw = Dataset::from_idx_files(
        dir.join("images-idx3-ubyte.gz"),
        dir.join("labels-idx1-ubyte.gz"),
        Normalization::None,
    )
    .unwrap();
    let (train_raw, test_raw) = raw.split_at(3_000).unwrap();
    let pre = Standardization::fit(&train_raw.features);
    let mut f = train_raw.features.clone();
    pre.apply(&mut f);
    let train_ds = Dataset::new(f, train_raw.labels.clone(), train_raw.shape.clone()).unwrap();
    let mut cfg = TrainConfig::new(ModelConfig::reference_mlp(), OptimizerConfig::adam(1e-3), 1, 64);
    cfg.log_every_steps = 0;
    let model = train(&cfg, &train_ds, None, &mut NoHooks).unwrap().model().unwrap();
    let x = test_raw.features[..ROWS * 784].to_vec();
    let mut xs = x.clone();
    pre.apply(&mut xs);
    let expected = model.predict(&xs, ROWS).unwrap();
    let onnx = export(&model, &ExportOptions { preprocess: Some(pre), ..Default::default() }).unwrap();
    let burn: Arc<dyn ModelRuntime> = Arc::new(aidos_train::runtime::BurnRuntime::new(model, Some(pre)));
    Fixture { onnx, burn, x, expected }
}

async fn start_server(fx: &Fixture, limits: Limits) -> (RunningServer, Vec<String>) {
    start_server_with(fx, limits, None).await
}

async fn start_server_with(
    fx: &Fixture,
    limits: Limits,
    tls: Option<aidos_api::tls::ServerTls>,
) -> (RunningServer, Vec<String>) {
    let repo = Arc::new(Repository::new(Arc::new(Metrics::default())));
    let batch = BatchConfig::default();
    let mut names = Vec::new();
    let tract = aidos_runtime::load_onnx(RuntimeKind::Tract, "mnist.onnx", &fx.onnx).unwrap();
    repo.load("mnist-tract", 1, RuntimeKind::Tract, Arc::from(tract), batch.clone()).unwrap();
    names.push("mnist-tract".to_string());
    repo.load("mnist-burn", 1, RuntimeKind::Burn, fx.burn.clone(), batch.clone()).unwrap();
    names.push("mnist-burn".to_string());
    if std::env::var("ORT_DYLIB_PATH").is_ok() {
        match aidos_runtime::load_onnx(RuntimeKind::Ort, "mnist.onnx", &fx.onnx) {
            Ok(ort) => {
                repo.load("mnist-ort", 1, RuntimeKind::Ort, Arc::from(ort), batch.clone()).unwrap();
                names.push("mnist-ort".to_string());
            }
            // Built with the ort feature and given a library: the ort runtime must work.
            Err(e) if cfg!(feature = "ort") => panic!("ort runtime failed to load: {e}"),
            Err(e) => eprintln!("ort runtime not tested (build with --features ort): {e}"),
        }
    }
    let cfg =
        ServerConfig { tls, ..ServerConfig::plain("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()) };
    let state = Arc::new(ServerState {
        repo,
        limits,
        name: "aidos".into(),
        model_dir: None,
        defaults: batch,
        auth: Arc::new(aidos_serve::auth::Open),
        key_limits: None,
    });
    (aidos_serve::start(&cfg, state).await.unwrap(), names)
}

fn write_f32(path: &Path, v: &[f32]) {
    std::fs::write(path, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_http_and_grpc_match_in_process_outputs_on_every_runtime() {
    let fx = tokio::task::spawn_blocking(fixture).await.unwrap();
    let (server, names) = start_server(&fx, Limits::default()).await;
    let dir = tempfile::tempdir().unwrap();
    write_f32(&dir.path().join("x.f32"), &fx.x);
    write_f32(&dir.path().join("expected.f32"), &fx.expected);
    let script = repo_root().join("tests/python/triton_check.py");
    let (http, grpc) = (server.http.to_string(), server.grpc.to_string());
    let dir_s = dir.path().to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python()).arg(script).args([&http, &grpc, &dir_s]).args(&names).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "triton_check.py failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().filter(|l| l.contains("max_abs_diff")).count() >= 4);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_fronts_serve_tls_with_a_certificate_the_cluster_ca_issued() {
    let fx = tokio::task::spawn_blocking(fixture).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = aidos_api::tls::Ca::init(&dir.path().join("ca")).unwrap();
    let names = ["localhost".to_string(), "127.0.0.1".to_string()];
    let issued = ca.issue_server(&names, std::time::Duration::from_secs(3600)).unwrap();
    let tls = aidos_api::tls::ServerTls::serving(&issued).unwrap();
    let (server, _) = start_server_with(&fx, Limits::default(), Some(tls)).await;
    let ca_file = dir.path().join("ca").join(aidos_api::tls::CA_CERT_FILE);
    // HTTPS, verifying the certificate against the CA: the same predictions as in process.
    let body = dir.path().join("req.json");
    std::fs::write(&body, json_req(&[2, 784], "FP32", &fx.x[..2 * 784])).unwrap();
    let url = format!("https://127.0.0.1:{}/v2/models/mnist-tract/infer", server.http.port());
    let curl = |url: &str| -> (bool, String) {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert", ca_file.to_str().unwrap()])
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg(url)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    // (curl blocks this runtime thread; the server runs on the other.)
    let (ok, answer) = curl(&url);
    assert!(ok, "HTTPS infer failed: {answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let got: Vec<f32> =
        v["outputs"][0]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    for (g, e) in got.iter().zip(&fx.expected[..got.len()]) {
        assert!((g - e).abs() < 1e-3, "{g} vs {e}");
    }
    // Plain HTTP on the TLS port gets no answer.
    let plain = url.replace("https://", "http://");
    let (ok, answer) = curl(&plain);
    assert!(!ok || !answer.contains("outputs"), "plain HTTP was answered: {answer}");
    // gRPC over TLS, verifying the certificate against the CA.
    use aidos_serve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost");
    let ep = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", server.grpc.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let mut c = GrpcInferenceServiceClient::new(ep.connect().await.unwrap());
    let ready = aidos_serve::grpc::pb::ModelReadyRequest { name: "mnist-tract".into(), version: String::new() };
    assert!(c.model_ready(ready).await.unwrap().into_inner().ready);
    server.shutdown().await;
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

fn json_req(shape: &[usize], datatype: &str, data: &[f32]) -> Vec<u8> {
    serde_json::json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_name_and_the_server_keeps_serving() {
    let fx = tokio::task::spawn_blocking(fixture).await.unwrap();
    let limits = Limits { max_request_bytes: 1 << 20, max_tensor_bytes: 64 * 784 * 4 };
    let (server, _) = start_server(&fx, limits).await;
    let h = server.http;
    let row: Vec<f32> = fx.x[..784].to_vec();
    let cases: Vec<(&str, u16, &str, Vec<u8>)> = vec![
        ("wrong shape", 400, "does not match the model's [-1, 784]", json_req(&[1, 783], "FP32", &row[..783])),
        ("wrong count", 400, "needs 1568 values, got 784", json_req(&[2, 784], "FP32", &row)),
        ("wrong datatype", 400, "datatype INT64 does not match the model's FP32", json_req(&[1, 784], "INT64", &row)),
        ("too large", 413, "exceed the limit", json_req(&[65, 784], "FP32", &vec![0.5; 65 * 784])),
        ("malformed JSON", 400, "malformed JSON request", b"{\"inputs\": [".to_vec()),
        (
            "NaN literal",
            400,
            "NaN is not valid JSON",
            b"{\"inputs\":[{\"name\":\"input\",\"shape\":[1,1],\"datatype\":\"FP32\",\"data\":[NaN]}]}".to_vec(),
        ),
        (
            "unknown input",
            400,
            "unknown input `pixels`",
            br#"{"inputs":[{"name":"pixels","shape":[1,784],"datatype":"FP32","data":[]}]}"#.to_vec(),
        ),
        (
            "string data",
            400,
            "data[0] is not a number",
            br#"{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":["a"]}]}"#.to_vec(),
        ),
    ];
    for (what, status, needle, body) in cases {
        let (code, text) = http(h, "POST", "/v2/models/mnist-tract/infer", &[], &body);
        assert_eq!(code, status, "{what}: {text}");
        assert!(text.contains(needle), "{what}: `{text}` does not name the problem (`{needle}`)");
    }
    // NaN through the binary extension (JSON cannot carry it).
    let mut nan = row.clone();
    nan[3] = f32::NAN;
    let head =
        br#"{"inputs":[{"name":"input","shape":[1,784],"datatype":"FP32","parameters":{"binary_data_size":3136}}]}"#;
    let mut body = head.to_vec();
    body.extend(nan.iter().flat_map(|v| v.to_le_bytes()));
    let (code, text) = http(
        h,
        "POST",
        "/v2/models/mnist-tract/infer",
        &[("Inference-Header-Content-Length", head.len().to_string())],
        &body,
    );
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("value #3 is NaN"), "{text}");
    // Unknown model / version.
    let (code, text) = http(h, "POST", "/v2/models/nope/infer", &[], &json_req(&[1, 784], "FP32", &row));
    assert_eq!((code, text.contains("unknown model `nope`")), (404, true), "{text}");
    let (code, text) =
        http(h, "POST", "/v2/models/mnist-tract/versions/9/infer", &[], &json_req(&[1, 784], "FP32", &row));
    assert_eq!((code, text.contains("no version `9`")), (404, true), "{text}");
    let (code, _) = http(h, "GET", "/v2/models/nope/ready", &[], b"");
    assert_eq!(code, 404);

    // gRPC: the same problems as INVALID_ARGUMENT / NOT_FOUND.
    let mut g = GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let req = |model: &str, shape: Vec<i64>, dt: &str, data: Vec<f32>| ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: dt.into(),
            shape,
            contents: Some(InferTensorContents { fp32_contents: data, ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = g.model_infer(req("mnist-tract", vec![1, 783], "FP32", row[..783].to_vec())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("does not match"), "{}", e.message());
    let e = g.model_infer(req("mnist-tract", vec![1, 784], "FP64", row.clone())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = g.model_infer(req("mnist-tract", vec![1, 784], "FP32", nan.clone())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("NaN"), "{}", e.message());
    let e = g.model_infer(req("mnist-tract", vec![65, 784], "FP32", vec![0.1; 65 * 784])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("exceed the limit"), "{}", e.message());
    let e = g.model_infer(req("nope", vec![1, 784], "FP32", row.clone())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Still serving, with the right answer.
    let (code, text) = http(h, "POST", "/v2/models/mnist-tract/infer", &[], &json_req(&[1, 784], "FP32", &row));
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let got: Vec<f32> =
        v["outputs"][0]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let worst = got.iter().zip(&fx.expected[..10]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "served {got:?} vs {:?}", &fx.expected[..10]);
    let ok = g.model_infer(req("mnist-burn", vec![1, 784], "FP32", row)).await.unwrap().into_inner();
    assert_eq!(ok.raw_output_contents[0].len(), 40);
    // Metrics saw failures and successes.
    let (code, text) = http(h, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200);
    assert!(
        text.contains("aidos_inference_requests_total{model=\"mnist-tract\",version=\"1\",outcome=\"success\"}"),
        "{text}"
    );
    server.shutdown().await;
}
