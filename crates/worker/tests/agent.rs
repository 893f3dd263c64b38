//! End-to-end tests of the worker agent against an in-process mock scheduler (leader + a follower that
//! redirects to it). This binary is also the task shim: invoked as `<self> task-shim ...` it runs
//! `aidos_worker::shim_main`, like the real `aidos` binary does.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aidos_api::worker_service_server::{WorkerService, WorkerServiceServer};
use aidos_api::*;
use tokio::sync::{broadcast, oneshot};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "task-shim") {
        std::process::exit(aidos_worker::shim_main(args[2..].to_vec()));
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        runs_reports_and_follows_leader().await;
        println!("test runs_reports_and_follows_leader ... ok");
        adopts_after_restart().await;
        println!("test adopts_after_restart ... ok");
    });
}

#[derive(Default)]
struct State {
    assignments: Vec<TaskAssignment>,
    reports: Vec<TaskStatusReport>,
    logs: HashMap<(String, i32), Vec<u8>>,
    registers: Vec<RegisterWorkerRequest>,
    heartbeats: usize,
    refuse_jobs: HashSet<String>,
}

#[derive(Clone)]
struct Mock {
    state: Arc<Mutex<State>>,
    cmds: broadcast::Sender<WorkerCommand>,
    /// Some: behave as a follower pointing at this leader address.
    follower_of: Option<String>,
}

impl Mock {
    fn redirect(&self) -> Result<(), Status> {
        match &self.follower_of {
            None => Ok(()),
            Some(leader) => {
                let mut st = Status::unavailable("not the leader");
                st.metadata_mut().insert(LEADER_METADATA_KEY, leader.parse().unwrap());
                Err(st)
            }
        }
    }
}

type CmdStream = Pin<Box<dyn Stream<Item = Result<WorkerCommand, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for Mock {
    async fn register(&self, req: Request<RegisterWorkerRequest>) -> Result<Response<RegisterWorkerResponse>, Status> {
        self.redirect()?;
        self.state.lock().unwrap().registers.push(req.into_inner());
        Ok(Response::new(RegisterWorkerResponse {
            heartbeat_interval_ms: 200,
            heartbeat_timeout_ms: 1000,
            kill: vec![],
        }))
    }
    async fn heartbeat(&self, _req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        self.redirect()?;
        self.state.lock().unwrap().heartbeats += 1;
        Ok(Response::new(HeartbeatResponse { kill: vec![], reregister: false }))
    }
    type AssignmentsStream = CmdStream;
    async fn assignments(&self, _req: Request<AssignmentsRequest>) -> Result<Response<CmdStream>, Status> {
        self.redirect()?;
        let initial: Vec<_> = self
            .state
            .lock()
            .unwrap()
            .assignments
            .iter()
            .map(|a| Ok(WorkerCommand { command: Some(worker_command::Command::Start(a.clone())) }))
            .collect();
        let live = tokio_stream::wrappers::BroadcastStream::new(self.cmds.subscribe()).filter_map(|r| r.ok().map(Ok));
        Ok(Response::new(Box::pin(tokio_stream::iter(initial).chain(live))))
    }
    async fn report_status(&self, req: Request<TaskStatusReport>) -> Result<Response<ReportAck>, Status> {
        self.redirect()?;
        let r = req.into_inner();
        let mut s = self.state.lock().unwrap();
        let job = r.attempt.as_ref().unwrap().job_id.clone();
        if s.refuse_jobs.contains(&job) {
            return Err(Status::failed_precondition("stale fencing token"));
        }
        s.reports.push(r);
        Ok(Response::new(ReportAck {}))
    }
    async fn join(&self, _req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn renew_cert(&self, _req: Request<RenewCertRequest>) -> Result<Response<JoinResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn report_logs(&self, req: Request<tonic::Streaming<LogReport>>) -> Result<Response<ReportAck>, Status> {
        self.redirect()?;
        let mut stream = req.into_inner();
        while let Some(m) = stream.message().await? {
            let job = m.attempt.as_ref().unwrap().job_id.clone();
            self.state.lock().unwrap().logs.entry((job, m.stream)).or_default().extend_from_slice(&m.data);
        }
        Ok(Response::new(ReportAck {}))
    }
}

async fn serve(mock: Mock) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(mock))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// A leader and a follower redirecting to it; returns (state, commands, follower address).
async fn cluster() -> (Arc<Mutex<State>>, broadcast::Sender<WorkerCommand>, String) {
    let state = Arc::new(Mutex::new(State::default()));
    let (cmds, _) = broadcast::channel(64);
    let leader = serve(Mock { state: state.clone(), cmds: cmds.clone(), follower_of: None }).await;
    let follower = serve(Mock { state: state.clone(), cmds: cmds.clone(), follower_of: Some(leader) }).await;
    (state, cmds, follower)
}

