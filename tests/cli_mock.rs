//! The `aidos` client commands against an in-process mock scheduler (no Raft, no worker): output formats, exit
//! codes, error messages and failover across `--scheduler` addresses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use aidos_api::cluster_service_server::{ClusterService, ClusterServiceServer};
use aidos_api::job_service_server::{JobService, JobServiceServer};
use aidos_api::run_service_server::{RunService, RunServiceServer};
use aidos_api::*;
use futures::Stream;
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Default)]
struct State {
    jobs: HashMap<String, Job>,
    by_request: HashMap<String, String>,
    watch_calls: HashMap<String, u32>,
}

#[derive(Clone)]
struct Mock {
    /// A follower that cannot serve: every call answers UNAVAILABLE.
    down: bool,
    state: Arc<Mutex<State>>,
}

impl Mock {
    fn check(&self) -> Result<(), Status> {
        if self.down { Err(Status::unavailable("no leader")) } else { Ok(()) }
    }
    fn job(&self, id: &str) -> Result<Job, Status> {
        self.state.lock().unwrap().jobs.get(id).cloned().ok_or_else(|| Status::not_found(format!("job {id}")))
    }
    fn submit_one(&self, r: SubmitRequest) -> Result<SubmitResponse, Status> {
        let spec = r.spec.ok_or_else(|| Status::invalid_argument("spec missing"))?;
        spec::validate(&spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut st = self.state.lock().unwrap();
        if let Some(id) = st.by_request.get(&r.request_id) {
            return Ok(SubmitResponse { job_id: id.clone(), duplicate: true });
        }
        let id = format!("j-{}", st.jobs.len() + 1);
        let attempt = Attempt {
            attempt: 1,
            fencing_token: 7,
            worker_id: "w-1".into(),
            state: TaskState::Running as i32,
            ..Default::default()
        };
        let tasks = (0..spec.replicas.max(1))
            .map(|rank| Task { rank, state: TaskState::Running as i32, attempts: vec![attempt.clone()] })
            .collect();
        let job = Job {
            tasks,
            id: id.clone(),
            spec: Some(spec),
            state: JobState::Pending as i32,
            created_at_ms: now_ms(),
            request_id: r.request_id.clone(),
            ..Default::default()
        };
        st.jobs.insert(id.clone(), job);
        st.by_request.insert(r.request_id, id.clone());
        Ok(SubmitResponse { job_id: id, duplicate: false })
    }
}

fn with_state(j: &Job, s: JobState, reason: &str) -> Job {
    Job { state: s as i32, reason: reason.into(), ..j.clone() }
}

#[tonic::async_trait]
impl JobService for Mock {
    async fn submit(&self, r: Request<SubmitRequest>) -> Result<Response<SubmitResponse>, Status> {
        self.check()?;
        self.submit_one(r.into_inner()).map(Response::new)
    }
    async fn submit_batch(&self, r: Request<SubmitBatchRequest>) -> Result<Response<SubmitBatchResponse>, Status> {
        self.check()?;
        let responses = r.into_inner().requests.into_iter().map(|q| self.submit_one(q)).collect::<Result<_, _>>()?;
        Ok(Response::new(SubmitBatchResponse { responses }))
    }
    async fn get(&self, r: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        self.check()?;
        self.job(&r.into_inner().job_id).map(Response::new)
    }
    async fn join_ring(&self, _r: Request<JoinRingRequest>) -> Result<Response<JoinRingResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn list(&self, _r: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        self.check()?;
        let jobs = self.state.lock().unwrap().jobs.values().cloned().collect();
        Ok(Response::new(ListJobsResponse { jobs, ..Default::default() }))
    }
    async fn cancel(&self, r: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        self.check()?;
        let id = r.into_inner().job_id;
        let mut st = self.state.lock().unwrap();
        let j = st.jobs.get_mut(&id).ok_or_else(|| Status::not_found(id.clone()))?;
        j.state = JobState::Cancelled as i32;
        Ok(Response::new(j.clone()))
    }
    type WatchStream = BoxStream<Job>;
    async fn watch(&self, r: Request<WatchJobRequest>) -> Result<Response<Self::WatchStream>, Status> {
        self.check()?;
        let id = r.into_inner().job_id;
        let job = self.job(&id)?;
        let calls = {
            let mut st = self.state.lock().unwrap();
            let c = st.watch_calls.entry(id).or_default();
            *c += 1;
            *c
        };
        let name = job.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let pending = with_state(&job, JobState::Pending, "");
        let items: Vec<Result<Job, Status>> = match name.as_str() {
            "fail" => vec![Ok(pending), Ok(with_state(&job, JobState::Failed, "rank 0 exited with code 3"))],
            "slow" => vec![Ok(pending)],
            "flaky" if calls == 1 => vec![Ok(pending), Err(Status::unavailable("leader changed"))],
            _ => vec![
                Ok(pending),
                Ok(with_state(&job, JobState::Running, "")),
                Ok(with_state(&job, JobState::Succeeded, "")),
            ],
        };
        let s = futures::stream::iter(items);
        let s: BoxStream<Job> = if name == "slow" {
            Box::pin(futures::StreamExt::chain(s, futures::stream::pending()))
        } else {
            Box::pin(s)
        };
        Ok(Response::new(s))
    }
    type LogsStream = BoxStream<LogChunk>;
    async fn logs(&self, r: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        self.check()?;
        self.job(&r.into_inner().job_id)?;
        let chunk = |stream: LogStream, data: &str| {
            Ok(LogChunk { rank: 0, attempt: 1, stream: stream as i32, data: data.as_bytes().to_vec() })
        };
        let items = vec![chunk(LogStream::Stdout, "hello\n"), chunk(LogStream::Stderr, "oops\n")];
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }
}

#[tonic::async_trait]
impl ClusterService for Mock {
    async fn status(&self, _r: Request<ClusterStatusRequest>) -> Result<Response<ClusterStatus>, Status> {
        self.check()?;
        Ok(Response::new(ClusterStatus {
            node_id: 1,
            leader_id: 1,
            leader_addr: "127.0.0.1:7001".into(),
            term: 3,
            state: "Leader".into(),
            members: vec![aidos_api::SchedulerNode { id: 1, addr: "127.0.0.1:7001".into(), voter: true }],
            workers_ready: 2,
            ..Default::default()
        }))
    }
    async fn add_node(&self, _r: Request<AddNodeRequest>) -> Result<Response<ClusterStatus>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn remove_node(&self, _r: Request<RemoveNodeRequest>) -> Result<Response<ClusterStatus>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn revoke_worker(&self, _r: Request<RevokeWorkerRequest>) -> Result<Response<RevokeWorkerResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn list_workers(&self, _r: Request<ListWorkersRequest>) -> Result<Response<ListWorkersResponse>, Status> {
        self.check()?;
        let w = Worker {
            id: "w-1".into(),
            state: WorkerState::Ready as i32,
            capacity: Some(Resources { cpu_millis: 4000, memory_bytes: 8 << 30, gpus: 0 }),
            ..Default::default()
        };
        Ok(Response::new(ListWorkersResponse { workers: vec![w] }))
    }
}

/// One run, `job-1.1`, with two points each of `train_loss` and `val_accuracy`.
#[tonic::async_trait]
impl RunService for Mock {
    async fn report_metrics(&self, _r: Request<ReportMetricsRequest>) -> Result<Response<ReportAck>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn record_checkpoint(&self, _r: Request<RecordCheckpointRequest>) -> Result<Response<ReportAck>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn latest_checkpoint(
        &self,
        _r: Request<LatestCheckpointRequest>,
    ) -> Result<Response<LatestCheckpointResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn list(&self, _r: Request<ListRunsRequest>) -> Result<Response<ListRunsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn get(&self, r: Request<GetRunRequest>) -> Result<Response<Run>, Status> {
        self.check()?;
        let id = r.into_inner().run_id;
        if id != "job-1.1" {
            return Err(Status::not_found(format!("run {id}")));
        }
        let point = |step, name: &str, value| MetricPoint { step, epoch: 1, name: name.into(), value, time_ms: 0 };
        let metrics = vec![
            point(1, "train_loss", 2.0),
            point(1, "val_accuracy", 0.5),
            point(2, "train_loss", 1.0),
            point(2, "val_accuracy", 0.75),
        ];
        Ok(Response::new(Run { id, job_id: "job-1".into(), attempt: 1, metrics, ..Default::default() }))
    }
    async fn create_experiment(&self, _r: Request<CreateExperimentRequest>) -> Result<Response<Experiment>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn list_experiments(
        &self,
        _r: Request<ListExperimentsRequest>,
    ) -> Result<Response<ListExperimentsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn create_run(&self, _r: Request<CreateRunRequest>) -> Result<Response<Run>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn update_run(&self, _r: Request<UpdateRunRequest>) -> Result<Response<Run>, Status> {
        Err(Status::unimplemented("mock"))
    }
}

async fn serve(down: bool) -> SocketAddr {
    let mock = Mock { down, state: Default::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(JobServiceServer::new(mock.clone()))
            .add_service(ClusterServiceServer::new(mock.clone()))
            .add_service(RunServiceServer::new(mock))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn aidos(sched: &str, args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_aidos"))
        .arg("--scheduler")
        .arg(sched)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

#[tokio::test]
async fn job_commands_against_a_mock_scheduler() {
    let leader = serve(false).await;
    let follower = serve(true).await;
    // A dead address and a node without a leader come first: the client must move on to the leader.
    let s = format!("127.0.0.1:1,{follower},{leader}");

    let o = aidos(&s, &["job", "submit", "--name", "ok", "--", "echo", "hi"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let id = o.stdout.trim().to_string();
    assert_eq!(id, "j-1");

    let o = aidos(&s, &["job", "submit", "--name", "ok", "--request-id", "r1", "--", "true"]).await;
    let again = aidos(&s, &["job", "submit", "--name", "ok", "--request-id", "r1", "--", "true"]).await;
    assert_eq!(o.stdout, again.stdout);

    let o = aidos(&s, &["job", "list"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("ID"), "{}", o.stdout);
    assert!(o.stdout.contains("j-1") && o.stdout.contains("PENDING"), "{}", o.stdout);

    let o = aidos(&s, &["-o", "json", "job", "status", &id]).await;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["id"], "j-1");
    assert!(o.stdout.trim_start().starts_with("{\n  \"id\""), "fields keep their order: {}", o.stdout);
    assert_eq!(v["spec"]["payload"]["process"]["executable"], "echo");

    let o = aidos(&s, &["job", "status", &id]).await;
    assert!(o.stdout.contains("command:     echo hi"), "{}", o.stdout);
    let row = o.stdout.lines().find(|l| l.starts_with("0 ")).unwrap_or_default();
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["0", "1", "RUNNING", "w-1", "-", "7", "-"], "{}", o.stdout);

    let o = aidos(&s, &["job", "wait", &id]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);

    let o = aidos(&s, &["job", "submit", "--name", "fail", "--wait", "--", "false"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("failed: rank 0 exited with code 3"), "{}", o.stderr);

    let o = aidos(&s, &["job", "submit", "--name", "flaky", "--", "true"]).await;
    let o = aidos(&s, &["job", "wait", o.stdout.trim()]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);

    let o = aidos(&s, &["job", "submit", "--name", "slow", "--", "true"]).await;
    let o = aidos(&s, &["job", "wait", o.stdout.trim(), "--timeout-secs", "1"]).await;
    assert_eq!(o.code, 2, "{}", o.stderr);

    let o = aidos(&s, &["job", "status", "nope"]).await;
    assert_eq!(o.code, 1);
    assert_eq!(o.stderr.trim(), "error: job nope not found");

    let o = aidos(&s, &["job", "logs", &id]).await;
    assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("hello\n", "oops\n"));

    let o = aidos(&s, &["job", "cancel", &id]).await;
    assert_eq!(o.stdout.trim(), "job j-1 cancelled");

    let o = aidos(&s, &["cluster", "status"]).await;
    assert!(o.stdout.contains("leader:      1 (127.0.0.1:7001)"), "{}", o.stdout);
    let o = aidos(&s, &["-o", "json", "cluster", "workers"]).await;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["workers"][0]["capacity"]["cpu_millis"], 4000);

    let o = aidos(
        &leader.to_string(),
        &["-o", "json", "bench", "submit", "--jobs", "50", "--concurrency", "4", "--batch", "3"],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["ok"], 50);
    assert_eq!(v["rpcs"], 17);
}

#[tokio::test]
async fn invalid_specs_are_refused_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("job.toml");
    std::fs::write(&spec, "replicas = 5000\n[process]\nexecutable = \"true\"\n").unwrap();
    let o = aidos("127.0.0.1:1", &["job", "submit", spec.to_str().unwrap()]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("replicas"), "{}", o.stderr);
    let o = aidos("127.0.0.1:1", &["job", "submit", "--memory", "12Qi", "--", "true"]).await;
    assert_eq!(o.code, 2, "clap refuses bad values: {}", o.stderr);
    let o = aidos("127.0.0.1:1", &["job", "submit"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("nothing to run"), "{}", o.stderr);
}

#[tokio::test]
async fn run_metrics_json_honours_the_metric_filter() {
    let s = serve(false).await.to_string();
    let names = |o: &Out| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        v["metrics"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
    };
    let o = aidos(&s, &["-o", "json", "run", "metrics", "job-1.1", "--metric", "val_accuracy"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(names(&o), ["val_accuracy", "val_accuracy"]);
    let o = aidos(&s, &["-o", "json", "run", "metrics", "job-1.1"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(names(&o).len(), 4, "without --metric: every point");
    // The table shows the same metrics.
    let o = aidos(&s, &["run", "metrics", "job-1.1", "--metric", "val_accuracy"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("val_accuracy (job-1.1)") && !o.stdout.contains("train_loss"), "{}", o.stdout);
    // A filter that matches nothing is the same error in both formats.
    for args in [&["-o", "json"][..], &[][..]] {
        let mut a = args.to_vec();
        a.extend(["run", "metrics", "job-1.1", "--metric", "nope"]);
        let o = aidos(&s, &a).await;
        assert_eq!(o.code, 1, "{a:?}: {}", o.stdout);
        assert!(o.stderr.contains("run job-1.1 has no metric points named nope"), "{a:?}: {}", o.stderr);
    }
}
