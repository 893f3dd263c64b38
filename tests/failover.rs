//! Issue #2, "what must show" 1: a 3-node scheduler cluster plus 2 workers; 500 `process` jobs submitted by
//! concurrent clients while the leader is SIGKILLed mid-way. Every acknowledged job exists exactly once and
//! runs exactly once (each job appends one line to a file named after its request id).
//!
//! Also: a job that finished before the failover still shows its full output through the new leader (which
//! never received it live: it comes from the log blob its worker wrote), and the workers clean up the working
//! directories of the attempts they ended.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aidos_api::job_service_client::JobServiceClient;
use aidos_api::v1::*;
use common::*;

const CLIENTS: usize = 5;
const PER_CLIENT: usize = 100;
/// Request id of the job whose output is read back after the failover.
const LOGS_RID: &str = "logs-before-failover";
/// What that job prints: numbered lines on stdout, one on stderr.
const LOG_LINES: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_sigkilled_mid_submission_loses_nothing_and_runs_each_job_once() {
    let mut c = start_cluster(3).await;
    c.start_worker("w1", "8", "");
    c.start_worker("w2", "8", "");
    let effects = c.path().join("effects");
    std::fs::create_dir_all(&effects).unwrap();

    // A job that prints known output and ends before the leader dies.
    let script = format!("i=1; while [ $i -le {LOG_LINES} ]; do echo out-line-$i; i=$((i+1)); done; echo err-line >&2");
    let req = SubmitRequest { spec: Some(sh_job("printer", &script, 50, 0)), request_id: LOGS_RID.into() };
    let log_job = c.jobs().await.submit(req).await.unwrap().into_inner().job_id;
    let j = c.wait_job(&log_job, Duration::from_secs(30), |j| state_of(j).is_terminal()).await;
    assert_eq!(state_of(&j), JobState::Succeeded, "{j:#?}");
    assert!(!j.tasks[0].attempts[0].log_blob.is_empty(), "the final report named no log blob: {j:#?}");
    let expected_out: String = (1..=LOG_LINES).map(|i| format!("out-line-{i}\n")).collect();
    let leader_then = c.wait_leader(Duration::from_secs(10)).await;

    let addrs = c.addrs();
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let (addrs, acked, count, effects) = (addrs.clone(), acked.clone(), count.clone(), effects.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..PER_CLIENT {
                let rid = format!("c{k}-{i}");
                let script = format!("echo $AIDOS_JOB_ID >> {}/{rid}", effects.display());
                let req = SubmitRequest { spec: Some(sh_job(&rid, &script, 50, 0)), request_id: rid.clone() };
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut attempt = k;
                loop {
                    let addr = &addrs[attempt % addrs.len()];
                    attempt += 1;
                    if let Some(ch) = channel(addr).await {
                        let mut cl = JobServiceClient::new(ch);
                        match tokio::time::timeout(Duration::from_secs(5), cl.submit(req.clone())).await {
                            Ok(Ok(r)) => {
                                acked.lock().unwrap().insert(rid.clone(), r.into_inner().job_id);
                                count.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Ok(Err(s)) => assert!(
                                matches!(
                                    s.code(),
                                    tonic::Code::Unavailable
                                        | tonic::Code::Unknown
                                        | tonic::Code::Internal
                                        | tonic::Code::Cancelled
                                ),
                                "unexpected refusal of a valid spec: {s:?}"
                            ),
                            Err(_) => {}
                        }
                    }
                    assert!(Instant::now() < deadline, "submission {rid} not acknowledged within 60s");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }

    // Kill the leader once a third of the submissions are acknowledged.
    while count.load(Ordering::SeqCst) < CLIENTS * PER_CLIENT / 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = c.wait_leader(Duration::from_secs(10)).await;
    c.kill_node(old);
    let killed_at = count.load(Ordering::SeqCst);
    for h in clients {
        h.await.unwrap();
    }
    let new = c.wait_leader(Duration::from_secs(30)).await;
    assert_ne!(old, new);
    assert!(killed_at < CLIENTS * PER_CLIENT, "the leader must die mid-way");

    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), CLIENTS * PER_CLIENT);

    // The job that ended before the failover shows its full output through the new leader, exactly once. The
    // new leader never received it live (its task-log file for the job does not even exist): it comes from the blob.
    if leader_then == old {
        assert!(!c.path().join(format!("node{new}/task-logs/{log_job}.log")).exists());
    }
    let (code, out, err) = c.cli(&["job", "logs", &log_job]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, expected_out, "stdout of {log_job} after the failover");
    assert!(err.contains("err-line"), "stderr of {log_job} after the failover: {err:?}");

    // Every acknowledged job completes.
    let deadline = Instant::now() + Duration::from_secs(180);
    let jobs = loop {
        let jobs: Vec<Job> = c.list_all().await.into_iter().filter(|j| j.request_id != LOGS_RID).collect();
        let done = jobs.iter().filter(|j| state_of(j) == JobState::Succeeded).count();
        if done == jobs.len() && jobs.len() >= acked.len() {
            break jobs;
        }
        let failed: Vec<_> =
            jobs.iter().filter(|j| matches!(state_of(j), JobState::Failed | JobState::Cancelled)).collect();
        if !failed.is_empty() {
            dump_logs(&c);
            panic!("jobs failed: {:#?}", &failed[..failed.len().min(3)]);
        }
        if Instant::now() > deadline {
            dump_logs(&c);
            let stuck: Vec<_> = jobs.iter().filter(|j| state_of(j) != JobState::Succeeded).take(5).collect();
            panic!("only {done} of {} jobs succeeded; some that did not: {stuck:#?}", jobs.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Exactly once: one job per request id, the id the client was given, and one side effect each.
    assert_eq!(jobs.len(), acked.len(), "no job beyond the acknowledged ones");
    let mut by_rid: HashMap<&str, Vec<&Job>> = HashMap::new();
    for j in &jobs {
        by_rid.entry(j.request_id.as_str()).or_default().push(j);
    }
    for (rid, id) in &acked {
        let js = by_rid.get(rid.as_str()).unwrap_or_else(|| panic!("acknowledged {rid} ({id}) is missing"));
        assert_eq!(js.len(), 1, "{rid} exists {} times", js.len());
        assert_eq!(&js[0].id, id, "{rid}: the client was told another id");
        let lines = std::fs::read_to_string(effects.join(rid)).unwrap_or_default();
        assert_eq!(lines.lines().collect::<Vec<_>>(), vec![id.as_str()], "{rid} ran {} times", lines.lines().count());
        assert_eq!(js[0].tasks[0].attempts.len(), 1, "{rid} was placed more than once");
    }

    // The killed node comes back and catches up from the log or a snapshot.
    c.restart_node(old);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let addr = c.nodes[&old].0.clone();
        if let Some(s) = c.status(&addr).await
            && s.jobs_total == acked.len() as u64 + 1
            && s.leader_id == new
        {
            break;
        }
        assert!(Instant::now() < deadline, "restarted node did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every attempt ended: the workers removed the working directories (tombstones stay).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = ["w1", "w2"]
            .iter()
            .flat_map(|w| std::fs::read_dir(c.path().join(format!("worker-{w}/tasks"))).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "task directories left after all jobs ended: {:?}",
            &left[..left.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
