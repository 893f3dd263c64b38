//! Issue #14: blobs through the control plane. A client and a worker that do not share the scheduler's blob
//! directory (as on other machines) push a dataset, train, and pull the model, through the blob service; and the
//! service's answers to bad uploads name the problem and store nothing.

mod common;

use aidos_api::blob_service_client::BlobServiceClient;
use aidos_api::v1::*;
use common::*;

fn files_under(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten().map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 }).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_and_a_worker_without_the_blob_dir_push_train_and_pull_through_the_service() {
    let mut c = start_cluster(1).await;
    c.shared_blob_dir = false;
    c.start_worker("w1", "4", "");
    // Push (client -> service), train (the task reads the dataset through its worker's cache and writes
    // checkpoints and weights through the service), register.
    c.train_digits(1).await;
    let cache = c.path().join("worker-w1/blob-cache");
    assert!(files_under(&cache) > 0, "the worker's cache was filled from the service");
    assert!(files_under(&c.blob_dir()) > files_under(&cache), "the cluster's store holds what tasks wrote");
    // Pull (service -> client).
    let out = c.path().join("pulled");
    let (code, _, err) = c.cli(&["model", "pull", "digits:1", "--dir", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::metadata(out.join("weights.bin")).unwrap().len() > 0);
    // A client that names an unreachable scheduler gets an error that says so, and nothing is half-pushed.
    let mnist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist10k");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aidos"))
        .args(["--scheduler", &format!("127.0.0.1:{}", free_port()), "dataset", "push", "other"])
        .arg(&mnist)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1"), "the error names the unreachable scheduler: {err}");
}

