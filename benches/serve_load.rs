//! Serving load generator: closed-loop concurrency sweep against `aidos serve run`, over HTTP (JSON and binary
//! tensors) and gRPC, single-sample requests, reporting throughput and p50/p99/p99.9; plus the runtime called
//! in-process (no server) at batch 1 and 32, for the server's overhead.
//!
//!   cargo bench --bench serve_load                       # tract
//!   ORT_DYLIB_PATH=... cargo bench --bench serve_load -- --runtime ort
//!
//! Options (after `--`): --runtime tract|ort, --instances N, --max-delay-us N, --duration-s N,
//! --concurrency 1,8,32,64, --transports http-json,http-binary,grpc.
//!
//! Against servers already running (no training, no server of its own; used by benches/gateway.sh):
//! `--against HTTP_ADDR,GRPC_ADDR --model NAME --pids PID,...` (the server CPU reported is these processes'). The model is the reference MNIST MLP (784-256-128-10), trained for one epoch on
//! data/mnist10k and exported to ONNX by this program; the server is the release `aidos` binary, a separate
//! process on the same machine as this generator.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aidos_runtime::{RuntimeKind, Tensor};
use aidos_serve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use aidos_serve::grpc::pb::{ModelInferRequest, model_infer_request::InferInputTensor};
use aidos_train::builtin::Standardization;
use aidos_train::onnx::{ExportOptions, export};
use aidos_train::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Opts {
    runtime: String,
    instances: usize,
    max_delay_us: u64,
    duration: Duration,
    concurrency: Vec<usize>,
    transports: Vec<String>,
    against: Option<(SocketAddr, SocketAddr)>,
    model: String,
    pids: Vec<u32>,
}

fn opts() -> Opts {
    let mut o = Opts {
        runtime: "tract".into(),
        instances: 1,
        max_delay_us: 500,
        duration: Duration::from_secs(5),
        concurrency: vec![1, 8, 32, 64],
        transports: ["http-json", "http-binary", "grpc"].map(String::from).to_vec(),
        against: None,
        model: "mnist".into(),
        pids: vec![],
    };
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--runtime" => o.runtime = v(),
            "--instances" => o.instances = v().parse().unwrap(),
            "--max-delay-us" => o.max_delay_us = v().parse().unwrap(),
            "--duration-s" => o.duration = Duration::from_secs(v().parse().unwrap()),
            "--concurrency" => o.concurrency = v().split(',').map(|c| c.parse().unwrap()).collect(),
            "--transports" => o.transports = v().split(',').map(String::from).collect(),
            "--against" => {
                let a: Vec<SocketAddr> = v().split(',').map(|a| a.parse().unwrap()).collect();
                o.against = Some((a[0], a[1]));
            }
            "--model" => o.model = v(),
            "--pids" => o.pids = v().split(',').map(|p| p.parse().unwrap()).collect(),
            _ => {}
        }
    }
    o
}

fn mnist() -> (Dataset, Dataset) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/mnist10k");
    let raw = Dataset::from_idx_files(
        dir.join("images-idx3-ubyte.gz"),
        dir.join("labels-idx1-ubyte.gz"),
        Normalization::None,
    )
    .unwrap();
    raw.split_at(8_000).unwrap()
}

fn model() -> (Vec<u8>, Vec<f32>) {
    let (tr, te) = mnist();
    let pre = Standardization::fit(&tr.features);
    let mut f = tr.features.clone();
    pre.apply(&mut f);
    let ds = Dataset::new(f, tr.labels.clone(), tr.shape.clone()).unwrap();
    let mut cfg = TrainConfig::new(ModelConfig::reference_mlp(), OptimizerConfig::adam(1e-3), 1, 64);
    cfg.log_every_steps = 0;
    let m = train(&cfg, &ds, None, &mut NoHooks).unwrap().model().unwrap();
    let onnx = export(&m, &ExportOptions { preprocess: Some(pre), ..Default::default() }).unwrap();
    (onnx, te.features[..784 * 64].to_vec())
}

