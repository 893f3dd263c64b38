//! Blob throughput, three ways in one run: a local directory (`LocalDirStore`), straight to S3 (`S3Store` on a
//! SeaweedFS `weed mini`), and through a scheduler node's blob service (`ServiceStore` -> `aidos.v1.BlobService` ->
//! the node's S3 store, the path a client on another machine takes). The stores take turns blob by blob. Every put
//! writes fresh random bytes (a put of an existing blob is a no-op and would measure nothing); every get reads a
//! blob that store holds and verifies it.
//!
//!     AIDOS_WEED=/path/to/weed cargo bench --bench blob_throughput
//!     AIDOS_BENCH_LARGE_MIB=64 AIDOS_BENCH_LARGE_ROUNDS=2 ... (smaller large blobs, fewer rounds)
//!     AIDOS_BENCH_PART_MIB=8 AIDOS_BENCH_PARTS_IN_FLIGHT=8 ... (both S3 stores' multipart part size and concurrency)
//!
//! Prints MiB/s per store, size and direction, and the blob service's share of direct S3 on large blobs (the
//! target is at least 80%). Everything runs on this machine's loopback, so the figures include three processes'
//! CPU (client, scheduler, SeaweedFS) competing for the same cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aidos_blob::{BlobId, BlobStore, LocalDirStore, ServiceStore, StoreConfig};
use aidos_scheduler::{SchedulerConfig, SchedulerNode};
use aidos_testkit::weed::{Weed, WeedOptions};
use rand::RngCore;