fn chunk(id: &str, size: u64, data: &[u8]) -> BlobUploadChunk {
    BlobUploadChunk { id: id.into(), size, data: data.to_vec().into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_by_name_and_leave_nothing_behind() {
    let c = start_cluster_with(1, &["--max-blob-bytes", "4096"]).await;
    let mut api = BlobServiceClient::new(c.any_channel().await);
    let data = vec![7u8; 3000];
    let id = aidos_blob::BlobId::of(&data).to_string();
    let has = |api: &mut BlobServiceClient<_>, id: &str| {
        let mut api = api.clone();
        let id = id.to_string();
        async move { api.has(HasBlobsRequest { ids: vec![id], refresh: false }).await.unwrap().into_inner().present[0] }
    };

    // Truncated: fewer bytes than announced.
    let e = api.upload(tokio_stream::iter(vec![chunk(&id, 3000, &data[..1000])])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("fewer bytes"), "{}", e.message());
    // Corrupted: the bytes do not hash to the id.
    let mut bad = data.clone();
    bad[10] = 8;
    let e = api.upload(tokio_stream::iter(vec![chunk(&id, 3000, &bad)])).await.unwrap_err();
    assert!(e.message().contains("hash"), "{}", e.message());
    assert!(!has(&mut api, &id).await, "nothing half-visible after refused uploads");
    // Over the node's limit.
    let big = vec![1u8; 5000];
    let big_id = aidos_blob::BlobId::of(&big).to_string();
    let e = api.upload(tokio_stream::iter(vec![chunk(&big_id, 5000, &big)])).await.unwrap_err();
    assert!(e.message().contains("limit of 4096"), "{}", e.message());
    // A bad id.
    let e = api.upload(tokio_stream::iter(vec![chunk("../etc", 3, b"abc")])).await.unwrap_err();
    assert!(e.message().contains("upload.id"), "{}", e.message());

    // A good upload in two chunks; a second one is a no-op; downloads resume from an offset.
    let two = vec![chunk(&id, 3000, &data[..1500]), chunk("", 0, &data[1500..])];
    let r = api.upload(tokio_stream::iter(two)).await.unwrap().into_inner();
    assert!(!r.existed && r.size == 3000);
    assert!(api.upload(tokio_stream::iter(vec![chunk(&id, 3000, &data)])).await.unwrap().into_inner().existed);
    assert!(has(&mut api, &id).await);
    let mut s = api.download(BlobDownloadRequest { id: id.clone(), offset: 2900 }).await.unwrap().into_inner();
    let mut tail = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        assert_eq!(m.total_size, 3000);
        tail.extend(m.data);
    }
    assert_eq!(tail, data[2900..]);
    let missing = aidos_blob::BlobId::of(b"missing").to_string();
    let e = api.download(BlobDownloadRequest { id: missing, offset: 0 }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // The client's store, called straight from async code as the CLI does (it blocks this thread; it must not
    // panic): a fresh blob goes up in chunks and comes back.
    use aidos_blob::BlobStore;
    let store = aidos_blob::ServiceStore::connect(&c.addrs(), c.credentials()).unwrap();
    let fresh: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
    let fresh_id = store.put(&fresh).unwrap();
    assert!(has(&mut api, fresh_id.as_str()).await);
    assert_eq!(&*store.get(&fresh_id).unwrap(), &fresh[..]);
}

/// The temp files (`.<id>.tmp.<pid>.<n>`) that the node with process id `pid` is writing under `dir`.
fn temp_files_of(dir: &std::path::Path, pid: u32) -> usize {
    let mark = format!(".tmp.{pid}.");
    let Ok(shards) = std::fs::read_dir(dir) else { return 0 };
    shards
        .flatten()
        .filter_map(|s| std::fs::read_dir(s.path()).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| e.file_name().to_string_lossy().contains(&mark))
        .count()
}

/// A node that hangs (SIGSTOP: alive to TCP, silent to everything else) costs a client its liveness timeout, not a
/// hang: an upload it took is abandoned and sent again to the next node, a download it was asked for goes to the
/// next node, and a client that knows only the hung node gets an error naming it. The abandoned upload leaves
/// nothing half-written once the node runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_costs_the_liveness_timeout_and_the_next_node_answers() {
    use aidos_blob::{BlobStore, ServiceStore};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let c = start_cluster(3).await;
    let addrs = c.addrs();
    let pid = c.nodes.values().find(|(a, _)| *a == addrs[0]).unwrap().1.child.as_ref().unwrap().id();
    let signal = |sig: i32| assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
    let liveness = Duration::from_secs(1);
    let store = |addrs: &[String], budget: u64| {
        Arc::new(
            ServiceStore::connect_with(addrs, c.credentials(), liveness)
                .unwrap()
                .with_budget(Duration::from_secs(budget)),
        )
    };

    // An upload: the first node takes it and is stopped as soon as it has started writing the blob.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Arc<Vec<u8>> = Arc::new(
        (0..96 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect(),
    );
    let (s, d) = (store(&addrs, 60), data.clone());
    let put = tokio::task::spawn_blocking(move || s.put(&d));
    let blobs = c.blob_dir();
    let deadline = Instant::now() + Duration::from_secs(30);
    while temp_files_of(&blobs, pid) == 0 {
        assert!(!put.is_finished(), "the upload ended before the first node could be stopped mid-way");
        assert!(Instant::now() < deadline, "the first node never started writing the upload");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    signal(libc::SIGSTOP);
    let t0 = Instant::now();
    let id = tokio::time::timeout(Duration::from_secs(90), put)
        .await
        .expect("the upload hung on the stopped node")
        .unwrap()
        .expect("the upload went to another node");
    eprintln!("upload done {:?} after the first node stopped", t0.elapsed());
    assert!(temp_files_of(&blobs, pid) > 0, "the stopped node was stopped mid-upload");
    signal(libc::SIGCONT);
    // The node sees the reset stream and drops what it wrote.
    wait_until("the abandoned upload's temp file removed", Duration::from_secs(30), || {
        (temp_files_of(&blobs, pid) == 0).then_some(())
    });

    // A download asked of the stopped node resumes on the next one.
    signal(libc::SIGSTOP);
    let s = store(&addrs, 60);
    let (s2, id2) = (s.clone(), id.clone());
    let got = tokio::time::timeout(Duration::from_secs(90), tokio::task::spawn_blocking(move || s2.get(&id2)))
        .await
        .expect("the download hung on the stopped node")
        .unwrap()
        .expect("the download went to another node");
    assert!(*got == data[..], "the download is the blob");

    // A client that knows only the stopped node gives up within its budget, naming it.
    let only = store(&addrs[..1], 5);
    let t0 = Instant::now();
    let e = tokio::task::spawn_blocking(move || only.contains(&id)).await.unwrap().unwrap_err().to_string();
    assert!(t0.elapsed() < Duration::from_secs(30), "gave up after {:?}", t0.elapsed());
    eprintln!("{e}");
    assert!(e.contains(&addrs[0]) && e.contains("gave up") && e.contains("no answer from the node"), "{e}");
    signal(libc::SIGCONT);
}
