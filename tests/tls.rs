//! Transport security (#17): a three-node cluster that serves TLS, made with `aidos cert init`. Its nodes elect a
//! leader over mutual TLS; a plain-TCP client gets nothing; Raft and the worker channel need certificates of the
//! cluster CA (a root token alone is refused there); a worker joins with a one-time join token, runs a training job
//! whose task reaches the scheduler over TLS, and is cut off when revoked; a second use of the join token, and a
//! worker with neither a certificate nor a join token, are refused; an edge agent enrols over TLS; nodes and workers
//! outlive their first certificates (rotation without a restart), and a worker restarts on its renewed one.

mod common;

use std::time::{Duration, Instant};

use aidos_api::v1::*;
use common::*;

/// Calls `path` over TLS (trusting the cluster CA, presenting no client certificate) with an empty message.
async fn call_tls(c: &Cluster, addr: &str, path: &str, authorization: Option<&str>) -> tonic::Status {
    let creds = aidos_api::auth::Credentials { tls: c.credentials().tls, ..Default::default() };
    let ep = creds.endpoint(addr).unwrap();
    let ch = creds.connect(&ep).await.expect("a TLS connection without a client certificate");
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
    // Every certificate is short-lived, so that the test outlives the first ones: rotation is part of the run.
    let lifetimes = ["--device-cert-lifetime", "6s", "--node-cert-lifetime", "12s", "--worker-cert-lifetime", "12s"];
    let mut c = start_cluster_tls(3, &lifetimes).await;
    let started = Instant::now();
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
    let w1_cert = |c: &Cluster| {
        let pem = std::fs::read_to_string(c.path().join("worker-w1").join(aidos_api::tls::CERT_FILE)).unwrap();
        aidos_api::tls::peer_of_pem(&pem).expect("w1's certificate")
    };
    let w1_first = w1_cert(&c);
    c.train_digits(1).await;

    // The join token was used up: a second worker cannot join with it, and it is no bearer token either.
    c.start_worker_with("w2", "1", "", &["--join-token", &join]);
    let out = exited(&mut c, "w2", Duration::from_secs(30));
    assert!(out.contains(&format!("join token {join_id} was used")), "{out}");
    let as_bearer = call_tls(&c, &addr, "/aidos.v1.JobService/List", Some(&bearer(&join))).await;
    assert_eq!(as_bearer.code(), tonic::Code::Unauthenticated, "{as_bearer:?}");

    // Edge agents: on a TLS control plane a new device needs a join token; it gets a certificate for a key it made,
    // which Sync and Download need besides its credential; it renews it before it expires, without a pause.
    let ca = c.ca.clone().unwrap();
    let agent = |c: &Cluster, device: &str, join: &str| {
        let (p, ready) =
            c.spawn_edge_agent(device, "fleet=cams", &["--server-ca", ca.to_str().unwrap(), "--join-token", join]);
        (p, c.path().join(format!("edge-{device}")), ready)
    };
    let device = async |c: &Cluster, name: &str| {
        let mut e = aidos_api::edge_service_client::EdgeServiceClient::new(c.any_channel().await);
        let r = e.list_devices(ListDevicesRequest { name: name.into() }).await.ok()?.into_inner();
        r.devices.into_iter().next()
    };
    let (mut rogue, _, _) = agent(&c, "rogue", "");
    wait_until("the agent without a join token refused", Duration::from_secs(30), || {
        rogue.output().contains("needs a join token").then_some(())
    });
    rogue.sigkill();
    assert!(device(&c, "rogue").await.is_none(), "a device enrolled without a join token");

    let (edge_join_id, edge_join) =
        create_token(&c, &["--name", "cam-join", "--role", "worker", "--for-project", "*", "--join"]);
    let (mut cam, cam_cache, cam_ready) = agent(&c, "cam", &edge_join);
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(d) = device(&c, "cam").await.filter(|d| !d.cert_serial.is_empty()) {
            break d;
        }
        if Instant::now() > deadline {
            dump_logs(&c);
            panic!("the edge agent did not enrol over TLS: {}", cam.output());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The join token is used up: another device cannot enrol with it.
    let mut e = aidos_api::edge_service_client::EdgeServiceClient::new(c.any_channel().await);
    let (csr, _) = aidos_api::tls::request(&aidos_api::tls::Identity::Device("cam2".into())).unwrap();
    let again = EnrollRequest {
        device: "cam2".into(),
        credential: vec![9; 32],
        join_token: edge_join.clone(),
        csr_pem: csr,
        ..Default::default()
    };
    let s = e.enroll(again).await.unwrap_err();
    assert!(s.message().contains(&format!("join token {edge_join_id} was used")), "{s:?}");
    // cam's own credential without its certificate: neither sync nor download.
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(cam_cache.join("state.json")).unwrap()).unwrap();
    let hex = st["credential_hex"].as_str().unwrap();
    let credential: Vec<u8> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let sync = EdgeSyncRequest { device: "cam".into(), credential: credential.clone(), ..Default::default() };
    let s = e.sync(sync).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("device's certificate"), "{s:?}");
    let dl = DownloadRequest { device: "cam".into(), artifact: "0".repeat(64), max_bytes: 64, credential, offset: 0 };
    let s = e.download(dl).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");

    // A model deployed to the fleet is downloaded over mutual TLS and served by the agent.
    let (code, out, err) = c.cli(&["edge", "deploy", "digits:1", "--selector", "fleet=cams", "--export-on-cluster"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until("cam serving digits:1", Duration::from_secs(60), || {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cam_ready).ok()?).ok()?;
        let addr: std::net::SocketAddr = v["http"].as_str()?.parse().ok()?;
        (http(addr, "GET", "/v2/models/digits/ready", "").0 == 200).then_some(())
    });
    // The server gives devices 6-second certificates: the agent renews its one after ~4 s and goes on syncing
    // with the new one; the renewal retired the old one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let renewed = loop {
        if let Some(d) = device(&c, "cam").await.filter(|d| d.cert_serial != first.cert_serial) {
            break d;
        }
        if Instant::now() > deadline {
            dump_logs(&c);
            panic!("cam's certificate was not renewed: {}", cam.output());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(renewed.cert_not_after_ms > first.cert_not_after_ms);
    let seen = renewed.last_seen_ms;
    let deadline = Instant::now() + Duration::from_secs(10);
    while device(&c, "cam").await.is_none_or(|d| d.last_seen_ms <= seen + 1000) {
        assert!(Instant::now() < deadline, "cam stopped syncing after its renewal: {}", cam.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!cam.output().contains("certificate was not"), "{}", cam.output());
    // An agent that was away longer than its certificate lives comes back: it presents no expired certificate,
    // enrols with its credential and a new request, and syncs again.
    cam.sigkill();
    let away = device(&c, "cam").await.unwrap();
    wait_until("cam's certificate expired", Duration::from_secs(20), || {
        (aidos_api::now_ms() > away.cert_not_after_ms + 500).then_some(())
    });
    cam.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while device(&c, "cam")
        .await
        .is_none_or(|d| d.cert_serial == away.cert_serial || d.last_seen_ms <= away.last_seen_ms)
    {
        assert!(Instant::now() < deadline, "cam did not come back after its certificate expired: {}", cam.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cam.sigkill();

    // Rotation without downtime. By now the first node and worker certificates (12 s) have expired.
    wait_until("the first certificates expired", Duration::from_secs(30), || {
        (started.elapsed() > Duration::from_secs(13) && aidos_api::now_ms() > w1_first.not_after_ms + 1000)
            .then_some(())
    });
    // Every node answers a brand-new TLS connection (the handshake verifies the certificate the node presents now).
    for a in c.addrs() {
        let s = call_tls(&c, &a, "/aidos.v1.ClusterService/Status", Some(&root)).await;
        assert_eq!(s.code(), tonic::Code::Ok, "node {a} after its first certificate expired: {s:?}");
    }
    // Nodes present their new certificates to each other too: a follower restarted now is reached by the leader
    // over new connections (its handshake verifies the leader's client certificate) and follows it.
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    c.kill_node(follower);
    c.restart_node(follower);
    c.wait_leader(Duration::from_secs(30)).await;
    // w1 renewed its certificate twice while it ran (the second renewal presented the first renewed one: w1's
    // clients moved to new connections), kept its files in step, and goes on working without a restart.
    let renewals = |c: &Cluster| c.workers["w1"].output().matches("renewed this worker's certificate").count();
    wait_until("w1 renewed twice", Duration::from_secs(30), || (renewals(&c) >= 2).then_some(()));
    let renewed = w1_cert(&c);
    assert_ne!(renewed.serial, w1_first.serial, "w1 did not renew its certificate: {}", c.workers["w1"].output());
    assert!(renewed.not_after_ms > aidos_api::now_ms(), "{renewed:?}");
    assert_eq!(run_one(&c, "after-two-renewals").await, "w1");
    assert_eq!(worker_state(&c, "w1").await, Some(WorkerState::Ready));
    let out = c.workers["w1"].output();
    assert!(!out.contains("was not issued") && !out.contains("connection was made before"), "{out}");
    // RenewCert needs the worker's own certificate: none (the root token alone), or w1's for another worker, is
    // refused.
    let leader_addr = c.nodes[&c.wait_leader(Duration::from_secs(30)).await].0.clone();
    let s = call_tls(&c, &leader_addr, "/aidos.v1.WorkerService/RenewCert", Some(&root)).await;
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    let s = renew_as_w1(&c, &leader_addr, "w9").await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    // Nor does w1's certificate report task states or logs for another worker.
    let report = TaskStatusReport { worker_id: "w9".into(), state: TaskState::Failed as i32, ..Default::default() };
    let s = as_w1(&c, &leader_addr).await.report_status(report).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    let logs = LogReport { worker_id: "w9".into(), data: b"forged".to_vec(), ..Default::default() };
    let s = as_w1(&c, &leader_addr).await.report_logs(tokio_stream::iter([logs])).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    // A restart presents the renewed certificate from disk (its join token was used up long ago) and runs a task.
    let w1 = c.workers.get_mut("w1").unwrap();
    w1.sigkill();
    w1.start();
    assert_eq!(run_one(&c, "after-rotation").await, "w1");

    // Revoking w1 cuts it off: its heartbeats are refused, it is declared lost, and a restart cannot register.
    let (code, out, err) = c.cli(&["cluster", "revoke-worker", "w1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("certificate(s) of worker w1"), "{out}");
    // Nor can its certificate (renewed within the last ~8 s, so still within its dates) buy a new one.
    let s = renew_as_w1(&c, &leader_addr, "w1").await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("revoked"), "{s:?}");
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

/// Runs a one-second `process` job and returns the worker it ran on.
async fn run_one(c: &Cluster, name: &str) -> String {
    let spec = sh_job(name, "echo ok", 100, 0);
    let id = c.jobs().await.submit(SubmitRequest { spec: Some(spec), ..Default::default() }).await;
    let id = id.unwrap().into_inner().job_id;
    let j = c.wait_job(&id, Duration::from_secs(60), |j| state_of(j) == JobState::Succeeded).await;
    j.tasks.first().and_then(|t| t.attempts.last()).map(|a| a.worker_id.clone()).unwrap_or_default()
}

/// A WorkerService client at `addr` presenting w1's certificate from its data directory (no token).
async fn as_w1(c: &Cluster, addr: &str) -> aidos_api::worker_service_client::WorkerServiceClient<Channel> {
    let dir = c.path().join("worker-w1");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let ca = aidos_api::tls::ClientTls::load(c.ca.as_ref().unwrap()).unwrap();
    let tls = ca.with_identity(&read(aidos_api::tls::CERT_FILE), &read(aidos_api::tls::KEY_FILE)).unwrap();
    let creds = aidos_api::auth::Credentials { tls: Some(tls), ..Default::default() };
    let ch = creds.connect(&creds.endpoint(addr).unwrap()).await.expect("a TLS connection with w1's certificate");
    aidos_api::worker_service_client::WorkerServiceClient::new(aidos_api::auth::with_credentials(ch, &creds))
}

/// `WorkerService.RenewCert` for `worker`, presenting w1's certificate.
async fn renew_as_w1(c: &Cluster, addr: &str, worker: &str) -> Result<JoinResponse, tonic::Status> {
    let (csr, _) = aidos_api::tls::request(&aidos_api::tls::Identity::Worker(worker.into())).unwrap();
    let req = RenewCertRequest { worker_id: worker.into(), csr_pem: csr };
    as_w1(c, addr).await.renew_cert(req).await.map(|r| r.into_inner())
}
