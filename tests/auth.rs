//! The front door: every RPC of every service refuses bad credentials with the right code and changes nothing;
//! tokens, roles, projects and the `process` permission through the CLI; job tokens; a revocation reaches every
//! node within a second; a worker with a revoked token is cut off.

mod common;

use std::time::{Duration, Instant};

use aidos_api::auth::{self, Access, Credentials};
use aidos_api::auth_service_client::AuthServiceClient;
use aidos_api::v1::*;
use common::*;
use tonic::Code;

async fn who(addr: &str, token: &str) -> Result<WhoAmIResponse, tonic::Status> {
    let ch = aidos_api::auth::with_credentials(raw_channel(addr).await.unwrap(), &Credentials::token(token));
    AuthServiceClient::new(ch).who_am_i(WhoAmIRequest {}).await.map(|r| r.into_inner())
}

/// What the cluster holds, as the root token sees it: a refused call must not change it. (Not the applied index:
/// refusals of mutations are appended to the audit log; that they are, and only they, is checked from the log.)
async fn fingerprint(c: &Cluster) -> String {
    let st = c.cluster_client().await.status(ClusterStatusRequest {}).await.unwrap().into_inner();
    let mut a = AuthServiceClient::new(c.any_channel().await);
    let tokens = a.list_tokens(ListTokensRequest { include_revoked: true, ..Default::default() }).await.unwrap();
    let sweeps = aidos_api::sweep_service_client::SweepServiceClient::new(c.any_channel().await)
        .list(ListSweepsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sweeps
        .len();
    format!(
        "jobs={} workers={} sweeps={sweeps} tokens={:?}",
        st.jobs_total,
        st.workers_ready,
        tokens.into_inner().tokens
    )
}

/// The audit log as the root token reads it (every project), newest first.
async fn audit_log(c: &Cluster, req: ListAuditRequest) -> Vec<AuditRecord> {
    let mut a = aidos_api::audit_service_client::AuditServiceClient::new(c.any_channel().await);
    a.list(req).await.unwrap().into_inner().records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_bad_credentials_with_the_right_code_and_changes_nothing() {
    let c = start_cluster(3).await;
    let (_, member_b) = create_token(&c, &["--name", "bob", "--role", "member", "--for-project", "b"]);
    let (_, viewer_a) = create_token(&c, &["--name", "vic", "--role", "viewer", "--for-project", "a"]);
    let (revoked_id, revoked) = create_token(&c, &["--name", "rex", "--role", "admin", "--for-project", "a"]);
    let (code, _, err) = c.cli(&["token", "revoke", &revoked_id]);
    assert_eq!(code, 0, "{err}");
    let (_, expired) = create_token(&c, &["--name", "eve", "--role", "admin", "--for-project", "a", "--expires", "1"]);
    let addrs = c.addrs();
    // Wait (on state, bounded) until the short-lived token has expired.
    let deadline = Instant::now() + Duration::from_secs(10);
    while who(&addrs[0], &expired).await.is_ok() {
        assert!(Instant::now() < deadline, "a token with a 1 s lifetime still works after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let before = fingerprint(&c).await;
    let since_ms = aidos_api::now_ms();
    let mut audited = 0;
    // Every RPC of every service, from the compiled descriptors: a new RPC is in the table by itself.
    let methods = aidos_api::every_rpc();
    assert!(methods.len() > 50, "{methods:?}");
    let mut checked = 0;
    for (i, m) in methods.iter().enumerate() {
        let access = aidos_scheduler::auth::access(m).unwrap_or_else(|| panic!("{m} has no access rule"));
        // Public methods and devices' calls authenticate their callers themselves (devices: `tests/edge.rs`, and
        // their certificates in `tests/tls.rs`).
        if matches!(access, Access::Public | Access::Device) {
            continue;
        }
        // Round robin over the nodes: followers refuse before they would relay.
        let addr = &addrs[i % addrs.len()];
        let project_scoped = matches!(access, Access::Read | Access::Write | Access::ProjectAdmin);
        let viewer_may = matches!(access, Access::Read | Access::BlobRead | Access::Authenticated);
        let mut cases: Vec<(&str, Option<String>, Code)> = vec![
            ("no token", None, Code::Unauthenticated),
            ("a malformed token", Some("Bearer not-a-token".into()), Code::Unauthenticated),
            (
                "a token with a wrong secret",
                Some(bearer(&auth::format_token("root", &auth::new_secret()))),
                Code::Unauthenticated,
            ),
            ("an expired token", Some(bearer(&expired)), Code::Unauthenticated),
            ("a revoked token", Some(bearer(&revoked)), Code::Unauthenticated),
        ];
        if project_scoped || matches!(access, Access::ClusterAdmin | Access::Worker | Access::Peer) {
            cases.push(("a token of another project", Some(bearer(&member_b)), Code::PermissionDenied));
        }
        if !viewer_may {
            cases.push(("a viewer", Some(bearer(&viewer_a)), Code::PermissionDenied));
        }
        for (what, authz, want) in cases {
            let got = call(addr, m, authz.as_deref(), Some("a")).await;
            assert_eq!(got, want, "{m} ({access:?}) with {what} at {addr}");
            checked += 1;
            audited += aidos_scheduler::audit::auditable(m, access) as usize;
        }
    }
    assert!(checked > 300, "only {checked} refusals checked");
    assert_eq!(fingerprint(&c).await, before, "a refused call changed the cluster");
    // Every refused mutation is in the audit log as denied, on whichever node refused it; nothing as allowed.
    let req = ListAuditRequest { since_ms, limit: 1000, ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = audit_log(&c, req.clone()).await;
        if log.len() >= audited || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(log.len(), audited, "audit records of the refused mutations");
    assert!(log.iter().all(|r| !r.allowed && !r.reason.is_empty()), "{:?}", log.iter().find(|r| r.allowed));
    let nodes: std::collections::BTreeSet<u64> = log.iter().map(|r| r.node).collect();
    assert_eq!(nodes.len(), 3, "each node records what it refused: {nodes:?}");
    assert!(log.iter().any(|r| r.code == "PermissionDenied" && r.principal == "vic"), "a viewer's refusal");
    assert!(log.iter().any(|r| r.code == "Unauthenticated" && r.principal.is_empty()), "no token");
    println!("{} refused mutations in the audit log", log.len());

    // A revocation takes effect on every node within a second.
    let (id, t) = create_token(&c, &["--name", "rita", "--role", "viewer", "--for-project", "a"]);
    for a in &addrs {
        // Replication of the create is quick but not instant: wait for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while who(a, &t).await.is_err() {
            assert!(Instant::now() < deadline, "node {a} does not know the new token");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (code, _, err) = c.cli(&["token", "revoke", &id]);
    assert_eq!(code, 0, "{err}");
    let revoked_at = Instant::now();
    for a in &addrs {
        loop {
            match who(a, &t).await {
                Err(s) if s.code() == Code::Unauthenticated => {
                    assert!(s.message().contains("revoked"), "{}", s.message());
                    break;
                }
                _ => {
                    let waited = revoked_at.elapsed();
                    assert!(waited < Duration::from_secs(1), "node {a} still accepts a revoked token after {waited:?}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    println!("revocation reached all {} nodes within {:?}", addrs.len(), revoked_at.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_projects_process_permission_job_tokens_and_a_revoked_worker() {
    let mut c = start_cluster(1).await;
    let addr = c.addrs()[0].clone();
    let (_, ann) = create_token(&c, &["--name", "ann", "--role", "member", "--for-project", "a"]);
    let (_, noproc) = create_token(&c, &["--name", "nop", "--role", "member", "--for-project", "a", "--no-process"]);
    let (_, vic) = create_token(&c, &["--name", "vic", "--role", "viewer", "--for-project", "a"]);
    let (worker_id, worker_token) = create_token(&c, &["--name", "w1", "--role", "worker"]);

    // whoami through the CLI, and the CLI's clear refusals.
    let (code, out, err) = c.cli(&["--token", &ann, "--project", "a", "whoami"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ann (member of project a"), "{out}");
    let (code, _, err) = c.cli(&["--token", "aidos_nope", "job", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("malformed token"), "{err}");
    let (code, _, err) =
        c.cli(&["--token", &vic, "--project", "a", "token", "create", "--name", "x", "--role", "viewer"]);
    assert_ne!(code, 0);
    assert!(err.contains("may not"), "{err}");

    // The worker joins with its worker token.
    c.start_worker_with("w1", "2", "", &["--token", &worker_token]);
    let jobs_in = |t: &str, project: &str| {
        let (t, project) = (t.to_string(), project.to_string());
        let addr = addr.clone();
        async move {
            let creds = Credentials { token: Some(t), project: Some(project), tls: None };
            aidos_api::job_service_client::JobServiceClient::new(auth::with_credentials(
                raw_channel(&addr).await.unwrap(),
                &creds,
            ))
        }
    };

    // A `process` job needs the permission: a viewer and a member without it are refused; ann may.
    let dir = c.path().to_path_buf();
    let script = format!(
        "echo \"$AIDOS_TOKEN\" > {d}/job.token; {bin} whoami > {d}/who.txt 2>&1; {bin} job list > {d}/jobs.txt 2>&1",
        d = dir.display(),
        bin = BIN
    );
    let submit = |spec: JobSpec| SubmitRequest { spec: Some(spec), ..Default::default() };
    for (who_, t) in [("a viewer", &vic), ("a member without process jobs", &noproc)] {
        let e = jobs_in(t, "a").await.submit(submit(sh_job("x", "true", 100, 0))).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who_}: {e:?}");
    }
    let (code, _, err) = {
        let spec = dir.join("p.toml");
        std::fs::write(&spec, "name = \"p\"\nkind = \"process\"\n[process]\nexecutable = \"true\"\n").unwrap();
        c.cli(&["--token", &vic, "--project", "a", "job", "submit", spec.to_str().unwrap()])
    };
    assert_ne!(code, 0);
    assert!(err.contains("viewer") && err.contains("may not"), "{err}");
    let id = jobs_in(&ann, "a").await.submit(submit(sh_job("who", &script, 100, 0))).await.unwrap().into_inner().job_id;
    // (Through project a: the harness's own waits look in the default project.)
    let deadline = Instant::now() + Duration::from_secs(60);
    let j = loop {
        let j = jobs_in(&ann, "a").await.get(GetJobRequest { job_id: id.clone() }).await.unwrap().into_inner();
        if state_of(&j).is_terminal() {
            break j;
        }
        assert!(Instant::now() < deadline, "{id} did not end within 60 s: {j:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state_of(&j), JobState::Succeeded, "{j:#?}");

    // The task acted with its job's token, which stops working when the job ends.
    let who_out = std::fs::read_to_string(dir.join("who.txt")).unwrap();
    assert!(who_out.contains(&format!("job:{id} (member of project a")), "{who_out}");
    // ... in its job's project (AIDOS_PROJECT): it sees its own job.
    let jobs_out = std::fs::read_to_string(dir.join("jobs.txt")).unwrap();
    assert!(jobs_out.contains(&id), "a task does not see its own project's jobs: {jobs_out}");
    let job_token = std::fs::read_to_string(dir.join("job.token")).unwrap().trim().to_string();
    let e = who(&addr, &job_token).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("ended"), "{}", e.message());

    // The job belongs to project a: another project does not see it, not even by id; project a does.
    let (_, bob) = create_token(&c, &["--name", "bob", "--role", "admin", "--for-project", "b"]);
    let mut jobs_b = jobs_in(&bob, "b").await;
    assert_eq!(jobs_b.get(GetJobRequest { job_id: id.clone() }).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(jobs_b.cancel(CancelJobRequest { job_id: id.clone() }).await.unwrap_err().code(), Code::NotFound);
    assert!(jobs_b.list(ListJobsRequest::default()).await.unwrap().into_inner().jobs.is_empty());
    let listed = jobs_in(&vic, "a").await.list(ListJobsRequest::default()).await.unwrap().into_inner().jobs;
    assert_eq!(listed.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), vec![id.clone()]);
    // Idempotency keys are per project: the same key in project b makes b's own job, and names nothing of a's.
    let keyed = |rid: &str| SubmitRequest { spec: Some(sh_job("k", "true", 100, 0)), request_id: rid.into() };
    let in_a = jobs_in(&ann, "a").await.submit(keyed("same-key")).await.unwrap().into_inner();
    let in_b = jobs_b.submit(keyed("same-key")).await.unwrap().into_inner();
    assert!(!in_b.duplicate && in_b.job_id != in_a.job_id, "{in_a:?} {in_b:?}");
    let again = jobs_in(&ann, "a").await.submit(keyed("same-key")).await.unwrap().into_inner();
    assert!(again.duplicate && again.job_id == in_a.job_id, "{again:?}");
    let (code, out, _) = c.cli(&["--project", "a", "job", "list"]);
    assert!(code == 0 && out.contains(&id), "{out}");
    let (code, _, err) = c.cli(&["--project", "*", "job", "list"]);
    assert!(code != 0 && err.contains("aidos-project"), "{err}");
    let (code, out, _) = c.cli(&["job", "list"]);
    assert!(code == 0 && !out.contains(&id), "the default project lists a job of project a: {out}");

    // A multi-node cluster needs one root token file, made once (`aidos token new-root`), not one per node.
    let n2 = dir.join("n2");
    let (code, _, err) = c.cli(&[
        "server",
        "--id",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--peers",
        "1=127.0.0.1:1,2=127.0.0.1:2",
        "--insecure",
        "--data-dir",
        n2.to_str().unwrap(),
        "--blob-dir-shared",
    ]);
    assert!(code != 0 && err.contains("token new-root"), "{err}");
    let root_file = dir.join("new-root.token");
    let (code, _, err) = c.cli(&["token", "new-root", "--file", root_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(auth::read_token_file(&root_file).unwrap().starts_with("aidos_root_"));
    let (code, _, err) = c.cli(&["token", "new-root", "--file", root_file.to_str().unwrap()]);
    assert!(code != 0 && err.contains("never overwritten"), "{err}");

    // Revoking the worker's token cuts it off: it can no longer heartbeat or register, and stops.
    let (code, _, err) = c.cli(&["token", "revoke", &worker_id]);
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.workers.get_mut("w1").unwrap().exit_status() == "running" {
        assert!(Instant::now() < deadline, "a worker whose token was revoked still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = c.workers["w1"].output();
    assert!(
        log.contains("revoked"),
        "the worker does not say why it stopped: {}",
        &log[log.len().saturating_sub(2000)..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_limit_is_refused_with_a_retry_hint_and_others_are_not() {
    let c = start_cluster_with(1, &["--rate-limit-per-sec", "5", "--rate-limit-burst", "10"]).await;
    let addr = c.addrs()[0].clone();
    let (_, greedy) = create_token(&c, &["--name", "greedy", "--role", "member", "--for-project", "a"]);
    let (_, calm) = create_token(&c, &["--name", "calm", "--role", "member", "--for-project", "a"]);

    // 60 calls at once from one token: its burst of 10 (and what refills meanwhile) passes, the rest is refused.
    let mut calls = Vec::new();
    for _ in 0..60 {
        let (addr, t) = (addr.clone(), greedy.clone());
        calls.push(tokio::spawn(async move { who(&addr, &t).await }));
    }
    let (mut ok, mut refused) = (0, Vec::new());
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => refused.push(s),
        }
    }
    assert!((10..=20).contains(&ok), "{ok} of 60 calls passed a burst of 10 at 5/s");
    let s = &refused[0];
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("rate limit") && s.message().contains("retry after"), "{}", s.message());
    let hint: u64 = s.metadata().get("retry-after-ms").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=1000).contains(&hint), "retry after {hint} ms");
    assert!(refused.iter().all(|s| s.code() == Code::ResourceExhausted));

    // Another token is not affected, and the root token is never limited.
    assert_eq!(who(&addr, &calm).await.unwrap().name, "calm");
    for _ in 0..30 {
        who(&addr, &TOKEN).await.unwrap();
    }
    // The CLI backs off on RESOURCE_EXHAUSTED and gets through once its token's bucket refills.
    let (code, out, err) = c.cli(&["--token", &greedy, "--project", "a", "whoami"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("greedy"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_who_did_what_from_where_and_survives_the_leader() {
    let mut c = start_cluster_with(3, &["--http", "127.0.0.1:0"]).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let follower_addr = c.nodes[&follower].0.clone();
    let (_, ann) = create_token(&c, &["--name", "ann", "--role", "member", "--for-project", "a"]);
    let (_, vic) = create_token(&c, &["--name", "vic", "--role", "viewer", "--for-project", "a"]);
    let (_, ada) = create_token(&c, &["--name", "ada", "--role", "admin", "--for-project", "a"]);
    let (_, bea) = create_token(&c, &["--name", "bea", "--role", "admin", "--for-project", "b"]);
    // The follower must know the new tokens, or it sends their calls on to the leader (503 with its address) and
    // the records below would be the leader's.
    for t in [&ann, &vic, &ada, &bea] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while who(&follower_addr, t).await.is_err() {
            assert!(Instant::now() < deadline, "the follower does not know a new token");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // ann submits through a follower (relayed to the leader, recorded there once); vic tries to cancel it through
    // the same follower (refused there); nobody's call without a token; vic again, over the follower's HTTP API.
    let spec = c.path().join("job.toml");
    std::fs::write(&spec, "name = \"audited\"\nkind = \"process\"\n[process]\nexecutable = \"true\"\n").unwrap();
    let as_ = |token: &str, args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["--scheduler", &follower_addr, "--token", token, "--project", "a"])
            .args(args)
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).to_string())
    };
    let (code, out) = as_(&ann, &["job", "submit", spec.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let job = out.trim().to_string();
    assert!(job.starts_with("job-"), "{out}");
    let (code, _) = as_(&vic, &["job", "cancel", &job]);
    assert_ne!(code, 0, "a viewer cancelled a job");
    assert_eq!(call(&follower_addr, "/aidos.v1.JobService/Submit", None, Some("a")).await, Code::Unauthenticated);
    let log = std::fs::read_to_string(&c.nodes[&follower].1.log).unwrap();
    let http: std::net::SocketAddr = log
        .lines()
        .find_map(|l| l.strip_prefix("dashboard and HTTP API on http://"))
        .and_then(|l| l.split('/').next()?.parse().ok())
        .expect("the follower's HTTP address");
    let auth = format!("Authorization: Bearer {vic}\r\naidos-project: a\r\naidos-peer: 203.0.113.9:1\r\n");
    let (status, _) = http_with(http, "POST", &format!("/v1/jobs/{job}/cancel"), &auth, "");
    assert_eq!(status, 403);

    let want = |r: &AuditRecord| r.project == "a" && r.action.starts_with("/aidos.v1.JobService/");
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let all = audit_log(&c, ListAuditRequest { project: "a".into(), ..Default::default() }).await;
        let mine: Vec<AuditRecord> = all.into_iter().filter(want).collect();
        if mine.len() >= 4 || Instant::now() > deadline {
            break mine;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(records.len(), 4, "{records:#?}");
    let submit = records.iter().find(|r| r.principal == "ann").expect("ann's submit");
    assert!(submit.allowed && submit.code == "Ok" && submit.action.ends_with("/Submit"), "{submit:?}");
    assert_eq!((submit.via.as_str(), submit.node), ("relayed", leader), "recorded once, by the leader");
    assert!(submit.peer.starts_with("127.0.0.1:"), "the client's address, as the follower saw it: {submit:?}");
    let denied: Vec<&AuditRecord> = records.iter().filter(|r| !r.allowed).collect();
    assert_eq!(denied.len(), 3, "{denied:#?}");
    assert!(denied.iter().all(|r| r.node == follower), "refused where they arrived: {denied:#?}");
    let grpc = denied.iter().find(|r| r.principal == "vic" && r.via == "grpc").expect("vic over gRPC");
    assert_eq!((grpc.code.as_str(), grpc.action.as_str()), ("PermissionDenied", "/aidos.v1.JobService/Cancel"));
    assert!(grpc.reason.contains("viewer"), "{grpc:?}");
    let over_http = denied.iter().find(|r| r.via == "http").expect("vic over HTTP");
    assert_eq!(over_http.principal, "vic");
    assert!(over_http.peer.starts_with("127.0.0.1:"), "the HTTP client's address, not what it claimed: {over_http:?}");
    assert!(denied.iter().any(|r| r.code == "Unauthenticated" && r.principal.is_empty()));
    // Token management is recorded too (root made the four tokens).
    let creates = audit_log(&c, ListAuditRequest { action: "CreateToken".into(), ..Default::default() }).await;
    assert!(creates.iter().filter(|r| r.principal == "root" && r.allowed).count() >= 4, "{creates:#?}");

    // The CLI: a project's admin reads the project's records, filtered; another project's admin sees none of them;
    // a viewer may not read the log.
    let (code, out) = as_(&ada, &["-o", "json", "audit", "--denied", "--user", "vic"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["records"].as_array().unwrap().len(), 2, "{v}");
    let (code, table) = as_(&ada, &["audit", "--action", "Submit"]);
    assert_eq!(code, 0);
    assert!(table.contains("ann") && table.contains("JobService/Submit") && table.contains("relayed"), "{table}");
    let out = std::process::Command::new(BIN)
        .args(["--scheduler", &follower_addr, "--token", &bea, "--project", "b", "-o", "json", "audit"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["records"].as_array().unwrap().iter().all(|r| r["project"] == "b"), "{v}");
    let (code, _) = as_(&vic, &["audit"]);
    assert_ne!(code, 0, "a viewer read the audit log");

    // Replicated: the leader dies, the records are still there.
    c.kill_node(leader);
    c.wait_leader(Duration::from_secs(30)).await;
    let after = audit_log(&c, ListAuditRequest { project: "a".into(), ..Default::default() }).await;
    for r in &records {
        assert!(after.iter().any(|x| x.seq == r.seq && x == r), "record {} lost with the leader", r.seq);
    }
}
