//! Blob throughput, three ways in one run: a local directory (`LocalDirStore`), straight to S3 (`S3Store` on a
//! SeaweedFS `weed mini`), and through a scheduler node's blob service (`ServiceStore` -> `aidos.v1.BlobService` ->
//! the node's S3 store, the path a client on another machine takes). Every put writes fresh random bytes (a put of
//! an existing blob is a no-op and would measure nothing); every get reads a blob that store holds and verifies it.
//!
//!     AIDOS_WEED=/path/to/weed cargo bench --bench blob_throughput
//!     AIDOS_BENCH_LARGE_MIB=64 AIDOS_BENCH_LARGE_ROUNDS=2 ... (smaller large blobs, fewer rounds)
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

/// (put MiB/s, get MiB/s): `rounds` fresh blobs of `size` bytes put, then each read back.
fn measure(store: &dyn BlobStore, size: usize, rounds: usize) -> (f64, f64) {
    let mut rng = rand::rng();
    let blobs: Vec<Vec<u8>> = (0..rounds)
        .map(|_| {
            let mut v = vec![0u8; size];
            rng.fill_bytes(&mut v);
            v
        })
        .collect();
    let t = Instant::now();
    let ids: Vec<BlobId> = blobs.iter().map(|b| store.put(b).expect("put")).collect();
    let put = t.elapsed();
    let t = Instant::now();
    for (id, b) in ids.iter().zip(&blobs) {
        let got = store.get(id).expect("get");
        assert_eq!(got.len(), b.len());
    }
    let get = t.elapsed();
    let mib = (size * rounds) as f64 / (1 << 20) as f64;
    (mib / secs(put), mib / secs(get))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs it once without: then a small smoke run that
    // only proves the three paths work (its figures mean nothing: debug build, tiny sizes).
    let measuring = std::env::args().any(|a| a == "--bench");
    let (large_default, large_rounds_default, small_default) = if measuring { (256, 3, 64) } else { (8, 1, 2) };
    let large_mib = env_usize("AIDOS_BENCH_LARGE_MIB", large_default);
    let large_rounds = env_usize("AIDOS_BENCH_LARGE_ROUNDS", large_rounds_default);
    let small_rounds = env_usize("AIDOS_BENCH_SMALL_ROUNDS", small_default);

    let weed = Weed::start(WeedOptions { bucket: "aidos-bench".into(), ..Default::default() });
    let tmp = tempfile::tempdir().expect("temp dir");

    // A one-node scheduler whose blob service keeps blobs in the same bucket, under its own prefix.
    let mut node_s3 = weed.config();
    node_s3.prefix = "via-service".into();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut cfg = SchedulerConfig::single_node("127.0.0.1:0".parse().expect("addr"), tmp.path().join("node"));
    cfg.blobs = Some(StoreConfig::S3(node_s3));
    cfg.max_blob_bytes = (large_mib as u64 + 1) << 20;
    let root_token = cfg.root_token.clone();
    let node = rt.block_on(SchedulerNode::start(cfg)).expect("scheduler node");
    let addr = node.local_addr().to_string();

    let mut direct_s3 = weed.config();
    direct_s3.prefix = "direct".into();
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
    let mut large = Vec::new();
    for (name, store) in &stores {
        let (sp, sg) = measure(store.as_ref(), 1 << 20, small_rounds);
        let (lp, lg) = measure(store.as_ref(), large_mib << 20, large_rounds);
        println!("{name:<20} {sp:>12.1} {sg:>12.1} {lp:>14.1} {lg:>14.1}");
        large.push((lp, lg));
    }
    let (s3, svc) = (large[1], large[2]);
    println!(
        "blob service / direct S3 on {large_mib} MiB blobs: put {:.0}%, get {:.0}% (target >= 80%)",
        100.0 * svc.0 / s3.0,
        100.0 * svc.1 / s3.1
    );
    drop(stores);
    rt.block_on(node.shutdown());
}