fn assignment(job: &str, script: &str, timeout_secs: u64) -> TaskAssignment {
    TaskAssignment {
        attempt: Some(AttemptRef { job_id: job.into(), rank: 0, attempt: 1, fencing_token: 7 }),
        spec: Some(JobSpec {
            name: job.into(),
            timeout_secs,
            payload: Some(job_spec::Payload::Process(ProcessSpec {
                executable: if script.starts_with('/') { script.into() } else { "sh".into() },
                args: if script.starts_with('/') { vec![] } else { vec!["-c".into(), script.into()] },
                env: [("FROM_SPEC".to_string(), "yes".to_string())].into_iter().collect(),
            })),
            ..Default::default()
        }),
        world_size: 1,
        env: Default::default(),
    }
}

fn config(data_dir: &Path, scheduler: &str) -> aidos_worker::WorkerConfig {
    aidos_worker::WorkerConfig {
        schedulers: vec![scheduler.to_string()],
        data_dir: data_dir.to_path_buf(),
        worker_id: Some("w-test".into()),
        cpu_millis: Some(4000),
        memory_bytes: Some(1 << 30),
        gpus: Some(0),
        shim_exe: std::env::current_exe().unwrap(),
        // A shared blob directory (the mock has no blob service): log blobs land here.
        blob_dir: data_dir.join("blobs"),
        ..Default::default()
    }
}

/// The output a final report's log blob holds, per stream: (stdout, stderr).
fn blob_output(data_dir: &Path, report: &TaskStatusReport) -> (Vec<u8>, Vec<u8>) {
    use aidos_blob::BlobStore;
    assert!(!report.log_blob.is_empty(), "no log blob in {report:?}");
    let store = aidos_blob::LocalDirStore::open(data_dir.join("blobs")).unwrap();
    let bytes = store.get(&aidos_blob::BlobId::parse(&report.log_blob).unwrap()).unwrap();
    let (chunks, used) = aidos_api::logframe::decode_chunks(&bytes);
    assert_eq!(used, bytes.len());
    let a = report.attempt.as_ref().unwrap();
    let mut out = (Vec::new(), Vec::new());
    for c in chunks {
        assert_eq!((c.rank, c.attempt), (a.rank, a.attempt));
        if c.stream == LogStream::Stderr as i32 { &mut out.1 } else { &mut out.0 }.extend_from_slice(&c.data);
    }
    out
}

fn final_report(state: &Mutex<State>, job: &str) -> Option<TaskStatusReport> {
    state
        .lock()
        .unwrap()
        .reports
        .iter()
        .find(|r| r.attempt.as_ref().unwrap().job_id == job && r.state != TaskState::Running as i32)
        .cloned()
}

