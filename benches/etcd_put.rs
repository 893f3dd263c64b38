//! The peer side of `benches/submit.sh`'s comparison: durable single puts into etcd over its native gRPC API
//! (`etcdserverpb.KV/Put`), in the same shape as `aidos bench submit --concurrency C`: C concurrent clients, each
//! with its own connection, each sending one request at a time, a fresh key per request.
//!
//!     ETCD_ENDPOINTS=127.0.0.1:2379,... ETCD_PUTS=20000 ETCD_CONCURRENCY=256 ETCD_VALUE_BYTES=256 \
//!         cargo bench --bench etcd_put
//!
//! Clients are spread over the endpoints round-robin (as etcd's own `benchmark --endpoints` does); a follower
//! forwards to the leader. etcd acknowledges a put once it is committed on a quorum and fsynced, like an aidos
//! submission. Only the two messages of the Put call are declared here (prost skips the fields it does not know).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::codegen::http::uri::PathAndQuery;

#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

fn env<T: std::str::FromStr>(k: &str, default: T) -> T {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo test --all-targets` runs every bench once without arguments: there is no etcd to measure then.
    let Ok(endpoints) = std::env::var("ETCD_ENDPOINTS") else {
        println!("etcd_put: ETCD_ENDPOINTS is not set; run it through benches/submit.sh (which starts etcd)");
        return;
    };
    let endpoints: Vec<String> = endpoints.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    let puts: u64 = env("ETCD_PUTS", 20_000);
    let concurrency: usize = env("ETCD_CONCURRENCY", 256);
    let value_bytes: usize = env("ETCD_VALUE_BYTES", 256);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(run(endpoints, puts, concurrency, value_bytes));
}

async fn run(endpoints: Vec<String>, puts: u64, concurrency: usize, value_bytes: usize) {
    // Connect every client before the clock starts.
    let mut clients = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let ep = &endpoints[i % endpoints.len()];
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{ep}"))
            .expect("endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to etcd at {ep}: {e}"));
        clients.push(tonic::client::Grpc::new(ch));
    }
    let value = vec![b'v'; value_bytes];
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for mut client in clients {
        let (next, value) = (next.clone(), value.clone());
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= puts {
                    break;
                }
                let req = PutRequest { key: format!("bench/{k:012}").into_bytes(), value: value.clone() };
                let start = Instant::now();
                client.ready().await.expect("etcd connection");
                let r: Result<tonic::Response<PutResponse>, _> = client
                    .unary(
                        tonic::Request::new(req),
                        PathAndQuery::from_static("/etcdserverpb.KV/Put"),
                        tonic_prost::ProstCodec::default(),
                    )
                    .await;
                r.unwrap_or_else(|e| panic!("etcd put failed: {e}"));
                lat.push(start.elapsed());
            }
            lat
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for h in handles {
        lat.extend(h.await.expect("client task"));
    }
    let elapsed = t0.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "etcd: {puts} puts of {value_bytes} B, {concurrency} clients over {} endpoints: {:.0} puts/s; latency p50 {:.1} ms, p99 {:.1} ms",
        endpoints.len(),
        puts as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
}
