//! One multi-process test harness: real `aidos` processes on OS-assigned loopback ports, each with its own
//! temp data dir; waits poll cluster state (leader elected, job states) instead of sleeping fixed times.
//! Every child is SIGKILLed when the harness drops, so a failing test leaves nothing running.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aidos_api::cluster_service_client::ClusterServiceClient;
use aidos_api::job_service_client::JobServiceClient;
use aidos_api::v1::*;

/// What the harness's clients hold: a channel presenting the harness's root token.
pub type Channel = aidos_api::auth::AuthChannel;

pub const BIN: &str = env!("CARGO_BIN_EXE_aidos");

/// The root token of every cluster this test binary starts: written to `<dir>/admin.token` for the nodes
/// (`--admin-token-file`) and given to every process the harness spawns (`AIDOS_TOKEN`) and to its channels.
pub static TOKEN: std::sync::LazyLock<String> = std::sync::LazyLock::new(aidos_api::auth::new_root_token);

/// Polls `f` (every 100 ms, blocking the thread) until it answers something; panics after `within`.
pub fn wait_until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "not {what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The Python of the test environment (tritonclient, onnx, prometheus-client): `$AIDOS_PYTHON`, else the `.venv`
/// that scripts/test.sh creates.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("AIDOS_PYTHON") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(p.exists(), "no Python test environment: run scripts/test.sh (it creates .venv) or set AIDOS_PYTHON");
    p
}

