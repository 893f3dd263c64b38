//! Issue #19, the dashboard in a real browser: a cluster trains a model and serves it, and a long job runs; then
//! headless Chromium (Debian's `chromium`, driven by playwright-core from npm: tests/browser/dashboard.mjs) opens
//! the dashboard the scheduler serves and checks the cluster, jobs (filtered on the server), a job's attempts and
//! live logs, a run's charts, the registry (lineage, evaluation, the dataset's histogram) and the deployment
//! (replicas and live traffic from their metrics), keeping a screenshot of each page in
//! target/test-artifacts/dashboard; it cancels the long job from its page, and this test checks through the gRPC
//! API that the job was cancelled.
//!
//! Needs node, the npm packages of tests/browser (`npm ci`) and chromium: scripts/test.sh installs them.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aidos_api::v1::*;
use common::*;

fn need(what: &str, ok: bool, how: &str) {
    assert!(ok, "{what} is missing: {how} (scripts/test.sh installs it)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_trained_and_served_model_and_cancels_a_job() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("AIDOS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    need("chromium", Path::new(&chromium).exists(), "apt-get install chromium, or set AIDOS_CHROMIUM");
    need("node", Command::new("node").arg("--version").output().is_ok(), "install Node.js");
    need(
        "playwright-core",
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "npm ci --prefix tests/browser",
    );

    let api = format!("127.0.0.1:{}", free_port());
    let mut c = start_cluster_with(1, &["--http", &api]).await;
    c.start_worker("w1", "2", "");
    c.train_digits(1).await;
    let train =
        c.list_all().await.into_iter().find(|j| j.spec.as_ref().is_some_and(|s| s.name == "digits")).unwrap().id;

    // Traffic for the deployment page's live rate: a bounded load through a replica (no gateway needed).
    let replica: std::net::SocketAddr = c.deploy_one("digits:1").await.http.parse().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let load = std::thread::spawn(move || {
        let body = format!(
            r#"{{"inputs":[{{"name":"input","shape":[1,784],"datatype":"FP32","data":[{}]}}]}}"#,
            vec!["0.5"; 784].join(",")
        );
        // Bounded: stops when the checks are done, or after 5 minutes whatever happens.
        let end = std::time::Instant::now() + Duration::from_secs(300);
        while std::time::Instant::now() < end && !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let (status, resp) = http(replica, "POST", "/v2/models/digits/infer", &body);
            assert_eq!(status, 200, "{resp}");
            std::thread::sleep(Duration::from_millis(20));
        }
    });

    let script = "i=0; while [ $i -lt 900 ]; do echo tick $i; i=$((i+1)); sleep 1; done";
    let (code, out, err) =
        c.cli(&["job", "submit", "--name", "long-sleeper", "--cpu", "100m", "--", "sh", "-c", script]);
    assert_eq!(code, 0, "{err}");
    let long = out.trim().to_string();
    c.wait_job(&long, Duration::from_secs(60), |j| state_of(j) == JobState::Running).await;

    let shots = root.join("target/test-artifacts/dashboard");
    let _ = std::fs::remove_dir_all(&shots);
    let run = Command::new("node")
        .arg(root.join("tests/browser/dashboard.mjs"))
        .env("AIDOS_URL", format!("http://{api}"))
        .env("AIDOS_TOKEN", &*TOKEN)
        .env("AIDOS_TRAIN_JOB", &train)
        .env("AIDOS_LONG_JOB", &long)
        .env("AIDOS_SHOTS", &shots)
        .env("AIDOS_CHROMIUM", &chromium)
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let output = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    println!("{output}");
    if !run.status.success() {
        dump_logs(&c);
        panic!("the browser checks failed (screenshots in {}):\n{output}", shots.display());
    }
    // The cancel the page sent reached the scheduler.
    c.wait_job(&long, Duration::from_secs(30), |j| state_of(j) == JobState::Cancelled).await;
    for page in ["cluster", "jobs", "job-train", "run", "runs", "registry", "model", "dataset", "deployments"] {
        assert!(shots.join(format!("{page}.png")).exists(), "no screenshot of {page}");
    }
    load.join().unwrap();
    kill_tasks_under(c.path());
}
