//! Bad input gets a clear error that names the problem and changes nothing: through the CLI and over gRPC.

mod common;

use std::process::Command;

use aidos_api::v1::*;
use common::*;

fn aidos(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("--scheduler")
        .arg(addr)
        .args(args)
        .env(aidos_api::auth::TOKEN_ENV, &*common::TOKEN)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_specs_and_unknown_ids_are_refused_by_name() {
    let c = start_cluster(1).await;
    let addr = c.addrs()[0].clone();
    let dir = c.path().to_path_buf();
    let cases = [
        ("replicaz = 2\n[process]\nexecutable = \"true\"\n", "replicaz"),
        ("[process]\nexecutable = \"\"\n", "process.executable"),
        ("replicas = 99999\n[process]\nexecutable = \"true\"\n", "replicas"),
        ("[resources]\nmemory = \"lots\"\n[process]\nexecutable = \"true\"\n", "resources.memory"),
        ("kind = \"quantum\"\n[process]\nexecutable = \"true\"\n", "kind"),
        ("name = \"no payload\"\n", "process"),
        ("constraints = [\"zone in a,b\"]\n[process]\nexecutable = \"true\"\n", "constraints[0]"),
        ("this is not toml", "toml"),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let p = dir.join(format!("bad{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let (code, _, err) = aidos(&addr, &["job", "submit", p.to_str().unwrap()]);
        assert_ne!(code, 0, "case {i} must fail");
        assert!(err.contains(field), "case {i}: error should name `{field}`: {err}");
    }
    let (code, _, err) = aidos(&addr, &["job", "submit", dir.join("missing.toml").to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("missing.toml"), "{err}");

    // The server validates too (a client that skips validation gets the same field-naming answer).
    let mut jobs = c.jobs().await;
    let mut spec = sh_job("x", "true", 100, 0);
    spec.replicas = 5000;
    let e = jobs.submit(SubmitRequest { spec: Some(spec), request_id: String::new() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("replicas"), "{}", e.message());
    let e = jobs.submit(SubmitRequest { spec: None, request_id: String::new() }).await.unwrap_err();
    assert!(e.message().contains("spec"), "{}", e.message());
    let mut bad = sh_job("x", "true", 100, 0);
    bad.resources = Some(Resources::default());
    let e = jobs
        .submit_batch(SubmitBatchRequest {
            requests: vec![
                SubmitRequest { spec: Some(sh_job("ok", "true", 100, 0)), request_id: String::new() },
                SubmitRequest { spec: Some(bad), request_id: String::new() },
            ],
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("requests[1]") && e.message().contains("resources"), "{}", e.message());

    // Nothing was stored by any refused submission.
    assert!(c.list_all().await.is_empty());

    // Unknown ids: NotFound, named.
    let e = jobs.get(GetJobRequest { job_id: "job-42".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("job-42"));
    let e = jobs.cancel(CancelJobRequest { job_id: "job-42".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let (code, _, err) = aidos(&addr, &["job", "status", "job-42"]);
    assert_ne!(code, 0);
    assert!(err.contains("job-42") && err.contains("not found"), "{err}");

    // A good job still goes through afterwards, and `job wait` reports the outcome by exit code.
    let (code, out, err) = aidos(&addr, &["job", "submit", "--name", "fine", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code, 0, "{err}");
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("job-"))
        .unwrap_or_else(|| panic!("no id in {out:?}"))
        .to_string();
    let mut c = c;
    c.start_worker("w1", "2", "");
    let (code, _, err) = aidos(&addr, &["job", "wait", &id, "--timeout-secs", "30"]);
    assert_eq!(code, 1, "a failed job makes `job wait` exit 1: {err}");
    assert!(err.contains("exited with code 7"), "{err}");
}
