//! Issue #2, "what must show" 2: a worker SIGKILLed while running a task. The task is requeued and completes on
//! the other worker; the dead worker's late report (old fencing token) is refused, over the wire and when the
//! worker itself comes back and reconciles.

mod common;

use std::time::Duration;

use aidos_api::v1::*;
use aidos_api::worker_service_client::WorkerServiceClient;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_worker_task_is_requeued_and_its_late_report_refused() {
    let mut c = start_cluster(1).await;
    c.start_worker("w1", "4", "");
    let marks = c.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let script = format!(
        "touch {m}/started-$AIDOS_WORKER_ID-$AIDOS_ATTEMPT; sleep 4; touch {m}/done-$AIDOS_WORKER_ID-$AIDOS_ATTEMPT",
        m = marks.display()
    );
    let mut jobs = c.jobs().await;
    let id = jobs
        .submit(SubmitRequest { spec: Some(sh_job("victim", &script, 1000, 2)), request_id: String::new() })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let j = c
        .wait_job(&id, Duration::from_secs(30), |j| {
            j.tasks[0].attempts.last().is_some_and(|a| a.state == TaskState::Running as i32)
        })
        .await;
    let first = j.tasks[0].attempts[0].clone();
    assert_eq!(first.worker_id, "w1");

    c.start_worker("w2", "4", "");
    c.workers.get_mut("w1").unwrap().sigkill();

    let j = c.wait_job(&id, Duration::from_secs(60), |j| state_of(j) == JobState::Succeeded).await;
    let attempts = &j.tasks[0].attempts;
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(attempts[0].state, TaskState::Lost as i32);
    assert!(attempts[0].message.contains("w1"), "{}", attempts[0].message);
    assert_eq!(attempts[1].worker_id, "w2");
    assert_eq!(attempts[1].state, TaskState::Succeeded as i32);
    assert!(attempts[1].fencing_token > first.fencing_token);
    assert_eq!(j.attempt, 2);
    assert!(marks.join("done-w2-2").exists());

    // The dead worker's late report, sent as it would have: refused as stale.
    let mut w = WorkerServiceClient::new(c.any_channel().await);
    let late = w
        .report_status(TaskStatusReport {
            worker_id: "w1".into(),
            attempt: Some(AttemptRef { job_id: id.clone(), rank: 0, attempt: 1, fencing_token: first.fencing_token }),
            state: TaskState::Succeeded as i32,
            exit_code: 0,
            message: String::new(),
            log_blob: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition, "{late:?}");
    assert!(late.message().contains("stale"), "{}", late.message());

    // The worker comes back, reconciles (its orphaned task finished meanwhile), and its report is refused too.
    c.workers.get_mut("w1").unwrap().start();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !c.workers["w1"].output().contains("refused") {
        if std::time::Instant::now() > deadline {
            dump_logs(&c);
            panic!("restarted worker never had its stale report refused");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = c.wait_job(&id, Duration::from_secs(5), |_| true).await;
    assert_eq!(after.tasks[0].attempts, j.tasks[0].attempts, "a refused report changes nothing");
    assert_eq!(state_of(&after), JobState::Succeeded);
}
