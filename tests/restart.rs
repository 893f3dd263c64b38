//! Issue #2, "what must show" 3: a whole cluster stopped and restarted from its data directories keeps jobs,
//! workers and history; new ids continue after the old ones.

mod common;

use std::time::Duration;

use aidos_api::v1::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_restart_keeps_state() {
    let mut c = start_cluster(3).await;
    c.start_worker("w1", "4", "zone=eu");
    let mut jobs = c.jobs().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let script = if i == 4 { "exit 3" } else { "echo ok" };
        let r = jobs
            .submit(SubmitRequest { spec: Some(sh_job(&format!("j{i}"), script, 100, 0)), request_id: format!("r{i}") })
            .await
            .unwrap();
        ids.push(r.into_inner().job_id);
    }
    for id in &ids {
        c.wait_job(id, Duration::from_secs(30), |j| JobState::try_from(j.state).unwrap().is_terminal()).await;
    }
    // A job that cannot run anywhere stays pending with its reason.
    let mut big = sh_job("too-big", "true", 1000, 0);
    big.resources.as_mut().unwrap().gpus = 8;
    let big_id =
        jobs.submit(SubmitRequest { spec: Some(big), request_id: String::new() }).await.unwrap().into_inner().job_id;
    let big_job = c.wait_job(&big_id, Duration::from_secs(10), |j| j.reason.starts_with("unschedulable")).await;
    assert_eq!(big_job.reason, "unschedulable: needs 8 GPU(s) per replica, the largest worker has 0");

    let before = c.list_all().await;
    c.workers.get_mut("w1").unwrap().sigterm();
    for id in [1, 2, 3] {
        c.kill_node(id);
    }
    for id in [1, 2, 3] {
        c.restart_node(id);
    }
    c.wait_leader(Duration::from_secs(30)).await;

    let after = c.list_all().await;
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.state, b.state);
        assert_eq!(a.tasks, b.tasks, "attempt history of {}", a.id);
        assert_eq!(a.request_id, b.request_id);
    }
    let failed = after.iter().find(|j| j.spec.as_ref().unwrap().name == "j4").unwrap();
    assert_eq!(state_of(failed), JobState::Failed);
    assert_eq!(failed.tasks[0].attempts[0].exit_code, 3);

    let mut cl = c.cluster_client().await;
    let workers = cl.list_workers(ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].id, "w1");
    assert_eq!(workers[0].labels.get("zone").map(String::as_str), Some("eu"));

    // Idempotency survives the restart; new ids continue after the old ones.
    let mut jobs = c.jobs().await;
    let again = jobs
        .submit(SubmitRequest { spec: Some(sh_job("j0", "echo ok", 100, 0)), request_id: "r0".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.job_id, ids[0]);
    let fresh = jobs
        .submit(SubmitRequest { spec: Some(sh_job("new", "echo ok", 100, 0)), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fresh.job_id, format!("job-{}", before.len() + 1));
    c.workers.get_mut("w1").unwrap().start();
    c.wait_job(&fresh.job_id, Duration::from_secs(30), |j| state_of(j) == JobState::Succeeded).await;
}