fn in_process(kind: RuntimeKind, onnx: &[u8], x: &[f32]) {
    let rt = aidos_runtime::load_onnx(kind, "bench", onnx).unwrap();
    for batch in [1usize, 32] {
        let mut inst = rt.instance().unwrap();
        let input = vec![Tensor { shape: vec![batch, 784], data: x[..batch * 784].to_vec() }];
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed() < Duration::from_secs(3) {
            inst.run(&input).unwrap();
            n += batch;
        }
        println!(
            "in-process {:>5} batch {batch:>2}, 1 thread: {:>9.0} samples/s",
            kind.as_str(),
            n as f64 / t.elapsed().as_secs_f64()
        );
    }
}

struct Server {
    child: Child,
    http: SocketAddr,
    grpc: SocketAddr,
}

/// Where the load goes and whose CPU is counted.
struct Target {
    http: SocketAddr,
    grpc: SocketAddr,
    pids: Vec<u32>,
    model: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(o: &Opts, onnx_path: &std::path::Path, dir: &std::path::Path) -> Server {
    let ready = dir.join("ready.json");
    let child = Command::new(env!("CARGO_BIN_EXE_aidos"))
        .args(["serve", "run", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--runtime", &o.runtime])
        .args(["--model", &format!("mnist={}", onnx_path.display())])
        .args(["--instances", &o.instances.to_string(), "--max-delay-us", &o.max_delay_us.to_string()])
        .args(["--max-batch", "32", "--ready-file", ready.to_str().unwrap(), "--log-level", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start aidos serve run");
    let t = Instant::now();
    while !ready.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    Server {
        child,
        http: v["http"].as_str().unwrap().parse().unwrap(),
        grpc: v["grpc"].as_str().unwrap().parse().unwrap(),
    }
}

/// CPU time (user + system) the process has used so far, in microseconds (from /proc; clock ticks of 10 ms).
fn cpu_us(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) * 1e6 / 100.0
}

fn report(label: &str, c: usize, mut lat_us: Vec<u32>, elapsed: Duration, errors: usize, server_cpu_us: f64) {
    lat_us.sort_unstable();
    let q = |p: f64| {
        lat_us.get(((lat_us.len() as f64 * p) as usize).min(lat_us.len().saturating_sub(1))).copied().unwrap_or(0)
    };
    let per_req = if lat_us.is_empty() { 0.0 } else { server_cpu_us / lat_us.len() as f64 };
    println!(
        "{label:<12} c={c:<3} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  errors {errors}  server CPU {per_req:>5.1} us/req",
        lat_us.len() as f64 / elapsed.as_secs_f64(),
        q(0.5) as f64 / 1000.0,
        q(0.99) as f64 / 1000.0,
        q(0.999) as f64 / 1000.0
    );
    let _ = std::io::stdout().flush();
}

fn http_body(x: &[f32], binary: bool) -> (Vec<u8>, Option<usize>) {
    if binary {
        let head = br#"{"inputs":[{"name":"input","shape":[1,784],"datatype":"FP32","parameters":{"binary_data_size":3136}}],"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}"#;
        let mut b = head.to_vec();
        b.extend(x[..784].iter().flat_map(|v| v.to_le_bytes()));
        (b, Some(head.len()))
    } else {
        let j = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": &x[..784]}]});
        (j.to_string().into_bytes(), None)
    }
}

async fn http_loop(addr: SocketAddr, req: Vec<u8>, until: Instant) -> (Vec<u32>, usize) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut s = BufReader::new(s);
    let (mut lat, mut errors) = (Vec::new(), 0);
    let mut line = String::new();
    let mut body = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        s.get_mut().write_all(&req).await.unwrap();
        let (mut status, mut len) = (0u16, 0usize);
        loop {
            line.clear();
            s.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if line.starts_with("HTTP/") {
                status = line[9..12].parse().unwrap_or(0);
            } else if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        body.resize(len, 0);
        s.read_exact(&mut body).await.unwrap();
        if status == 200 {
            lat.push(t.elapsed().as_micros() as u32);
        } else {
            errors += 1;
        }
    }
    (lat, errors)
}

/// The key every request presents: `AIDOS_TOKEN`, when set (a deployment's replicas and the gateway ask for one).
fn key() -> aidos_api::auth::Credentials {
    aidos_api::auth::Credentials::from_lookup(|k| std::env::var(k).ok())
}

async fn grpc_loop(addr: SocketAddr, model: String, x: Vec<f32>, until: Instant) -> (Vec<u32>, usize) {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut c = GrpcInferenceServiceClient::new(aidos_api::auth::with_credentials(ch, &key()));
    let raw: Vec<u8> = x[..784].iter().flat_map(|v| v.to_le_bytes()).collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    while Instant::now() < until {
        let req = ModelInferRequest {
            model_name: model.clone(),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![1, 784],
                ..Default::default()
            }],
            raw_input_contents: vec![raw.clone().into()],
            ..Default::default()
        };
        let t = Instant::now();
        match c.model_infer(req).await {
            Ok(_) => lat.push(t.elapsed().as_micros() as u32),
            Err(_) => errors += 1,
        }
    }
    (lat, errors)
}

async fn sweep(o: &Opts, srv: &Target, x: &[f32]) {
    let on = |t: &str| o.transports.iter().any(|x| x == t);
    for &c in &o.concurrency {
        for (label, binary) in [("http-json", false), ("http-binary", true)] {
            if !on(label) {
                continue;
            }
            let (body, header_len) = http_body(x, binary);
            let mut req = format!(
                "POST /v2/models/{}/infer HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                srv.model,
                body.len()
            );
            if let Some(h) = header_len {
                req.push_str(&format!("Inference-Header-Content-Length: {h}\r\n"));
            }
            if let Some(t) = key().token {
                req.push_str(&format!("Authorization: Bearer {t}\r\n"));
            }
            req.push_str("\r\n");
            let mut req = req.into_bytes();
            req.extend_from_slice(&body);
            run_clients(label, c, o.duration, &srv.pids, |until| tokio::spawn(http_loop(srv.http, req.clone(), until)))
                .await;
        }
        if on("grpc") {
            let xs = x.to_vec();
            run_clients("grpc", c, o.duration, &srv.pids, |until| {
                tokio::spawn(grpc_loop(srv.grpc, srv.model.clone(), xs.clone(), until))
            })
            .await;
        }
    }
}

async fn run_clients(
    label: &str,
    c: usize,
    d: Duration,
    server_pids: &[u32],
    spawn: impl Fn(Instant) -> tokio::task::JoinHandle<(Vec<u32>, usize)>,
) {
    // Warm-up, then the measured window.
    for (window, measured) in [(Duration::from_millis(500), false), (d, true)] {
        let start = Instant::now();
        let cpu = || server_pids.iter().map(|p| cpu_us(*p)).sum::<f64>();
        let cpu0 = cpu();
        let until = start + window;
        let handles: Vec<_> = (0..c).map(|_| spawn(until)).collect();
        let (mut lat, mut errors) = (Vec::new(), 0);
        for h in handles {
            let (l, e) = h.await.unwrap();
            lat.extend(l);
            errors += e;
        }
        if measured {
            report(label, c, lat, start.elapsed(), errors, cpu() - cpu0);
        }
    }
}

fn main() {
    let o = opts();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if let Some((http, grpc)) = o.against {
        let x = mnist().1.features[..784].to_vec();
        let target = Target { http, grpc, pids: o.pids.clone(), model: o.model.clone() };
        rt.block_on(sweep(&o, &target, &x));
        return;
    }
    let kind: RuntimeKind = o.runtime.parse().unwrap();
    let (onnx, x) = model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mnist-mlp.onnx");
    std::fs::write(&path, &onnx).unwrap();
    println!("model: MNIST MLP 784-256-128-10 ({} bytes ONNX), runtime {}", onnx.len(), o.runtime);
    in_process(kind, &onnx, &x);
    let srv = start_server(&o, &path, dir.path());
    println!(
        "server: aidos serve run --runtime {} --instances {} --max-batch 32 --max-delay-us {}",
        o.runtime, o.instances, o.max_delay_us
    );
    let target = Target { http: srv.http, grpc: srv.grpc, pids: vec![srv.child.id()], model: "mnist".into() };
    rt.block_on(sweep(&o, &target, &x));
}
