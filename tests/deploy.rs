//! Issue #4, deployments through the scheduler: `aidos serve deploy` places 2 replicas on workers; the gateway
//! routes a steady load to them; one replica is SIGKILLed and the deployment recovers to 2 ready replicas with no
//! request lost beyond those in flight on it; a new model version rolls over one replica at a time with no failed
//! request; bad deployment requests are refused by name; deleting stops the replicas.
//!
//! Issue #18: the two replicas land on two different workers (anti-affinity); a replica that hangs (SIGSTOP) fails
//! its worker's readiness probes, is killed and replaced, with no failed request beyond those in flight on it;
//! version 2 as a 10% canary takes 10% ± 3% of 5,000 requests and is then promoted with no failed request; the
//! scheduler's Prometheus service discovery (`/v1/http_sd`) lists the replicas where they are after they moved;
//! the gateway's and a replica's metrics parse with Prometheus's own parser (prometheus-client) and count the
//! requests per replica, the failed ones included.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aidos_api::serve_service_client::ServeServiceClient;
use aidos_api::v1::*;
use common::*;

/// Load-generator threads (each with one request in flight at a time).
const CLIENTS: usize = 4;

#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    versions: Mutex<std::collections::BTreeMap<String, u64>>,
    stop: AtomicBool,
}

fn start_load(gateway: SocketAddr) -> (Arc<Load>, Vec<std::thread::JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let row: Vec<String> = (0..784).map(|i| format!("{:.3}", (i % 17) as f32 / 17.0)).collect();
    let body =
        format!(r#"{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1,784],"data":[{}]}}]}}"#, row.join(","));
    let threads = (0..CLIENTS)
        .map(|_| {
            let (load, body) = (load.clone(), body.clone());
            std::thread::spawn(move || {
                while !load.stop.load(Ordering::Relaxed) {
                    let (status, resp) = http(gateway, "POST", "/v2/models/digits/infer", &body);
                    if status == 200 {
                        let v: serde_json::Value = serde_json::from_str(&resp).expect("a JSON answer");
                        assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 10]), "{resp}");
                        let ver = v["model_version"].as_str().unwrap_or("?").to_string();
                        *load.versions.lock().unwrap_or_else(|p| p.into_inner()).entry(ver).or_default() += 1;
                        load.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        load.failed.fetch_add(1, Ordering::Relaxed);
                        load.errors.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{status}: {resp}"));
                    }
                }
            })
        })
        .collect();
    (load, threads)
}

async fn deployment(c: &Cluster, name: &str) -> Option<Deployment> {
    let mut s = ServeServiceClient::new(c.any_channel().await);
    let l = s.list(ListDeploymentsRequest { name: name.into() }).await.ok()?.into_inner();
    l.deployments.into_iter().next()
}