/// `ch` presenting the harness's root token.
pub fn authed(ch: tonic::transport::Channel) -> Channel {
    aidos_api::auth::with_credentials(ch, &aidos_api::auth::Credentials::token(TOKEN.clone()))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Proc {
    pub name: String,
    pub args: Vec<String>,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// Environment set on top of the harness's (`AIDOS_TOKEN` = the root token, `RUST_LOG`), at every start.
    pub env: Vec<(String, String)>,
    /// The working directory (None: the test's).
    pub cwd: Option<PathBuf>,
}

impl Proc {
    fn spawn(name: &str, args: Vec<String>, log: PathBuf) -> Proc {
        let mut p = Proc { name: name.into(), args, log, child: None, env: Vec::new(), cwd: None };
        p.start();
        p
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = Command::new(BIN);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let child = cmd
            .args(&self.args)
            .env("RUST_LOG", "info")
            .env(aidos_api::auth::TOKEN_ENV, &*TOKEN)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.name));
        self.child = Some(child);
    }

    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn sigterm(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is still running, or how it ended.
    pub fn exit_status(&mut self) -> String {
        match self.child.as_mut().map(|c| c.try_wait()) {
            None => "not started".into(),
            Some(Ok(None)) => "running".into(),
            Some(Ok(Some(st))) => format!("exited: {st}"),
            Some(Err(e)) => format!("unknown: {e}"),
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, (String, Proc)>,
    pub workers: BTreeMap<String, Proc>,
    /// True (the default): the CLI and workers are given the nodes' blob directory (one machine, one shared
    /// directory). False: they get none, as on other machines, and reach blobs through the blob service.
    pub shared_blob_dir: bool,
    /// The cluster CA's certificate when the nodes serve TLS ([`start_cluster_tls`]): every client of the harness
    /// then trusts it (`--ca-cert`).
    pub ca: Option<PathBuf>,
}

/// SIGKILLs every task process (and task shim) the cluster's workers started: tasks run in their own sessions so
/// that they survive their worker, so killing the workers does not stop them. They are found by their environment
/// (`AIDOS_WORK_DIR` inside the cluster's temp dir) or, for shims, their command line. Only positive pids.
pub fn kill_tasks_under(dir: &Path) {
    let dir = dir.display().to_string();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&std::fs::read(entry.path().join("cmdline")).unwrap_or_default()).to_string();
        let work_dir = format!("AIDOS_WORK_DIR={dir}");
        let is_task = env.split(|b| *b == 0).any(|v| v.starts_with(work_dir.as_bytes()));
        let is_shim = cmd.contains("task-shim") && cmd.contains(&dir);
        if is_task || is_shim {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.workers.values_mut() {
            p.sigkill();
        }
        kill_tasks_under(self.dir.path());
    }
}

pub fn dump_logs(c: &Cluster) {
    for (id, (_, p)) in &c.nodes {
        eprintln!("===== node {id} =====\n{}", tail(&p.output(), 60));
    }
    for (id, p) in &c.workers {
        eprintln!("===== worker {id} =====\n{}", tail(&p.output(), 400));
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts `n` scheduler nodes that form one cluster and waits until they agree on a leader.
pub async fn start_cluster(n: u64) -> Cluster {
    start_cluster_with(n, &[]).await
}

/// [`start_cluster`] with more `aidos server` flags for every node (kept across restarts).
pub async fn start_cluster_with(n: u64, extra: &[&str]) -> Cluster {
    // Loopback only (tests/tls.rs runs clusters with TLS).
    start_nodes(n, extra, tempfile::tempdir().unwrap(), None).await
}

/// [`start_cluster_with`] serving TLS: a CA made with `aidos cert init` in `<dir>/ca`, given to every node
/// (`--tls-dir`) and trusted by every client of the harness.
pub async fn start_cluster_tls(n: u64, extra: &[&str]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let out = Command::new(BIN).args(["cert", "init", "--dir", ca_dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "cert init: {}", String::from_utf8_lossy(&out.stderr));
    start_nodes(n, extra, dir, Some(ca_dir)).await
}

async fn start_nodes(n: u64, extra: &[&str], dir: tempfile::TempDir, ca_dir: Option<PathBuf>) -> Cluster {
    let addrs: BTreeMap<u64, String> = (1..=n).map(|i| (i, format!("127.0.0.1:{}", free_port()))).collect();
    let peers = addrs.iter().map(|(i, a)| format!("{i}={a}")).collect::<Vec<_>>().join(",");
    let token_file = dir.path().join("admin.token");
    aidos_api::auth::write_token_file(&token_file, &TOKEN).unwrap();
    let mut nodes = BTreeMap::new();
    for (id, addr) in &addrs {
        let data = dir.path().join(format!("node{id}"));
        let args = vec![
            "server".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            addr.clone(),
            "--peers".into(),
            peers.clone(),
            "--data-dir".into(),
            data.display().to_string(),
            "--worker-timeout-ms".into(),
            "5000".into(),
            "--heartbeat-interval-ms".into(),
            "250".into(),
            "--blob-dir".into(),
            dir.path().join("blobs").display().to_string(),
            // Every node runs on this machine and uses the one directory: it is shared, as the flag declares.
            "--blob-dir-shared".into(),
            "--admin-token-file".into(),
            token_file.display().to_string(),
        ];
        let security = match &ca_dir {
            Some(d) => vec!["--tls-dir".to_string(), d.display().to_string()],
            None => vec!["--insecure".to_string()],
        };
        let args: Vec<String> = args.into_iter().chain(security).chain(extra.iter().map(|s| s.to_string())).collect();
        let log = dir.path().join(format!("node{id}.log"));
        nodes.insert(*id, (addr.clone(), Proc::spawn(&format!("node{id}"), args, log)));
    }
    let ca = ca_dir.map(|d| d.join(aidos_api::tls::CA_CERT_FILE));
    let c = Cluster { dir, nodes, workers: BTreeMap::new(), shared_blob_dir: true, ca };
    c.wait_leader(Duration::from_secs(30)).await;
    c
}

/// A channel to `addr` presenting the harness's root token.
pub async fn channel(addr: &str) -> Option<Channel> {
    raw_channel(addr).await.map(authed)
}

/// A channel to `addr` that presents nothing.
pub async fn raw_channel(addr: &str) -> Option<tonic::transport::Channel> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500));
    ep.connect().await.ok()
}

impl Cluster {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The blob store every process of this cluster shares (a local-directory store).
    pub fn blob_dir(&self) -> PathBuf {
        self.dir.path().join("blobs")
    }

    /// The global flags naming this cluster: its addresses and, when shared, its blob directory.
    fn cluster_flags(&self) -> Vec<String> {
        let mut v = vec!["--scheduler".to_string(), self.addrs().join(",")];
        if let Some(ca) = &self.ca {
            v.extend(["--ca-cert".to_string(), ca.display().to_string()]);
        }
        if self.shared_blob_dir {
            v.extend(["--blob-dir".to_string(), self.blob_dir().display().to_string()]);
        }
        v
    }

    /// Runs the `aidos` CLI against this cluster; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(self.cluster_flags())
            .args(args)
            .env(aidos_api::auth::TOKEN_ENV, &*TOKEN)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// What the harness's clients present to this cluster: the root token, over TLS when it serves TLS.
    pub fn credentials(&self) -> aidos_api::auth::Credentials {
        let tls = self.ca.as_ref().map(|p| aidos_api::tls::ClientTls::load(p).unwrap());
        aidos_api::auth::Credentials::token(TOKEN.clone()).with_tls(tls)
    }

    /// A channel to node `addr` presenting [`Self::credentials`].
    pub async fn node_channel(&self, addr: &str) -> Option<Channel> {
        let creds = self.credentials();
        let ep = creds.endpoint(addr).ok()?.connect_timeout(Duration::from_millis(500));
        creds.connect(&ep).await.ok().map(|ch| aidos_api::auth::with_credentials(ch, &creds))
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.values().map(|(a, _)| a.clone()).collect()
    }

    pub fn live_addrs(&self) -> Vec<String> {
        self.nodes.values().filter(|(_, p)| p.child.is_some()).map(|(a, _)| a.clone()).collect()
    }

    pub async fn status(&self, addr: &str) -> Option<ClusterStatus> {
        let ch = self.node_channel(addr).await?;
        let mut c = ClusterServiceClient::new(ch);
        let r = tokio::time::timeout(Duration::from_secs(2), c.status(ClusterStatusRequest {})).await.ok()?;
        r.ok().map(|r| r.into_inner())
    }

    /// Waits until every running node reports the same leader, and that leader is running; returns its id.
    pub async fn wait_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for a in self.live_addrs() {
                leaders.push(self.status(&a).await.map(|s| s.leader_id).unwrap_or(0));
            }
            let first = leaders[0];
            let running = self.nodes.get(&first).is_some_and(|(_, p)| p.child.is_some());
            if first != 0 && running && leaders.iter().all(|l| *l == first) {
                return first;
            }
            if Instant::now() > deadline {
                dump_logs(self);
                panic!("no agreed leader within {within:?}: {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill_node(&mut self, id: u64) {
        self.nodes.get_mut(&id).unwrap().1.sigkill();
    }

    pub fn restart_node(&mut self, id: u64) {
        self.nodes.get_mut(&id).unwrap().1.start();
    }

    /// SIGKILLs worker `id` and every task process it started (as if its machine died: tasks run in their own
    /// sessions and would survive their worker).
    pub fn kill_worker_and_tasks(&mut self, id: &str) {
        self.workers.get_mut(id).unwrap().sigkill();
        kill_tasks_under(&self.path().join(format!("worker-{id}")));
    }

    pub fn start_worker(&mut self, id: &str, cpus: &str, labels: &str) {
        self.start_worker_with(id, cpus, labels, &[]);
    }

    /// [`Self::start_worker_with`] as a worker that holds no token at all (no `AIDOS_TOKEN`, no saved login, no
    /// local admin token): on a TLS cluster its certificate is its only credential.
    pub fn start_worker_tokenless(&mut self, id: &str, cpus: &str, extra: &[&str]) {
        let mut p = self.worker_proc(id, cpus, "", extra);
        let home = self.dir.path().join(format!("home-{id}"));
        std::fs::create_dir_all(&home).unwrap();
        let h = home.display().to_string();
        p.env = vec![
            (aidos_api::auth::TOKEN_ENV.into(), String::new()),
            ("HOME".into(), h.clone()),
            ("XDG_CONFIG_HOME".into(), h.clone()),
            ("AIDOS_DATA_DIR".into(), h),
        ];
        p.cwd = Some(home);
        p.start();
        self.workers.insert(id.to_string(), p);
    }

    /// [`Self::start_worker`] with more `aidos worker` flags (e.g. `--token`).
    pub fn start_worker_with(&mut self, id: &str, cpus: &str, labels: &str, extra: &[&str]) {
        let mut p = self.worker_proc(id, cpus, labels, extra);
        p.start();
        self.workers.insert(id.to_string(), p);
    }

    /// The (not yet started) process of worker `id`.
    fn worker_proc(&self, id: &str, cpus: &str, labels: &str, extra: &[&str]) -> Proc {
        let data = self.dir.path().join(format!("worker-{id}"));
        let mut args = vec![
            "worker".into(),
            "--scheduler".into(),
            self.addrs().join(","),
            "--data-dir".into(),
            data.display().to_string(),
            "--id".into(),
            id.into(),
            "--cpus".into(),
            cpus.into(),
            "--memory".into(),
            "8Gi".into(),
        ];
        if self.shared_blob_dir {
            args.extend(["--blob-dir".into(), self.blob_dir().display().to_string()]);
        }
        if let Some(ca) = &self.ca {
            args.extend(["--ca-cert".into(), ca.display().to_string()]);
        }
        if !labels.is_empty() {
            args.push("--labels".into());
            args.push(labels.into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.dir.path().join(format!("worker-{id}.log"));
        Proc { name: format!("worker-{id}"), args, log, child: None, env: Vec::new(), cwd: None }
    }

    /// Pushes data/mnist10k as `mnist@v1` and registers `versions` versions of a small MLP `digits` (784-32-10, one
    /// epoch, seeds 1, 2, ...), each trained by a `train` job that must succeed.
    pub async fn train_digits(&self, versions: u32) {
        const TRAIN: &str = r#"
name = "digits"
kind = "train"
[resources]
cpu = 1
memory = "1Gi"
[train]
dataset = "mnist"
register_as = "digits"
[train.config]
epochs = 1
batch_size = 64
seed = SEED
[train.config.model]
name = "mlp"
layers = [784, 32, 10]
activation = "relu"
[train.config.optimizer]
name = "adam"
lr = 0.001
"#;
        let mnist = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist10k");
        let (code, _, err) =
            self.cli(&["dataset", "push", "mnist", mnist.to_str().unwrap(), "--split", "train=8000,test=2000"]);
        assert_eq!(code, 0, "{err}");
        for seed in 1..=versions {
            let spec = self.path().join(format!("train-{seed}.toml"));
            std::fs::write(&spec, TRAIN.replace("SEED", &seed.to_string())).unwrap();
            let (code, out, err) = self.cli(&["train", spec.to_str().unwrap()]);
            assert_eq!(code, 0, "{err}");
            let j = self.wait_job(out.trim(), Duration::from_secs(300), |j| state_of(j).is_terminal()).await;
            assert_eq!(state_of(&j), JobState::Succeeded, "{j:#?}");
        }
    }

    /// Deploys `model` (e.g. `digits:1`) with one replica (500m, 256 MiB), waits until it is ready and returns it.
    pub async fn deploy_one(&self, model: &str) -> Replica {
        let (code, _, err) = self.cli(&[
            "serve",
            "deploy",
            model,
            "--replicas",
            "1",
            "--cpus",
            "500m",
            "--memory",
            "256Mi",
            "--wait-secs",
            "180",
        ]);
        assert_eq!(code, 0, "{err}");
        let mut s = aidos_api::serve_service_client::ServeServiceClient::new(self.any_channel().await);
        let d = s.list(ListDeploymentsRequest::default()).await.unwrap().into_inner().deployments;
        d.iter().flat_map(|d| &d.replica_status).find(|r| r.ready).expect("a ready replica").clone()
    }

    /// Starts `aidos serve gateway` on OS-assigned ports; returns it with its HTTP and gRPC addresses.
    pub async fn start_gateway(&self) -> (Proc, std::net::SocketAddr, std::net::SocketAddr) {
        let ready_file = self.path().join("gateway.json");
        let ready = ready_file.to_str().unwrap();
        let p = self.spawn_aidos(
            "gateway",
            &["serve", "gateway", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--ready-file", ready],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready_file.exists() {
            assert!(Instant::now() < deadline, "the gateway did not start: {}", p.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let addrs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready_file).unwrap()).unwrap();
        let addr = |k: &str| addrs[k].as_str().unwrap().parse().unwrap();
        (p, addr("http"), addr("grpc"))
    }

    /// Starts another `aidos` process (`args` after the global flags naming this cluster), logged beside the rest.
    pub fn spawn_aidos(&self, name: &str, args: &[&str]) -> Proc {
        let mut all = self.cluster_flags();
        all.extend(args.iter().map(|s| s.to_string()));
        Proc::spawn(name, all, self.dir.path().join(format!("{name}.log")))
    }

    /// Starts `aidos edge agent` as device `device` with `labels` against this cluster, syncing every 200 ms, its
    /// cache in `edge-<device>` and its ready file `edge-<device>.json` (returned), plus `extra` flags.
    pub fn spawn_edge_agent(&self, device: &str, labels: &str, extra: &[&str]) -> (Proc, PathBuf) {
        let cache = self.path().join(format!("edge-{device}"));
        let ready = self.path().join(format!("edge-{device}.json"));
        let servers = self.addrs().join(",");
        let mut args = vec![
            "edge",
            "agent",
            "--server",
            &servers,
            "--device",
            device,
            "--labels",
            labels,
            "--cache",
            cache.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--sync-ms",
            "200",
            "--ready-file",
            ready.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        (self.spawn_aidos(&format!("agent-{device}"), &args), ready)
    }

    /// A channel to some live node (any node accepts every client call).
    pub async fn any_channel(&self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for a in self.live_addrs() {
                if let Some(ch) = self.node_channel(&a).await {
                    return ch;
                }
            }
            assert!(Instant::now() < deadline, "no node reachable");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submits the `train` spec `spec` (TOML text) with the CLI and returns the job id.
    pub fn submit_train(&self, spec: &str) -> String {
        let path = self.path().join(format!("train-{}.toml", std::process::id()));
        std::fs::write(&path, spec).unwrap();
        let (code, out, err) = self.cli(&["train", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    }

    /// Waits for a checkpoint of `job` at step `min_step` or later and returns its step (dumps the logs and panics
    /// after `within`).
    pub async fn wait_checkpoint(&self, job: &str, min_step: u64, within: Duration) -> u64 {
        let mut runs = aidos_api::run_service_client::RunServiceClient::new(self.any_channel().await);
        let deadline = Instant::now() + within;
        loop {
            let req = LatestCheckpointRequest { job_id: job.to_string() };
            if let Some(ck) = runs.latest_checkpoint(req).await.unwrap().into_inner().checkpoint
                && ck.step >= min_step
            {
                return ck.step;
            }
            if Instant::now() > deadline {
                dump_logs(self);
                panic!("no checkpoint of {job} at step {min_step} or later within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    pub async fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.any_channel().await)
    }

    pub async fn cluster_client(&self) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.any_channel().await)
    }

    /// Polls Get until `pred` holds for the job; retries through failovers.
    pub async fn wait_job(&self, id: &str, within: Duration, pred: impl Fn(&Job) -> bool) -> Job {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            let mut c = self.jobs().await;
            if let Ok(r) = c.get(GetJobRequest { job_id: id.into() }).await {
                let j = r.into_inner();
                if pred(&j) {
                    return j;
                }
                last = Some(j);
            }
            if Instant::now() > deadline {
                dump_logs(self);
                panic!("job {id} did not reach the expected state within {within:?}; last: {last:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn list_all(&self) -> Vec<Job> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut c = self.jobs().await;
            if let Ok(r) = c.list(ListJobsRequest::default()).await {
                return r.into_inner().jobs;
            }
            assert!(Instant::now() < deadline, "list failed for 20s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, body). Status 0: the connection failed (the body says how).
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, &format!("Authorization: Bearer {}\r\n", *TOKEN), body)
}

/// [`http`] with more request headers (`headers`: complete lines, each ending in `\r\n`).
pub fn http_with(addr: std::net::SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, "connect failed".into());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, "write failed".into());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return (0, format!("malformed answer {text:?}")) };
    (head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), body.to_string())
}

/// A `sh -c SCRIPT` process job.
pub fn sh_job(name: &str, script: &str, cpu_millis: u64, max_retries: u32) -> JobSpec {
    JobSpec {
        name: name.into(),
        kind: JobKind::Process as i32,
        resources: Some(Resources { cpu_millis, memory_bytes: 16 << 20, gpus: 0 }),
        replicas: 1,
        max_retries,
        payload: Some(job_spec::Payload::Process(ProcessSpec {
            executable: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: Default::default(),
        })),
        ..Default::default()
    }
}

pub fn state_of(j: &Job) -> JobState {
    JobState::try_from(j.state).unwrap_or(JobState::Unspecified)
}

// ---- calls as any client, and tokens ----------------------------------------------------------------------------

/// Calls `path` with an empty message, presenting `authorization` (a whole header value) and `project`.
pub async fn call(addr: &str, path: &str, authorization: Option<&str>, project: Option<&str>) -> tonic::Code {
    let ch = raw_channel(addr).await.expect("node reachable");
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    let mut req = tonic::Request::new(());
    if let Some(a) = authorization {
        req.metadata_mut().insert(aidos_api::auth::AUTHORIZATION, a.parse().unwrap());
    }
    if let Some(p) = project {
        req.metadata_mut().insert(aidos_api::auth::PROJECT_HEADER, p.parse().unwrap());
    }
    req.set_timeout(Duration::from_secs(10));
    let path = <tonic::codegen::http::uri::PathAndQuery as std::str::FromStr>::from_str(path).unwrap();
    match g.unary::<(), (), _>(req, path, tonic_prost::ProstCodec::default()).await {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

pub fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// `aidos token create ...` as root; returns (id, secret).
pub fn create_token(c: &Cluster, args: &[&str]) -> (String, String) {
    let mut all = vec!["-o", "json", "token", "create"];
    all.extend_from_slice(args);
    let (code, out, err) = c.cli(&all);
    assert_eq!(code, 0, "token create {args:?}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (v["token"]["id"].as_str().unwrap().to_string(), v["secret"].as_str().unwrap().to_string())
}
