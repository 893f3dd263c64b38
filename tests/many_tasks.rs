//! A busy worker: 300 concurrent tasks that all write output hold 300 log streams on the worker's one connection.
//! Its heartbeats and status reports must still get through (hyper's default of 200 concurrent HTTP/2 streams per
//! connection once starved them and the worker was declared lost). And a worker's task slots (`--max-tasks`): jobs
//! that claim almost no CPU still wait for a slot instead of all starting at once.

mod common;

use std::time::{Duration, Instant};

use aidos_api::v1::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_tasks_with_output_on_one_worker() {
    let mut c = start_cluster(1).await;
    // No slot limit: all 300 run at once.
    c.start_worker_with("w1", "64", "", &["--max-tasks", "0"]);
    let mut jobs = c.jobs().await;
    let reqs: Vec<SubmitRequest> = (0..300)
        .map(|i| SubmitRequest {
            spec: Some(sh_job(&format!("t{i}"), "echo start; sleep 6; echo done", 100, 0)),
            request_id: format!("t{i}"),
        })
        .collect();
    let ids: Vec<String> = jobs
        .submit_batch(SubmitBatchRequest { requests: reqs })
        .await
        .unwrap()
        .into_inner()
        .responses
        .into_iter()
        .map(|r| r.job_id)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let all = c.list_all().await;
        let failed: Vec<&Job> = all.iter().filter(|j| state_of(j) == JobState::Failed).collect();
        if !failed.is_empty() {
            dump_logs(&c);
            panic!("{} jobs failed, e.g. {}: {}", failed.len(), failed[0].id, failed[0].reason);
        }
        if all.iter().filter(|j| state_of(j) == JobState::Succeeded).count() == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "not all 300 tasks finished in time");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut cl = c.cluster_client().await;
    let w = cl.list_workers(ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert_eq!(w[0].state, WorkerState::Ready as i32, "the busy worker was declared lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_no_more_tasks_at_once_than_its_slots() {
    let mut c = start_cluster(1).await;
    c.start_worker_with("w1", "64", "", &["--max-tasks", "3"]);
    let mut jobs = c.jobs().await;
    // 1 millicore each: CPU alone would let all 12 start at once.
    let reqs: Vec<SubmitRequest> = (0..12)
        .map(|i| SubmitRequest { spec: Some(sh_job(&format!("s{i}"), "sleep 0.3", 1, 0)), request_id: format!("s{i}") })
        .collect();
    jobs.submit_batch(SubmitBatchRequest { requests: reqs }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let all = loop {
        let all = c.list_all().await;
        if let Some(f) = all.iter().find(|j| state_of(j) == JobState::Failed) {
            dump_logs(&c);
            panic!("job {} failed: {}", f.id, f.reason);
        }
        if all.len() == 12 && all.iter().all(|j| state_of(j) == JobState::Succeeded) {
            break all;
        }
        assert!(Instant::now() < deadline, "not all 12 jobs finished in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A slot is held from the assignment to the attempt's end, both stamped by the one leader's clock: the most
    // attempts whose intervals overlap is the most the worker ran at once (an end frees its slot before a start
    // at the same millisecond).
    let mut events: Vec<(i64, i32)> = all
        .iter()
        .flat_map(|j| j.tasks.iter().flat_map(|t| t.attempts.iter()))
        .flat_map(|a| [(a.assigned_at_ms, 1), (a.finished_at_ms, -1)])
        .collect();
    events.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    assert_eq!(most, 3, "the worker ran {most} tasks at once with 3 slots");
    let mut cl = c.cluster_client().await;
    let w = cl.list_workers(ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert_eq!(w[0].max_tasks, 3, "the worker's slots are in its record");
}

/// The worker runs without transparent huge pages (servers do, see `main`); the flag is inherited, so the task
/// shim must give tasks the machine's policy back.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_do_not_inherit_the_workers_huge_page_setting() {
    let mut c = start_cluster(1).await;
    c.start_worker("w1", "4", "");
    let mut jobs = c.jobs().await;
    let spec = sh_job("thp", "grep THP_enabled /proc/self/status", 100, 0);
    let id =
        jobs.submit(SubmitRequest { spec: Some(spec), request_id: "thp".into() }).await.unwrap().into_inner().job_id;
    let j = c.wait_job(&id, Duration::from_secs(60), |j| state_of(j).is_terminal()).await;
    let (_, out, err) = c.cli(&["job", "logs", &id]);
    assert_eq!(state_of(&j), JobState::Succeeded, "{out}{err}");
    assert!(out.contains("THP_enabled:\t1"), "the task inherited the worker's setting: {out}");
    // Read after the task ran, so the worker's main has long set it.
    let worker = c.workers["w1"].child.as_ref().expect("started").id();
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    assert!(status.contains("THP_enabled:\t0"), "the worker has THP on:\n{status}");
}