/// Polls the deployment until `pred` holds.
async fn wait_deployment(
    c: &Cluster,
    name: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&Deployment) -> bool,
) -> Deployment {
    let deadline = Instant::now() + within;
    loop {
        if let Some(d) = deployment(c, name).await
            && pred(&d)
        {
            return d;
        }
        if Instant::now() > deadline {
            dump_logs(c);
            panic!("deployment {name}: not {what} within {within:?}: {:#?}", deployment(c, name).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `aidos serve gateway` on free ports; answers it and its HTTP address.
/// Waits until the gateway routes `digits`.
async fn wait_routed(gateway: SocketAddr, p: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(gateway, "GET", "/v2/models/digits/ready", "").0 != 200 {
        assert!(Instant::now() < deadline, "the gateway does not route digits: {}", p.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first few of a list of errors (all of them can be thousands).
fn first(errors: &[String]) -> Vec<String> {
    let mut v: Vec<String> = errors.iter().take(5).cloned().collect();
    if errors.len() > 5 {
        v.push(format!("... and {} more", errors.len() - 5));
    }
    v
}

/// The targets of the scheduler's Prometheus service discovery (`GET /v1/http_sd`), sorted; and what it answers
/// a caller without a token.
fn http_sd(addr: SocketAddr) -> (Vec<String>, u16) {
    let get = |auth: &str| http_with(addr, "GET", "/v1/http_sd", auth, "");
    let (status, body) = get(&format!("Authorization: Bearer {}\r\n", *TOKEN));
    assert_eq!(status, 200, "{body}");
    let groups: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let mut targets: Vec<String> = groups
        .iter()
        .inspect(|g| assert_eq!(g["labels"]["deployment"], "digits", "{g}"))
        .flat_map(|g| g["targets"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()))
        .collect();
    targets.sort();
    (targets, get("").0)
}

/// The HTTP addresses of `d`'s ready replicas, sorted.
fn ready_http(d: &Deployment) -> Vec<String> {
    let mut v: Vec<String> = ready(d).iter().map(|r| r.http.clone()).collect();
    v.sort();
    v
}

fn ready(d: &Deployment) -> Vec<&Replica> {
    d.replica_status.iter().filter(|r| r.ready).collect()
}

async fn wait_ok(c: &Cluster, gateway: &mut Proc, load: &Load, more_than: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while load.ok.load(Ordering::Relaxed) <= more_than {
        if Instant::now() > deadline {
            load.stop.store(true, Ordering::Relaxed);
            dump_logs(c);
            eprintln!("===== gateway ({}) =====\n{}", gateway.exit_status(), gateway.output());
            panic!("the load made no progress: {:?}", first(&load.errors.lock().unwrap()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_recover_from_sigkill_and_roll_over_without_failed_requests() {
    let sd_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut c = start_cluster_with(1, &["--http", &sd_addr.to_string()]).await;
    c.start_worker("w1", "2", "");
    c.start_worker("w2", "2", "");
    // Two versions of a small model.
    c.train_digits(2).await;

    // Bad requests are refused by name and store nothing.
    for (args, needle) in [
        (vec!["serve", "deploy", "nosuch@production"], "model nosuch not found"),
        (vec!["serve", "deploy", "digits:9"], "has no version 9"),
        (vec!["serve", "deploy", "digits:1", "--runtime", "tensorflow"], "runtime: `tensorflow`"),
        (vec!["serve", "deploy", "digits:1", "--replicas", "1000"], "replicas: 1000"),
        (vec!["serve", "deploy", "digits:1", "--name", "bad/name"], "not a valid name"),
    ] {
        let (code, out, err) = c.cli(&args);
        assert_ne!(code, 0, "{args:?} was accepted: {out}");
        assert!(err.contains(needle), "{args:?}: expected {needle:?} in: {err}");
    }
    assert!(deployment(&c, "digits").await.is_none(), "a refused deployment was stored");

    let (mut gateway_proc, gateway, _) = c.start_gateway().await;

    let (code, out, err) = c.cli(&[
        "serve",
        "deploy",
        "digits:1",
        "--replicas",
        "2",
        "--cpus",
        "500m",
        "--memory",
        "256Mi",
        "--max-delay-us",
        "200",
        "--wait-secs",
        "120",
    ]);
    if code != 0 {
        dump_logs(&c);
    }
    assert_eq!(code, 0, "{out}{err}");
    let d = wait_deployment(&c, "digits", Duration::from_secs(30), "2 ready", |d| ready(d).len() == 2).await;
    assert_eq!(d.generation, 1);
    assert_ne!(ready(&d)[0].worker_id, ready(&d)[1].worker_id, "replicas share a worker: {:?}", d.replica_status);

    // `serve list` shows the replicas and where they listen.
    let (code, out, err) = c.cli(&["serve", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("digits") && out.contains("2/2"), "{out}");
    for r in ready(&d) {
        assert!(out.contains(&r.http), "{out}");
    }

    // The gateway follows the scheduler (every 250 ms): wait until it routes the deployment, to both replicas (its
    // metrics have a series per replica it routes to): killing one it does not know yet would leave it none.
    wait_routed(gateway, &gateway_proc).await;
    wait_until("the gateway routes to both replicas", Duration::from_secs(30), || {
        let (_, m) = http(gateway, "GET", "/metrics", "");
        ready(&d).iter().all(|r| m.contains(&format!("replica=\"{}\"", r.grpc))).then_some(())
    });
    // Steady load through the gateway.
    let (load, threads) = start_load(gateway);
    wait_ok(&c, &mut gateway_proc, &load, 100, Duration::from_secs(60)).await;

    // SIGKILL one replica.
    let victim = ready(&d)[0].clone();
    assert!(victim.pid > 0, "{victim:?}");
    let _ = std::process::Command::new("kill").args(["-KILL", &victim.pid.to_string()]).status();
    let before_ok = load.ok.load(Ordering::Relaxed);
    let d = wait_deployment(&c, "digits", Duration::from_secs(60), "recovered to 2 ready", |d| {
        let r = ready(d);
        r.len() == 2 && !r.iter().any(|x| x.job_id == victim.job_id && x.attempt == victim.attempt)
    })
    .await;
    wait_ok(&c, &mut gateway_proc, &load, before_ok + 100, Duration::from_secs(30)).await;
    let failed_on_kill = load.failed.load(Ordering::Relaxed);
    if failed_on_kill > CLIENTS as u64 {
        dump_logs(&c);
        eprintln!("===== gateway =====\n{}", gateway_proc.output());
    }
    assert!(
        failed_on_kill <= CLIENTS as u64,
        "{failed_on_kill} requests failed, more than the {CLIENTS} that can be in flight: {:?}",
        first(&load.errors.lock().unwrap())
    );
    for e in load.errors.lock().unwrap().iter() {
        assert!(e.contains("replica") || e.contains("not available"), "unclear error: {e}");
    }
    let restarted = d.replica_status.iter().find(|r| r.job_id == victim.job_id);
    eprintln!("after SIGKILL: {failed_on_kill} failed; replacement {restarted:?}");
    assert_ne!(ready(&d)[0].worker_id, ready(&d)[1].worker_id, "replicas share a worker: {:?}", d.replica_status);
    // Prometheus service discovery follows the replica that moved (same node state the list came from).
    let (targets, anonymous) = http_sd(sd_addr);
    assert_eq!(targets, ready_http(&d), "http_sd after the SIGKILL");
    assert_eq!(anonymous, 401, "http_sd without a token");

    // SIGSTOP one replica: alive but hung. Its worker's probes fail, it is killed and restarted; the gateway
    // sends new requests to the other one meanwhile, and those stuck on it are retried there once it dies.
    let hung = ready(&d)[0].clone();
    let _ = std::process::Command::new("kill").args(["-STOP", &hung.pid.to_string()]).status();
    let before_ok = load.ok.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let d = wait_deployment(&c, "digits", Duration::from_secs(60), "recovered from a hung replica", |d| {
        let r = ready(d);
        r.len() == 2 && !r.iter().any(|x| x.job_id == hung.job_id && x.attempt == hung.attempt)
    })
    .await;
    eprintln!("hung replica replaced after {:?}", t0.elapsed());
    assert!(!http_sd(sd_addr).0.contains(&hung.http), "http_sd still lists the hung replica");
    assert!(
        !std::path::Path::new(&format!("/proc/{}", hung.pid)).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", hung.pid)).is_ok_and(|s| s.contains(") Z")),
        "the hung replica (pid {}) still runs",
        hung.pid
    );
    wait_ok(&c, &mut gateway_proc, &load, before_ok + 100, Duration::from_secs(30)).await;
    let failed_on_hang = load.failed.load(Ordering::Relaxed) - failed_on_kill;
    assert!(
        failed_on_hang <= CLIENTS as u64,
        "{failed_on_hang} requests failed on the hung replica: {:?}",
        first(&load.errors.lock().unwrap())
    );
    let failed_on_kill = failed_on_kill + failed_on_hang;

    // The gateway's and a replica's metrics, through Prometheus's own parser.
    let parsed = |addr: SocketAddr| {
        let (status, text) = http(addr, "GET", "/metrics", "");
        assert_eq!(status, 200, "{text}");
        let file = c.path().join(format!("metrics-{}.txt", addr.port()));
        std::fs::write(&file, &text).unwrap();
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/prom_check.py");
        let out = std::process::Command::new(python()).arg(script).arg(&file).output().unwrap();
        assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let samples = parsed(gateway);
    let count = |outcome: &str| -> f64 {
        samples
            .lines()
            .filter(|l| l.starts_with("aidos_gateway_requests_total{") && l.contains(&format!("outcome=\"{outcome}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(count("ok") as u64 >= load.ok.load(Ordering::Relaxed) / 2, "{samples}");
    // The replicas that died left the pool with their own series; the model's retries count what they failed.
    let retries: f64 = samples
        .lines()
        .filter(|l| l.starts_with("aidos_gateway_retries_total{") && l.contains("model=\"digits\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(retries >= 1.0, "no retry counted after a replica died: {samples}");
    assert!(samples.contains("aidos_gateway_request_seconds_bucket{"), "{samples}");
    let replica_http: SocketAddr = ready(&d)[0].http.parse().unwrap();
    assert!(parsed(replica_http).contains("aidos_inference_requests_total{"));

    // Version 2 as a 10% canary under the same load, then promoted (a rollover): no request fails.
    let (code, out, err) = c.cli(&[
        "serve",
        "deploy",
        "digits:2",
        "--name",
        "digits",
        "--canary-percent",
        "10",
        "--replicas",
        "1",
        "--cpus",
        "500m",
        "--memory",
        "256Mi",
        "--max-delay-us",
        "200",
        "--wait-secs",
        "120",
    ]);
    if code != 0 {
        dump_logs(&c);
    }
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = c.cli(&["serve", "list"]);
    assert!(code == 0 && out.contains("canary 10%"), "{out}");
    let share = |v: &std::collections::BTreeMap<String, u64>| (v.get("1").copied(), v.get("2").copied());
    let deadline = Instant::now() + Duration::from_secs(30);
    while share(&load.versions.lock().unwrap()).1.unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the gateway never sent a request to the canary");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (a1, a2) = share(&load.versions.lock().unwrap());
    let before_ok = load.ok.load(Ordering::Relaxed);
    wait_ok(&c, &mut gateway_proc, &load, before_ok + 5000, Duration::from_secs(120)).await;
    let (b1, b2) = share(&load.versions.lock().unwrap());
    let (n1, n2) = (b1.unwrap_or(0) - a1.unwrap_or(0), b2.unwrap_or(0) - a2.unwrap_or(0));
    let pct = 100.0 * n2 as f64 / (n1 + n2) as f64;
    eprintln!("canary: {n2} of {} requests ({pct:.2}%)", n1 + n2);
    assert!((7.0..=13.0).contains(&pct), "the 10% canary took {pct:.2}% of {} requests", n1 + n2);
    let (code, out, err) = c.cli(&["serve", "promote", "digits", "--wait-secs", "180"]);
    if code != 0 {
        dump_logs(&c);
    }
    assert_eq!(code, 0, "{out}{err}");
    let d = wait_deployment(&c, "digits", Duration::from_secs(30), "rolled to v2", |d| {
        d.generation == 2 && ready(d).len() == 2 && d.replica_status.iter().all(|r| r.version == 2)
    })
    .await;
    let before_ok = load.ok.load(Ordering::Relaxed);
    wait_ok(&c, &mut gateway_proc, &load, before_ok + 100, Duration::from_secs(30)).await;
    load.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert_ne!(ready(&d)[0].worker_id, ready(&d)[1].worker_id, "after the rollover: {:?}", d.replica_status);
    let failed_in_rollout = load.failed.load(Ordering::Relaxed) - failed_on_kill;
    if failed_in_rollout > 0 {
        dump_logs(&c);
        eprintln!("===== gateway =====\n{}", gateway_proc.output());
    }
    assert_eq!(failed_in_rollout, 0, "requests failed during the rollout: {:?}", first(&load.errors.lock().unwrap()));
    let versions = load.versions.lock().unwrap().clone();
    assert!(versions.get("1").is_some_and(|n| *n > 0) && versions.get("2").is_some_and(|n| *n > 0), "{versions:?}");
    eprintln!(
        "served {} requests ({versions:?}); replicas now {:?}",
        load.ok.load(Ordering::Relaxed),
        d.replica_status
    );

    // Delete: every replica stops and the gateway stops routing the name.
    let (code, _, err) = c.cli(&["serve", "delete", "digits"]);
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live =
            c.list_all().await.into_iter().filter(|j| j.spec.as_ref().is_some_and(|s| s.kind == JobKind::Serve as i32));
        let live = live.filter(|j| !state_of(j).is_terminal()).count();
        let (status, _) = http(gateway, "GET", "/v2/models/digits", "");
        if live == 0 && status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "after delete: {live} replica jobs live, gateway answers {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaled_deployment_follows_the_load_up_and_down() {
    let mut c = start_cluster(1).await;
    c.start_worker("w1", "2", "");
    c.start_worker("w2", "2", "");
    c.train_digits(1).await;
    let (mut gateway_proc, gateway, _) = c.start_gateway().await;
    // Refused: autoscaling bounds that make no sense, by name.
    let (code, _, err) = c.cli(&["serve", "deploy", "digits:1", "--min-replicas", "3", "--max-replicas", "2"]);
    assert!(code != 0 && err.contains("max_replicas"), "{err}");
    let (code, out, err) = c.cli(&[
        "serve",
        "deploy",
        "digits:1",
        "--min-replicas",
        "1",
        "--max-replicas",
        "3",
        "--target-in-flight",
        "0.2",
        "--scale-down-delay-secs",
        "3",
        "--cpus",
        "500m",
        "--memory",
        "256Mi",
        "--wait-secs",
        "120",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let d = wait_deployment(&c, "digits", Duration::from_secs(30), "1 ready", |d| ready(d).len() == 1).await;
    assert_eq!(d.replicas, 1);
    wait_routed(gateway, &gateway_proc).await;

    // Load: 4 clients without pause. The replicas report their requests in flight; the leader scales up.
    let (load, threads) = start_load(gateway);
    wait_ok(&c, &mut gateway_proc, &load, 100, Duration::from_secs(60)).await;
    let t0 = Instant::now();
    let d =
        wait_deployment(&c, "digits", Duration::from_secs(60), "scaled up", |d| d.replicas >= 2 && ready(d).len() >= 2)
            .await;
    eprintln!("scaled up to {} replicas after {:?} ({:.2} in flight)", d.replicas, t0.elapsed(), d.in_flight);
    let (code, out, _) = c.cli(&["serve", "list"]);
    assert!(code == 0 && out.contains("autoscaled 1..3"), "{out}");

    // No load: back down to the minimum once the scale-down delay has passed, no request failed on the way.
    load.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let t0 = Instant::now();
    let d = wait_deployment(&c, "digits", Duration::from_secs(60), "scaled down", |d| {
        d.replicas == 1 && d.replica_status.len() == 1
    })
    .await;
    eprintln!("scaled down to {} after {:?}", d.replicas, t0.elapsed());
    assert!(t0.elapsed() >= Duration::from_secs(2), "scaled down before the delay: {:?}", t0.elapsed());
    assert_eq!(load.failed.load(Ordering::Relaxed), 0, "{:?}", first(&load.errors.lock().unwrap()));
}
