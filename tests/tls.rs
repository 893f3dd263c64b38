//! Transport security (#17): a three-node cluster that serves TLS, made with `aidos cert init`. Its nodes elect a
//! leader over mutual TLS; a plain-TCP client gets nothing; Raft and the worker channel need certificates of the
//! cluster CA (a root token alone is refused there); a worker joins with a one-time join token, runs a training job
//! whose task reaches the scheduler over TLS, and is cut off when revoked; a second use of the join token, and a
//! worker with neither a certificate nor a join token, are refused; an edge agent enrols over TLS.

mod common;

use std::time::{Duration, Instant};

use aidos_api::v1::*;
use common::*;

/// Calls `path` over TLS (trusting the cluster CA, presenting no client certificate) with an empty message.
async fn call_tls(c: &Cluster, addr: &str, path: &str, authorization: Option<&str>) -> tonic::Status {
    let creds = aidos_api::auth::Credentials { tls: c.credentials().tls, ..Default::default() };
    let ch = creds.endpoint(addr).unwrap().connect().await.expect("a TLS connection without a client certificate");
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    let mut req = tonic::Request::new(());
    if let Some(a) = authorization {
        req.metadata_mut().insert(aidos_api::auth::AUTHORIZATION, a.parse().unwrap());
    }
    req.set_timeout(Duration::from_secs(10));
    let path = <tonic::codegen::http::uri::PathAndQuery as std::str::FromStr>::from_str(path).unwrap();
    match g.unary::<(), (), _>(req, path, tonic_prost::ProstCodec::default()).await {
        Ok(_) => tonic::Status::ok(""),
        Err(s) => s,
    }
}

async fn worker_state(c: &Cluster, id: &str) -> Option<WorkerState> {
    let ws = c.cluster_client().await.list_workers(ListWorkersRequest {}).await.ok()?.into_inner().workers;
    ws.iter().find(|w| w.id == id).map(|w| WorkerState::try_from(w.state).unwrap_or_default())
}

/// Waits until the cluster reports worker `id` in `state`.
async fn wait_worker(c: &Cluster, id: &str, state: WorkerState, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker_state(c, id).await != Some(state) {
        if Instant::now() > deadline {
            dump_logs(c);
            panic!("{what}: worker {id} not {state:?} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until worker process `id` exits, and returns its output.
fn exited(c: &mut Cluster, id: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let p = c.workers.get_mut(id).unwrap();
        if p.exit_status().starts_with("exited") {
            return p.output();
        }
        if Instant::now() > deadline {
            dump_logs(c);
            panic!("worker {id} still {} after {within:?}", c.workers.get_mut(id).unwrap().exit_status());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_and_workers_prove_themselves_with_certificates_of_the_cluster_ca() {
    // Three nodes elect a leader: Raft runs over mutual TLS (each node presents the certificate it issued itself).
    let mut c = start_cluster_tls(3, &[]).await;
    let addr = c.addrs()[0].clone();

    // A plain-TCP client gets no answer at all, even with the root token.
    let plain = match channel(&addr).await {
        None => None,
        Some(ch) => Some(
            aidos_api::cluster_service_client::ClusterServiceClient::new(ch)
                .status(ClusterStatusRequest {})
                .await
                .map(|_| ()),
        ),
    };
    assert!(!matches!(plain, Some(Ok(()))), "a plain-TCP call was answered");
    // The CLI over TLS (trusting the CA, with the root token) is answered.
    let (code, out, err) = c.cli(&["cluster", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("leader"), "{out}");

    // Raft and the worker channel need certificates: the root token alone over TLS is refused, saying why.
    let root = bearer(&TOKEN);
    let vote = call_tls(&c, &addr, "/aidos.v1.RaftService/Vote", Some(&root)).await;
    assert_eq!(vote.code(), tonic::Code::Unauthenticated, "{vote:?}");
    assert!(vote.message().contains("node's certificate"), "{vote:?}");
    let beat = call_tls(&c, &addr, "/aidos.v1.WorkerService/Heartbeat", Some(&root)).await;
    assert_eq!(beat.code(), tonic::Code::Unauthenticated, "{beat:?}");
    assert!(beat.message().contains("worker certificate"), "{beat:?}");

    // A worker with neither a certificate nor a join token does not start, and says what it needs.
    c.start_worker("w0", "1", "");
    let out = exited(&mut c, "w0", Duration::from_secs(30));
    assert!(out.contains("join token"), "{out}");
    assert_eq!(worker_state(&c, "w0").await, None, "a worker without a certificate registered");

    // A one-time join token buys worker w1 (which holds no token of any kind) its certificate; w1 registers and
    // runs a training job whose task reports to the scheduler over TLS (AIDOS_CA_CERT).
    let (join_id, join) = create_token(&c, &["--name", "w1-join", "--role", "worker", "--for-project", "*", "--join"]);
    c.start_worker_tokenless("w1", "2", &["--join-token", &join]);
    wait_worker(&c, "w1", WorkerState::Ready, "joining").await;
    let key = std::fs::metadata(c.path().join("worker-w1").join(aidos_api::tls::KEY_FILE)).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o077, 0, "worker key readable by others");
    c.train_digits(1).await;

    // The join token was used up: a second worker cannot join with it, and it is no bearer token either.
    c.start_worker_with("w2", "1", "", &["--join-token", &join]);
    let out = exited(&mut c, "w2", Duration::from_secs(30));
    assert!(out.contains(&format!("join token {join_id} was used")), "{out}");
    let as_bearer = call_tls(&c, &addr, "/aidos.v1.JobService/List", Some(&bearer(&join))).await;
    assert_eq!(as_bearer.code(), tonic::Code::Unauthenticated, "{as_bearer:?}");

    // An edge agent reaches the TLS control plane verifying it against the CA, and enrols.
    let ca = c.ca.clone().unwrap();
    let cache = c.path().join("edge-cache");
    let _agent = c.spawn_aidos(
        "agent-cam",
        &[
            "edge",
            "agent",
            "--server",
            &c.addrs().join(","),
            "--device",
            "cam",
            "--cache",
            cache.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--sync-ms",
            "200",
            "--server-ca",
            ca.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut e = aidos_api::edge_service_client::EdgeServiceClient::new(c.any_channel().await);
        let r = e.list_devices(ListDevicesRequest { name: "cam".into() }).await.map(|r| r.into_inner().devices);
        if r.is_ok_and(|d| !d.is_empty()) {
            break;
        }
        if Instant::now() > deadline {
            dump_logs(&c);
            panic!("the edge agent did not enrol over TLS");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Revoking w1 cuts it off: its heartbeats are refused, it is declared lost, and a restart cannot register.
    let (code, out, err) = c.cli(&["cluster", "revoke-worker", "w1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked 1 certificate"), "{out}");
    wait_worker(&c, "w1", WorkerState::Lost, "revoked").await;
    let refusals = |c: &Cluster| c.workers["w1"].output().matches("was revoked").count();
    let before = refusals(&c);
    assert!(before > 0, "{}", c.workers["w1"].output());
    let w1 = c.workers.get_mut("w1").unwrap();
    w1.sigkill();
    w1.start();
    wait_until("the restarted w1 refused", Duration::from_secs(30), || (refusals(&c) > before).then_some(()));
    assert_eq!(worker_state(&c, "w1").await, Some(WorkerState::Lost), "a revoked worker registered again");
}