fn reports_of(state: &Mutex<State>, job: &str) -> Vec<(TaskState, String)> {
    state
        .lock()
        .unwrap()
        .reports
        .iter()
        .filter(|r| r.attempt.as_ref().unwrap().job_id == job)
        .map(|r| (r.state(), r.message.clone()))
        .collect()
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start_worker(cfg: aidos_worker::WorkerConfig) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let h = tokio::spawn(async move {
        aidos_worker::run(cfg, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (tx, h)
}

fn workdir(data: &Path, job: &str) -> PathBuf {
    data.join("tasks").join(format!("{job}-r0-a1"))
}

async fn runs_reports_and_follows_leader() {
    let (state, cmds, follower) = cluster().await;
    {
        let mut s = state.lock().unwrap();
        s.assignments.push(assignment("ok", "echo hello $FROM_SPEC $AIDOS_RANK; echo oops >&2", 0));
        s.assignments.push(assignment("fail", "exit 3", 0));
        s.assignments.push(assignment("missing", "/nonexistent/aidos-no-such-binary", 0));
        s.assignments.push(assignment("slow", "sleep 30", 1));
        s.assignments.push(assignment("cancel", "sleep 30", 0));
        s.assignments.push(assignment("stale", "sleep 30", 0));
        // The shim leads its own process group (field 5 of /proc/PID/stat is the group); the task leads another.
        s.assignments.push(assignment(
            "groups",
            "awk '{print ($5 == $1) ? \"own\" : \"shared\"}' /proc/$PPID/stat /proc/$$/stat",
            0,
        ));
        s.refuse_jobs.insert("stale".into());
    }
    let dir = tempfile::tempdir().unwrap();
    let (stop, handle) = start_worker(config(dir.path(), &follower));

    wait_for("registration via the follower's hint", 10, || !state.lock().unwrap().registers.is_empty()).await;
    wait_for("ok to finish", 10, || final_report(&state, "ok").is_some()).await;
    let ok = final_report(&state, "ok").unwrap();
    assert_eq!(ok.state(), TaskState::Succeeded, "{ok:?}");
    assert_eq!(reports_of(&state, "ok")[0].0, TaskState::Running);
    // The final report names the complete output; then the working directory goes, a tombstone stays.
    assert_eq!(blob_output(dir.path(), &ok), (b"hello yes 0\n".to_vec(), b"oops\n".to_vec()));
    wait_for("ok's working directory to be removed", 5, || !workdir(dir.path(), "ok").exists()).await;
    assert!(dir.path().join("tasks/ok-r0-a1.done").exists());
    wait_for("ok's logs", 5, || {
        let s = state.lock().unwrap();
        s.logs.get(&("ok".into(), LogStream::Stdout as i32)).is_some_and(|d| d == b"hello yes 0\n")
            && s.logs.get(&("ok".into(), LogStream::Stderr as i32)).is_some_and(|d| d == b"oops\n")
    })
    .await;

    // The shim and the task each lead a process group (signals reach the task, and only it, through its group).
    wait_for("groups", 10, || final_report(&state, "groups").is_some()).await;
    let groups = final_report(&state, "groups").unwrap();
    assert_eq!(blob_output(dir.path(), &groups).0, b"own\nown\n".to_vec(), "{groups:?}");

    wait_for("fail", 10, || final_report(&state, "fail").is_some()).await;
    let fail = final_report(&state, "fail").unwrap();
    assert_eq!((fail.state(), fail.exit_code, fail.message.as_str()), (TaskState::Failed, 3, "exited with code 3"));

    wait_for("missing", 10, || final_report(&state, "missing").is_some()).await;
    let missing = final_report(&state, "missing").unwrap();
    assert_eq!((missing.state(), missing.exit_code), (TaskState::Failed, 127), "{missing:?}");
    assert!(missing.message.contains("cannot run"), "{missing:?}");

    wait_for("slow to time out", 10, || final_report(&state, "slow").is_some()).await;
    let slow = final_report(&state, "slow").unwrap();
    assert_eq!((slow.state(), slow.message.as_str()), (TaskState::Failed, "timed out after 1s"), "{slow:?}");

    // Cancel through the assignments stream.
    wait_for("cancel to run", 10, || !reports_of(&state, "cancel").is_empty()).await;
    let cancel_ref = assignment("cancel", "", 0).attempt.unwrap();
    cmds.send(WorkerCommand { command: Some(worker_command::Command::Cancel(cancel_ref)) }).unwrap();
    wait_for("cancel to stop", 10, || final_report(&state, "cancel").is_some()).await;
    let c = final_report(&state, "cancel").unwrap();
    assert_eq!(c.state(), TaskState::Failed);
    assert!(c.message.contains("stopped on scheduler request"), "{c:?}");

    // Refused RUNNING: the task is killed and its record dropped, nothing reported. Its directory goes only once
    // the task ended (the supervisor waits for its exit status), leaving the tombstone.
    wait_for("stale to be killed and dropped", 10, || {
        dir.path().join("tasks/stale-r0-a1.done").exists()
            && !workdir(dir.path(), "stale").exists()
            && !dir.path().join("attempts/stale-r0-a1.json").exists()
    })
    .await;
    assert!(reports_of(&state, "stale").is_empty());

    // Re-sent assignments are not started again, although their working directory is gone (the tombstone).
    let again = state.lock().unwrap().assignments[0].clone();
    cmds.send(WorkerCommand { command: Some(worker_command::Command::Start(again)) }).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!workdir(dir.path(), "ok").exists());
    assert_eq!(reports_of(&state, "ok").len(), 2);

    // All acknowledged attempts are forgotten, and their working directories cleaned up.
    wait_for("records to be deleted", 5, || std::fs::read_dir(dir.path().join("attempts")).unwrap().next().is_none())
        .await;
    wait_for("working directories to be removed", 5, || {
        std::fs::read_dir(dir.path().join("tasks"))
            .unwrap()
            .all(|e| e.unwrap().path().extension().is_some_and(|x| x == "done"))
    })
    .await;
    for job in ["fail", "missing", "slow", "cancel", "groups"] {
        let r = final_report(&state, job).unwrap();
        assert!(dir.path().join(format!("tasks/{job}-r0-a1.done")).exists(), "{job}");
        if job == "missing" {
            // The shim's explanation is the output.
            assert!(String::from_utf8_lossy(&blob_output(dir.path(), &r).1).contains("cannot run"), "{r:?}");
        }
    }
    assert!(state.lock().unwrap().heartbeats > 0);
    stop.send(()).unwrap();
    handle.await.unwrap();
}

async fn adopts_after_restart() {
    let (state, _cmds, follower) = cluster().await;
    state.lock().unwrap().assignments.push(assignment("long", "echo start; sleep 2; echo done", 0));
    let dir = tempfile::tempdir().unwrap();
    // Working directories are kept here (`--keep-task-dirs`).
    let cfg = aidos_worker::WorkerConfig { keep_task_dirs: true, ..config(dir.path(), &follower) };
    let (stop, handle) = start_worker(cfg.clone());
    wait_for("long to run", 10, || !reports_of(&state, "long").is_empty()).await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert!(dir.path().join("attempts/long-r0-a1.json").exists(), "record kept across shutdown");

    // A record whose process is gone (pid 1 is never a shim).
    let ghost = aidos_worker::records::AttemptRecord {
        job_id: "ghost".into(),
        rank: 0,
        attempt: 1,
        fencing_token: 7,
        world_size: 1,
        shim_pid: Some(1),
        workdir: workdir(dir.path(), "ghost"),
        started_at_ms: 0,
        timeout_secs: 0,
        running_acked: true,
        stop: None,
        start_error: None,
        serve_replica: false,
    };
    std::fs::create_dir_all(&ghost.workdir).unwrap();
    aidos_worker::records::write_record(dir.path(), &ghost).unwrap();

    let (stop, handle) = start_worker(cfg);
    wait_for("re-registration listing the adopted attempt", 10, || {
        state.lock().unwrap().registers.last().is_some_and(|r| r.running.iter().any(|a| a.job_id == "long"))
    })
    .await;
    wait_for("long to finish", 10, || final_report(&state, "long").is_some()).await;
    assert_eq!(final_report(&state, "long").unwrap().state(), TaskState::Succeeded);
    // The blob holds the whole output, also what was written before the restart.
    let long = final_report(&state, "long").unwrap();
    assert_eq!(blob_output(dir.path(), &long), (b"start\ndone\n".to_vec(), vec![]));
    wait_for("long's record to be deleted", 5, || !dir.path().join("attempts/long-r0-a1.json").exists()).await;
    assert_eq!(std::fs::read_to_string(workdir(dir.path(), "long").join("stdout.log")).unwrap(), "start\ndone\n");
    assert!(!dir.path().join("tasks/long-r0-a1.done").exists());
    wait_for("ghost to be reported", 10, || final_report(&state, "ghost").is_some()).await;
    let g = final_report(&state, "ghost").unwrap();
    assert_eq!((g.state(), g.message.as_str()), (TaskState::Failed, "worker restarted and the task process is gone"));
    wait_for("long's logs", 5, || {
        state
            .lock()
            .unwrap()
            .logs
            .get(&("long".into(), LogStream::Stdout as i32))
            .is_some_and(|d| d.ends_with(b"done\n"))
    })
    .await;
    stop.send(()).unwrap();
    handle.await.unwrap();
}