fn env_usize(k: &str, default: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Seconds each put and each get took, per store (`[store][round]`): `rounds` fresh blobs of `size` bytes put into
/// every store, then each read back. The stores take turns blob by blob (and each round starts with the next
/// store), so a drift of the machine or of the S3 server over the run (its volumes filling, another process waking)
/// falls on every store alike.
struct Times {
    put: Vec<Vec<f64>>,
    get: Vec<Vec<f64>>,
}

fn measure(stores: &[(&str, Arc<dyn BlobStore>)], size: usize, rounds: usize) -> Times {
    let n = stores.len();
    let mut rng = rand::rng();
    let mut t = Times { put: vec![Vec::new(); n], get: vec![Vec::new(); n] };
    // ids[round][store]
    let mut ids: Vec<Vec<Option<BlobId>>> = vec![vec![None; n]; rounds];
    let mut data = vec![0u8; size];
    for (r, round) in ids.iter_mut().enumerate() {
        for i in (0..n).map(|k| (k + r) % n) {
            rng.fill_bytes(&mut data);
            let start = Instant::now();
            round[i] = Some(stores[i].1.put(&data).expect("put"));
            t.put[i].push(secs(start.elapsed()));
        }
    }
    for (r, round) in ids.iter().enumerate() {
        for i in (0..n).map(|k| (k + r) % n) {
            let start = Instant::now();
            let got = stores[i].1.get(round[i].as_ref().expect("put above")).expect("get");
            t.get[i].push(secs(start.elapsed()));
            assert_eq!(got.len(), size);
        }
    }
    t
}

impl Times {
    /// MiB/s of store `i` over all its rounds.
    fn rate(times: &[f64], size: usize) -> f64 {
        (size * times.len()) as f64 / (1 << 20) as f64 / times.iter().sum::<f64>()
    }

    /// The median over rounds of store `a`'s time over store `b`'s on the same round's blob: `b`'s throughput as
    /// a share of `a`'s, robust to a round on which the S3 server stalled for both.
    fn median_share(times: &[Vec<f64>], a: usize, b: usize) -> f64 {
        let mut r: Vec<f64> = times[a].iter().zip(&times[b]).map(|(x, y)| x / y).collect();
        r.sort_by(f64::total_cmp);
        let m = r.len() / 2;
        if r.len() % 2 == 1 { r[m] } else { (r[m - 1] + r[m]) / 2.0 }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs it once without: then a small smoke run that
    // only proves the three paths work (its figures mean nothing: debug build, tiny sizes).
    let measuring = std::env::args().any(|a| a == "--bench");
    let (large_default, large_rounds_default, small_default) = if measuring { (256, 8, 64) } else { (8, 1, 2) };
    let large_mib = env_usize("AIDOS_BENCH_LARGE_MIB", large_default);
    let large_rounds = env_usize("AIDOS_BENCH_LARGE_ROUNDS", large_rounds_default);
    let small_rounds = env_usize("AIDOS_BENCH_SMALL_ROUNDS", small_default);

    let weed = Weed::start(WeedOptions { bucket: "aidos-bench".into(), ..Default::default() });
    let tmp = tempfile::tempdir().expect("temp dir");

    // A one-node scheduler whose blob service keeps blobs in the same bucket, under its own prefix.
    // Both S3 stores get the same multipart settings (the defaults unless the knobs are set).
    let s3_config = |prefix: &str| {
        let mut c = weed.config();
        c.prefix = prefix.into();
        if let Some(mib) = std::env::var("AIDOS_BENCH_PART_MIB").ok().and_then(|v| v.parse::<usize>().ok()) {
            (c.part_size, c.multipart_threshold) = (mib << 20, mib << 20);
        }
        if let Some(n) = std::env::var("AIDOS_BENCH_PARTS_IN_FLIGHT").ok().and_then(|v| v.parse().ok()) {
            c.upload_concurrency = n;
        }
        c
    };
    let node_s3 = s3_config("via-service");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut cfg = SchedulerConfig::single_node("127.0.0.1:0".parse().expect("addr"), tmp.path().join("node"));
    cfg.blobs = Some(StoreConfig::S3(node_s3));
    cfg.max_blob_bytes = (large_mib as u64 + 1) << 20;
    let root_token = cfg.root_token.clone();
    let node = rt.block_on(SchedulerNode::start(cfg)).expect("scheduler node");
    let addr = node.local_addr().to_string();

    let direct_s3 = s3_config("direct");
    let stores: Vec<(&str, Arc<dyn BlobStore>)> = vec![
        ("local dir", Arc::new(LocalDirStore::open(tmp.path().join("local")).expect("local store"))),
        ("S3 direct", Arc::new(aidos_blob::S3Store::open(direct_s3).expect("s3 store"))),
        (
            "blob service -> S3",
            Arc::new(
                ServiceStore::connect(
                    std::slice::from_ref(&addr),
                    aidos_api::auth::Credentials::token(root_token.clone()),
                )
                .expect("service store"),
            ),
        ),
    ];

    println!("blob throughput (MiB/s; {small_rounds} x 1 MiB, {large_rounds} x {large_mib} MiB; fresh random bytes)");
    println!("{:<20} {:>12} {:>12} {:>14} {:>14}", "store", "1MiB put", "1MiB get", "large put", "large get");
    let small = measure(&stores, 1 << 20, small_rounds);
    let large = measure(&stores, large_mib << 20, large_rounds);
    for (i, (name, _)) in stores.iter().enumerate() {
        let (sp, sg) = (Times::rate(&small.put[i], 1 << 20), Times::rate(&small.get[i], 1 << 20));
        let (lp, lg) = (Times::rate(&large.put[i], large_mib << 20), Times::rate(&large.get[i], large_mib << 20));
        println!("{name:<20} {sp:>12.1} {sg:>12.1} {lp:>14.1} {lg:>14.1}");
    }
    let share = |t: &[Vec<f64>]| 100.0 * Times::rate(&t[2], 1) / Times::rate(&t[1], 1);
    println!(
        "blob service / direct S3 on {large_mib} MiB blobs: put {:.0}%, get {:.0}% over the run; median of the \
         {large_rounds} rounds: put {:.0}%, get {:.0}% (target >= 80%)",
        share(&large.put),
        share(&large.get),
        100.0 * Times::median_share(&large.put, 1, 2),
        100.0 * Times::median_share(&large.get, 1, 2),
    );
    drop(stores);
    rt.block_on(node.shutdown());
}
