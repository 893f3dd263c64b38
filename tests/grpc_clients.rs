//! Issue #19, gRPC for every language: tests/python/grpc_any_language.py generates Python stubs from proto/ with
//! grpcio-tools, submits a `process` job, watches it to completion and reads its logs (no Rust involved); and
//! checks that `grpc.health.v1` and server reflection answer on the scheduler and on a serving replica, with the
//! Python grpcio clients (grpcio-health-checking, grpcio-reflection); and on a gateway.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aidos_api::v1::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_drives_the_cluster_over_grpc_and_every_listener_has_health_and_reflection() {
    let mut c = start_cluster(1).await;
    c.start_worker("w1", "2", "");
    c.train_digits(1).await;
    let replica = c.deploy_one("digits:1").await.grpc;
    // The gateway in front of it: SERVING once it routes the deployment.
    let (gateway_proc, gateway_http, gateway) = c.start_gateway().await;
    wait_until("the gateway routes digits", Duration::from_secs(30), || {
        (http(gateway_http, "GET", "/v2/models/digits/ready", "").0 == 200).then_some(())
    });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python())
        .arg(root.join("tests/python/grpc_any_language.py"))
        .arg(root.join("proto"))
        .arg(c.path().join("python-stubs"))
        .arg(&c.addrs()[0])
        .arg(&replica)
        .arg(gateway.to_string())
        .env("AIDOS_TOKEN", &*TOKEN)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    if !out.status.success() {
        dump_logs(&c);
        panic!("the Python gRPC client failed:\n{text}");
    }
    assert!(text.contains("every check passed"), "{text}");
    // The job Python submitted is an ordinary job.
    let jobs = c.list_all().await;
    let j = jobs.iter().find(|j| j.spec.as_ref().is_some_and(|s| s.name == "from-python")).expect("the job");
    assert_eq!(state_of(j), JobState::Succeeded);
    drop(gateway_proc);
    kill_tasks_under(c.path());
}
