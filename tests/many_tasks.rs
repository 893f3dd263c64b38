//! A busy worker: 300 concurrent tasks that all write output hold 300 log streams on the worker's one connection.
//! Its heartbeats and status reports must still get through (hyper's default of 200 concurrent HTTP/2 streams per
//! connection once starved them and the worker was declared lost).

mod common;

use std::time::{Duration, Instant};

use aidos_api::v1::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_tasks_with_output_on_one_worker() {
    let mut c = start_cluster(1).await;
    c.start_worker("w1", "64", "");
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
