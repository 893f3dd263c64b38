//! Does a client over its rate limit slow down a well-behaved one? One scheduler node per configuration, in this
//! process, on loopback; two member tokens. The well-behaved client makes paced `JobService/List` calls (under its
//! limit) and we take its latency three ways, in one run on one machine:
//!   1. alone;
//!   2. while a second client floods the node with the same call from 32 concurrent loops, ignoring refusals, with
//!      per-token limits on (the flooder is held to its rate; its excess is refused RESOURCE_EXHAUSTED);
//!   3. the same flood with limits off (a second node, rate 0), for contrast.
//!
//! The target (issue #17): with limits on, the well-behaved client's p99 stays within 1.5x of its unloaded p99.
//!
//!     cargo bench --bench rate_limit
//!     AIDOS_BENCH_CALLS=2000 AIDOS_BENCH_RATE=100 cargo bench --bench rate_limit
//!
//! Runtimes are separate (the node's 2 threads, the flooder's 1, the measured client's own thread), and all share
//! this machine's cores, as clients on the same host would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aidos_api::auth::{Credentials, with_credentials};
use aidos_api::auth_service_client::AuthServiceClient;
use aidos_api::job_service_client::JobServiceClient;
use aidos_api::v1::{CreateTokenRequest, ListJobsRequest, Role};
use aidos_scheduler::limits::LimitConfig;
use aidos_scheduler::{SchedulerConfig, SchedulerNode};

fn env_u64(k: &str, default: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn channel(addr: &str, token: &str) -> aidos_api::auth::AuthChannel {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("addr")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect");
    with_credentials(ch, &Credentials { token: Some(token.into()), project: Some("bench".into()), tls: None })
}

struct Node {
    rt: tokio::runtime::Runtime,
    node: Option<SchedulerNode>,
    addr: String,
    calm: String,
    flood: String,
}

fn start_node(dir: &std::path::Path, limits: LimitConfig) -> Node {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut cfg = SchedulerConfig::single_node("127.0.0.1:0".parse().expect("addr"), dir.to_path_buf());
    cfg.limits = limits;
    let root = cfg.root_token.clone();
    let node = rt.block_on(SchedulerNode::start(cfg)).expect("scheduler node");
    let addr = node.local_addr().to_string();
    let (calm, flood) = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !node.has_leader() {
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut a = AuthServiceClient::new(channel(&addr, &root).await);
        let mut make = async |name: &str| {
            let req = CreateTokenRequest {
                name: name.into(),
                role: Role::Member as i32,
                project: "bench".into(),
                ..Default::default()
            };
            a.create_token(req).await.expect("create token").into_inner().secret
        };
        (make("calm").await, make("flood").await)
    });
    Node { rt, node: Some(node), addr, calm, flood }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// `calls` paced List calls of the calm client (its own thread and runtime); sorted latencies.
fn calm_client(addr: &str, token: &str, calls: u64, rate: u64) -> Vec<Duration> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut c = JobServiceClient::new(channel(addr, token).await);
        let gap = Duration::from_secs_f64(1.0 / rate as f64);
        let mut out = Vec::with_capacity(calls as usize);
        let mut next = Instant::now();
        for _ in 0..calls {
            tokio::time::sleep_until(next.into()).await;
            next += gap;
            let t = Instant::now();
            c.list(ListJobsRequest::default()).await.expect("the well-behaved client was refused");
            out.push(t.elapsed());
        }
        out.sort();
        out
    })
}

/// Floods until `stop`: 32 loops of List with the flood token, on one connection (a new one after a transport
/// error); counts (accepted, refused, transport errors).
fn flood(addr: String, token: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<[u64; 3]> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        rt.block_on(async move {
            let counts: Arc<[AtomicU64; 3]> = Arc::default();
            let ch = channel(&addr, &token).await;
            let mut loops = Vec::new();
            for _ in 0..32 {
                let (ch, stop, counts, addr, token) =
                    (ch.clone(), stop.clone(), counts.clone(), addr.clone(), token.clone());
                loops.push(tokio::spawn(async move {
                    let mut c = JobServiceClient::new(ch);
                    while !stop.load(Ordering::Relaxed) {
                        let i = match c.list(ListJobsRequest::default()).await {
                            Ok(_) => 0,
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => 1,
                            Err(_) => {
                                c = JobServiceClient::new(channel(&addr, &token).await);
                                2
                            }
                        };
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for l in loops {
                l.await.expect("flood loop");
            }
            [0, 1, 2].map(|i| counts[i].load(Ordering::Relaxed))
        })
    })
}

fn report(what: &str, lat: &[Duration], base_p99: Option<Duration>) -> Duration {
    let p99 = percentile(lat, 0.99);
    let ratio = base_p99.map(|b| format!("  p99 {:.2}x unloaded", p99.as_secs_f64() / b.as_secs_f64()));
    println!(
        "{what:<44} calls {:>5}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms{}",
        lat.len(),
        percentile(lat, 0.5).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3,
        ratio.unwrap_or_default()
    );
    p99
}

fn main() {
    // `cargo test --all-targets` runs benches once without --bench: a short smoke run.
    let measuring = std::env::args().any(|a| a == "--bench");
    let calls = env_u64("AIDOS_BENCH_CALLS", if measuring { 1000 } else { 40 });
    let rate = env_u64("AIDOS_BENCH_RATE", 100);
    let limit = LimitConfig { rate_per_sec: 200.0, burst: 200.0, max_in_flight: 64 };
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut limited = start_node(&tmp.path().join("limited"), limit);
    let mut open =
        start_node(&tmp.path().join("open"), LimitConfig { rate_per_sec: 0.0, burst: 1.0, max_in_flight: 0 });
    println!(
        "well-behaved client: {calls} JobService/List calls at {rate}/s; flooder: 32 loops, no pause; limits on: \
         {} calls/s per token, bursts of {}, {} in flight",
        limit.rate_per_sec, limit.burst, limit.max_in_flight
    );

    let base = calm_client(&limited.addr, &limited.calm, calls, rate);
    let base_p99 = report("1. alone", &base, None);

    for (what, n) in [("2. beside a flooder, limits on", &limited), ("3. beside a flooder, limits off", &open)] {
        let stop = Arc::new(AtomicBool::new(false));
        let t = Instant::now();
        let f = flood(n.addr.clone(), n.flood.clone(), stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        let lat = calm_client(&n.addr, &n.calm, calls, rate);
        stop.store(true, Ordering::Relaxed);
        let [ok, refused, broken] = f.join().expect("flooder");
        let secs = t.elapsed().as_secs_f64();
        report(what, &lat, Some(base_p99));
        println!(
            "{:<44} flooder: {:.0} calls/s accepted, {:.0}/s refused (RESOURCE_EXHAUSTED), {broken} transport errors",
            "",
            ok as f64 / secs,
            refused as f64 / secs
        );
    }
    for n in [&mut limited, &mut open] {
        let node = n.node.take().expect("node");
        n.rt.block_on(node.shutdown());
    }
}
