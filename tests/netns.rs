//! The multi-host proof: a small network of Linux network namespaces (one per "machine", each with its own address,
//! data directory and no shared blob path) joined by veth pairs to a bridge in a hub namespace. Three scheduler
//! nodes keep the cluster's blobs in an S3 bucket (SeaweedFS `weed mini` in a namespace of its own); worker A reads
//! blobs straight from the bucket, worker B and the client (which is given only `--scheduler`) through the
//! schedulers' blob service; an edge agent downloads through the edge service.
//!
//! The client pushes MNIST and trains a small CNN data-parallel: one rank on worker A, one on worker B, gradients
//! all-reduced over the veths between their namespaces. Worker A's machine (the worker and the rank it started) is
//! SIGKILLed after the first checkpoint; the gang restarts elastically as one rank on worker B (`min_replicas = 1`)
//! and resumes from that checkpoint with the same global batch. The model
//! is registered, exported to ONNX on the cluster, deployed as two replicas (one per worker) and answers through a
//! gateway in the client's namespace; the edge agent downloads it and serves it. Then the leader's machine is
//! SIGKILLed, and all of that keeps answering: a new leader, the gateway, the edge agent, blob reads through the
//! remaining nodes, the training job's logs, and a new job.
//!
//! Needs root (network namespaces); skipped with a message only when namespaces cannot be created. Everything it
//! creates (namespaces, veths, bridge, processes) is removed by drop guards, also on panic. Needs SeaweedFS's `weed`
//! (`$AIDOS_WEED`, `weed` on PATH, or bin/weed next to `$AIDOS_PYTHON`; see aidos_testkit::weed).

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aidos_api::cluster_service_client::ClusterServiceClient;
use aidos_api::job_service_client::JobServiceClient;
use aidos_api::run_service_client::RunServiceClient;
use aidos_api::serve_service_client::ServeServiceClient;
use aidos_api::v1::*;
use aidos_blob::{BlobId, BlobStore, S3Config, S3Store};
use aidos_testkit::weed::{ACCESS_KEY, SECRET_KEY, WeedCommand, WeedOptions};
use common::{BIN, channel, http, sh_job, state_of, wait_until};

const BUCKET: &str = "aidos-netns";
const S3_PORT: u16 = 8333;
const SCHED_PORT: u16 = 7070;

/// The machines: name and last octet of the address in 192.0.2.0/24 (TEST-NET-1, documentation only).
const HOSTS: [(&str, u8); 8] =
    [("s1", 1), ("s2", 2), ("s3", 3), ("wa", 4), ("wb", 5), ("client", 6), ("edge", 7), ("store", 8)];

fn ip(host: &str) -> String {
    let n = HOSTS.iter().find(|(h, _)| *h == host).unwrap_or_else(|| panic!("no host {host}")).1;
    format!("192.0.2.{n}")
}

fn sched_addr(id: u64) -> String {
    format!("{}:{SCHED_PORT}", ip(&format!("s{id}")))
}

const TRAIN: &str = r#"
name = "cnn"
kind = "train"
max_retries = 2
replicas = 2
min_replicas = 1
placement = "spread"
[resources]
cpu = 2
memory = "1Gi"
[train]
dataset = "mnist"
register_as = "digits"
[train.config]
epochs = EPOCHS
batch_size = 64
seed = 1
checkpoint_every_steps = 0
log_every_steps = 25
[train.config.model]
name = "cnn"
input = [1, 28, 28]
conv = [{ channels = 4, kernel = 3 }, { channels = 8, kernel = 3 }]
pool = 2
dense = [32]
classes = 10
[train.config.optimizer]
name = "adam"
lr = 0.002
"#;
const EPOCHS: u32 = 5;

// ---------------------------------------------------------------------------------------------------------------
// The network.

/// The namespaces of one test run (named `aidos-<pid>-<host>`, plus a hub holding the bridge). Drop SIGKILLs every
/// process left in them and deletes them, which deletes their veths and the bridge with them.
struct Net {
    prefix: String,
    created: Vec<String>,
}

fn ip_cmd(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("running `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Net {
    /// Ok(None): namespaces cannot be created here (not root, or `ip netns add` refused): the test is skipped.
    /// Any later failure is an error.
    fn create() -> Result<Option<Net>, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let mut net = Net { prefix: format!("aidos-{}-", std::process::id()), created: Vec::new() };
        let hub = net.ns("hub");
        if let Err(e) = ip_cmd(&["netns", "add", &hub]) {
            eprintln!("cannot create a network namespace: {e}");
            return Ok(None);
        }
        net.created.push(hub.clone());
        ip_cmd(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip_cmd(&["-n", &hub, "link", "set", "br0", "up"])?;
        for (host, _) in HOSTS {
            let ns = net.ns(host);
            ip_cmd(&["netns", "add", &ns])?;
            net.created.push(ns.clone());
            // Created straight inside the two namespaces: the root namespace's interfaces are never touched.
            let hub_end = format!("v-{host}");
            ip_cmd(&["link", "add", &hub_end, "netns", &hub, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip_cmd(&["-n", &hub, "link", "set", &hub_end, "master", "br0"])?;
            ip_cmd(&["-n", &hub, "link", "set", &hub_end, "up"])?;
            ip_cmd(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip_cmd(&["-n", &ns, "addr", "add", &format!("{}/24", ip(host)), "dev", "eth0"])?;
            ip_cmd(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(Some(net))
    }

    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    /// Pids of the processes in a host's namespace.
    fn pids(&self, host: &str) -> Vec<i32> {
        let out = Command::new("ip").args(["netns", "pids", &self.ns(host)]).output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
        text.split_whitespace().filter_map(|p| p.parse().ok()).filter(|p| *p > 0).collect()
    }

    /// SIGKILLs every process in a host's namespace (its machine dies) and waits until none is left.
    fn kill_host(&self, host: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.pids(host);
            if pids.is_empty() {
                return;
            }
            for p in &pids {
                // SAFETY: kill with a positive pid found in the namespace's process list.
                unsafe { libc::kill(*p, libc::SIGKILL) };
            }
            if Instant::now() > deadline {
                eprintln!("processes {pids:?} in {} survive SIGKILL", self.ns(host));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `f` on a thread inside a host's namespace: the sockets it (and threads it starts) opens are there.
    fn in_ns<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.ns(host));
        std::thread::scope(|s| {
            s.spawn(move || {
                enter_netns(&path);
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Every host reaches every other over the bridge: a listener on each address, connected to from the client.
    fn check_connectivity(&self) {
        let listeners: Vec<(String, TcpListener)> = HOSTS
            .iter()
            .map(|(h, _)| {
                let l = self.in_ns(h, || TcpListener::bind(format!("{}:0", ip(h))).unwrap());
                (h.to_string(), l)
            })
            .collect();
        self.in_ns("client", || {
            for (h, l) in &listeners {
                let addr = l.local_addr().unwrap();
                if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                    panic!("no connectivity from the client namespace to {h} ({addr}): {e}");
                }
            }
        });
    }
}

fn enter_netns(path: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns on an open namespace file descriptor; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.created {
            let host = ns.strip_prefix(&self.prefix).unwrap_or(ns).to_string();
            self.kill_host(&host);
        }
        for ns in self.created.iter().rev() {
            if let Err(e) = ip_cmd(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Processes.

/// Removes the variables that would name a scheduler, blob store or credentials behind a flag's back: each process
/// gets exactly what its flags (and `env`) say.
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if (k.starts_with("AIDOS_") && k != "AIDOS_PYTHON") || k.starts_with("AWS_") {
            cmd.env_remove(&k);
        }
    }
    // The harness's root token (the nodes read it from `--admin-token-file`).
    cmd.env(aidos_api::auth::TOKEN_ENV, &*common::TOKEN);
}

fn s3_env() -> Vec<(String, String)> {
    vec![("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()), ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into())]
}

fn s3_flags() -> Vec<String> {
    vec![
        "--s3-bucket".into(),
        BUCKET.into(),
        "--s3-endpoint".into(),
        format!("http://{}:{S3_PORT}", ip("store")),
        "--s3-region".into(),
        "us-east-1".into(),
    ]
}

/// A long-running process in a host's namespace (`ip netns exec` execs it: the child's pid is the process's).
struct P {
    name: String,
    ns: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl P {
    fn spawn(
        net: &Net,
        host: &str,
        name: &str,
        program: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        dir: &Path,
    ) -> P {
        let mut p = P {
            name: name.into(),
            ns: net.ns(host),
            program: program.into(),
            args,
            env,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let out = OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(&self.program).args(&self.args);
        clean_env(&mut cmd);
        cmd.env("RUST_LOG", "info");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .current_dir(self.log.parent().unwrap())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.name));
        self.child = Some(child);
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn exit_status(&mut self) -> String {
        match self.child.as_mut().map(|c| c.try_wait()) {
            None => "not running".into(),
            Some(Ok(None)) => "running".into(),
            Some(Ok(Some(st))) => format!("exited: {st}"),
            Some(Err(e)) => format!("unknown: {e}"),
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for P {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Runs a command to its end, at most `within`: (exit code, stdout, stderr). Past the limit it is killed and the
/// test fails.
fn run_bounded(mut cmd: Command, within: Duration, what: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .unwrap_or_else(|err| panic!("running {what}: {err}"));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {within:?}; stdout: {}; stderr: {}",
                std::fs::read_to_string(&o).unwrap_or_default(),
                std::fs::read_to_string(&e).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (status.code().unwrap_or(-1), read(&o), read(&e))
}

/// On a panic, prints the tail of every log in the run's directory (every process's, weed's included).
struct DumpOnPanic(PathBuf);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for l in logs {
            let text = std::fs::read_to_string(&l).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(150)..].join("\n");
            eprintln!("===== {} =====\n{tail}", l.file_name().unwrap().to_string_lossy());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// SeaweedFS (aidos_testkit::weed's command line and readiness probe, in the store's namespace).

/// The bucket as the test itself reads it (the cluster's processes get it from their flags).
fn probe_config() -> S3Config {
    let mut c = aidos_testkit::weed::s3_config(&format!("http://{}:{S3_PORT}", ip("store")), BUCKET);
    c.max_retries = 0;
    c.connect_timeout = Duration::from_secs(1);
    c
}

/// Whether the bucket holds a blob, asked from the store's own machine.
fn bucket_has(net: &Net, blob: &str) -> bool {
    let id = BlobId::parse(blob).unwrap_or_else(|e| panic!("blob id {blob:?}: {e}"));
    net.in_ns("store", || S3Store::open(probe_config()).unwrap().contains(&id).unwrap())
}

/// Files under a directory, recursively (0 when it does not exist).
fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 })
        .sum()
}

fn start_weed(net: &Net, dir: &Path) -> P {
    let opts = WeedOptions { bucket: BUCKET.into(), ip: ip("store"), s3_port: Some(S3_PORT) };
    let weed_dir = dir.join("weed");
    std::fs::create_dir_all(&weed_dir).unwrap();
    let cmd = WeedCommand::new(&opts, &weed_dir);
    let mut weed = P::spawn(net, "store", "weed", &cmd.program, cmd.args, vec![], dir);
    // Ready when the bucket answers from another machine (the client's).
    net.in_ns("client", || {
        aidos_testkit::weed::wait_ready(
            &probe_config(),
            || if weed.running() { Ok(()) } else { Err(weed.exit_status()) },
            Duration::from_secs(90),
        )
    });
    weed
}

// ---------------------------------------------------------------------------------------------------------------
// The cluster as seen from the client's namespace.

struct World<'a> {
    net: &'a Net,
    dir: PathBuf,
    rt: tokio::runtime::Runtime,
    nodes: BTreeMap<u64, P>,
    workers: BTreeMap<&'static str, P>,
}

impl World<'_> {
    fn all_addrs(&self) -> String {
        self.nodes.keys().map(|id| sched_addr(*id)).collect::<Vec<_>>().join(",")
    }

    fn live_ids(&mut self) -> Vec<u64> {
        self.nodes.iter_mut().filter_map(|(id, p)| p.running().then_some(*id)).collect()
    }

    fn start_node(&mut self, id: u64) {
        let peers = (1..=3).map(|i| format!("{i}={}", sched_addr(i))).collect::<Vec<_>>().join(",");
        let data = self.dir.join(format!("s{id}-data"));
        let mut args: Vec<String> = vec![
            "server".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            sched_addr(id),
            "--peers".into(),
            peers,
            "--insecure".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--worker-timeout-ms".into(),
            "3000".into(),
            "--heartbeat-interval-ms".into(),
            "250".into(),
            "--admin-token-file".into(),
            self.dir.join("admin.token").display().to_string(),
        ];
        if !self.dir.join("admin.token").exists() {
            aidos_api::auth::write_token_file(&self.dir.join("admin.token"), &common::TOKEN).unwrap();
        }
        args.extend(s3_flags());
        let p = P::spawn(self.net, &format!("s{id}"), &format!("s{id}"), Path::new(BIN), args, s3_env(), &self.dir);
        self.nodes.insert(id, p);
    }

    /// Worker `wa` or `wb` in its own namespace, advertising its address; `s3`: with the bucket's flags and
    /// credentials (blobs straight from S3), else none (through the schedulers' blob service).
    fn start_worker(&mut self, host: &'static str, s3: bool) {
        if let Some(p) = self.workers.get_mut(host) {
            p.start();
            return;
        }
        let data = self.dir.join(format!("{host}-data"));
        let mut args: Vec<String> = vec![
            "worker".into(),
            "--scheduler".into(),
            self.all_addrs(),
            "--data-dir".into(),
            data.display().to_string(),
            "--id".into(),
            host.into(),
            "--cpus".into(),
            "2".into(),
            "--memory".into(),
            "4Gi".into(),
            "--advertise-host".into(),
            ip(host),
        ];
        let env = if s3 {
            args.extend(s3_flags());
            s3_env()
        } else {
            vec![]
        };
        let p = P::spawn(self.net, host, host, Path::new(BIN), args, env, &self.dir);
        self.workers.insert(host, p);
    }

    /// The `aidos` CLI in the client's namespace, given only `--scheduler` (no blob flags, no credentials).
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        self.cli_within(args, Duration::from_secs(120))
    }

    fn cli_within(&self, args: &[&str], within: Duration) -> (i32, String, String) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.net.ns("client"), BIN, "--scheduler", &self.all_addrs()]).args(args);
        clean_env(&mut cmd);
        cmd.current_dir(&self.dir);
        run_bounded(cmd, within, &format!("aidos {}", args.join(" ")))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cli(args);
        assert_eq!(code, 0, "aidos {} failed: {out}{err}", args.join(" "));
        out
    }

    /// A gRPC channel to the first live node that answers (this thread is in the client's namespace).
    fn any_channel(&mut self) -> common::Channel {
        let deadline = Instant::now() + Duration::from_secs(20);
        let ids = self.live_ids();
        self.rt.block_on(async {
            loop {
                for id in &ids {
                    if let Some(ch) = channel(&sched_addr(*id)).await {
                        return ch;
                    }
                }
                assert!(Instant::now() < deadline, "no scheduler node reachable from the client namespace");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    fn status(&self, id: u64) -> Option<ClusterStatus> {
        self.rt.block_on(async {
            let ch = channel(&sched_addr(id)).await?;
            let mut c = ClusterServiceClient::new(ch);
            let r = tokio::time::timeout(Duration::from_secs(2), c.status(ClusterStatusRequest {})).await.ok()?;
            r.ok().map(|r| r.into_inner())
        })
    }

    /// Waits until every running node names the same running leader.
    fn wait_leader(&mut self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let live = self.live_ids();
            let leaders: Vec<u64> = live.iter().map(|id| self.status(*id).map(|s| s.leader_id).unwrap_or(0)).collect();
            if leaders[0] != 0 && live.contains(&leaders[0]) && leaders.iter().all(|l| *l == leaders[0]) {
                return leaders[0];
            }
            assert!(Instant::now() < deadline, "no agreed leader within {within:?} among {live:?}: {leaders:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_workers_ready(&mut self, ids: &[&str], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ch = self.any_channel();
            let ws = self.rt.block_on(async {
                ClusterServiceClient::new(ch).list_workers(ListWorkersRequest {}).await.map(|r| r.into_inner().workers)
            });
            let ready: Vec<String> = ws
                .unwrap_or_default()
                .into_iter()
                .filter(|w| w.state == WorkerState::Ready as i32)
                .map(|w| w.id)
                .collect();
            if ids.iter().all(|i| ready.iter().any(|r| r == i)) {
                return;
            }
            assert!(Instant::now() < deadline, "workers {ids:?} not ready within {within:?}: ready {ready:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn job(&mut self, id: &str) -> Option<Job> {
        let ch = self.any_channel();
        self.rt.block_on(async {
            JobServiceClient::new(ch).get(GetJobRequest { job_id: id.into() }).await.ok().map(|r| r.into_inner())
        })
    }

    fn wait_job(&mut self, id: &str, within: Duration, what: &str, pred: impl Fn(&Job) -> bool) -> Job {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            if let Some(j) = self.job(id) {
                if pred(&j) {
                    return j;
                }
                last = Some(j);
            }
            assert!(Instant::now() < deadline, "job {id}: not {what} within {within:?}; last: {last:#?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn deployment(&mut self, name: &str) -> Option<Deployment> {
        let ch = self.any_channel();
        self.rt.block_on(async {
            let l = ServeServiceClient::new(ch).list(ListDeploymentsRequest { name: name.into() }).await.ok()?;
            l.into_inner().deployments.into_iter().next()
        })
    }
}

/// One inference request (a fixed 784-pixel row) over HTTP: (status, answered model version or error body).
fn infer(addr: SocketAddr, model: &str) -> (u16, String) {
    let row: Vec<String> = (0..784).map(|i| format!("{:.3}", (i % 13) as f32 / 13.0)).collect();
    let body =
        format!(r#"{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1,784],"data":[{}]}}]}}"#, row.join(","));
    let (status, resp) = http(addr, "POST", &format!("/v2/models/{model}/infer"), &body);
    if status != 200 {
        return (status, resp);
    }
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{e}: {resp}"));
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 10]), "{resp}");
    (status, v["model_version"].as_str().unwrap_or("?").to_string())
}

/// A JSON `{"http": ADDR}` ready file's address, once written.
fn ready_addr(file: &Path, p: &mut P, within: Duration) -> SocketAddr {
    let what = format!("{} serving", p.name);
    wait_until(&what, within, || {
        if !p.running() {
            let st = p.exit_status();
            panic!("{} {st}", p.name);
        }
        let t = std::fs::read_to_string(file).ok()?;
        let v: serde_json::Value = serde_json::from_str(&t).ok()?;
        v["http"].as_str()?.parse().ok()
    })
}

fn mnist_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    [repo.join("data/mnist10k"), repo.join("../shared/data/mnist10k")]
        .into_iter()
        .find(|p| p.join("images-idx3-ubyte.gz").exists())
        .expect("MNIST (data/mnist10k) not found")
}

// ---------------------------------------------------------------------------------------------------------------

#[test]
fn a_cluster_of_namespaces_trains_serves_and_survives_losing_a_worker_and_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let net = match Net::create() {
        Ok(Some(net)) => net,
        Ok(None) => {
            eprintln!(
                "skipped: network namespaces cannot be created here (the multi-host test needs root and `ip netns`)"
            );
            return;
        }
        Err(e) => panic!("building the test network: {e}"),
    };
    net.check_connectivity();
    let started = Instant::now();
    // Every request of the test body leaves from the client's machine.
    net.in_ns("client", || scenario(&net, dir.path()));
    eprintln!("multi-host scenario took {:?}", started.elapsed());
}

fn scenario(net: &Net, dir: &Path) {
    let _dump = DumpOnPanic(dir.to_path_buf());
    let mut weed = start_weed(net, dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut w = World { net, dir: dir.to_path_buf(), rt, nodes: BTreeMap::new(), workers: BTreeMap::new() };
    let t0 = Instant::now();
    let lap = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());

    // 1. Three scheduler nodes on the bucket; a leader is agreed.
    for id in 1..=3 {
        w.start_node(id);
    }
    let leader = w.wait_leader(Duration::from_secs(60));
    for (id, p) in &w.nodes {
        let out = p.output();
        assert!(out.contains(&format!("blob store: s3://{BUCKET}")), "node {id} does not use the bucket: {out}");
    }
    lap(&format!("3 nodes up, leader {leader}"));

    // A fourth node of a multi-node cluster with a private directory refuses to start, naming it.
    let stray = dir.join("stray-data");
    let peers = (1..=3).map(|i| format!("{i}={}", sched_addr(i))).collect::<Vec<_>>().join(",");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.ns("client"), BIN, "server", "--id", "4", "--listen"])
        .arg(format!("{}:{SCHED_PORT}", ip("client")))
        .args(["--peers", &peers, "--insecure", "--data-dir", stray.to_str().unwrap()]);
    clean_env(&mut cmd);
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(30), "a 4th server with a private directory");
    assert_ne!(code, 0, "a multi-node server with a private blob directory started: {out}{err}");
    assert!(
        err.contains("private local directory") && err.contains(&stray.join("blobs").display().to_string()),
        "the refusal does not name the private directory: {err}"
    );

    // 2. Worker A (blobs straight from S3) and worker B (through the blob service). The client pushes MNIST and
    //    submits the CNN as 2 data-parallel ranks, one per worker.
    w.start_worker("wa", true);
    w.start_worker("wb", false);
    w.wait_workers_ready(&["wa", "wb"], Duration::from_secs(30));
    let mnist = mnist_dir();
    let out = w.ok(&["dataset", "push", "mnist", mnist.to_str().unwrap(), "--split", "train=8000,test=2000"]);
    assert!(out.contains("mnist@v1"), "{out}");
    let spec = dir.join("train.toml");
    std::fs::write(&spec, TRAIN.replace("EPOCHS", &EPOCHS.to_string())).unwrap();
    let job = w.ok(&["train", spec.to_str().unwrap()]).trim().to_string();
    lap(&format!("dataset pushed, {job} submitted"));

    // 3. After the first checkpoint: worker A's machine dies.
    let ch = w.any_channel();
    let ck = wait_until("a first checkpoint recorded", Duration::from_secs(180), || {
        let r = w.rt.block_on(async {
            RunServiceClient::new(ch.clone()).latest_checkpoint(LatestCheckpointRequest { job_id: job.clone() }).await
        });
        r.ok()?.into_inner().checkpoint.filter(|c| c.step > 0)
    });
    let ck_step = ck.step;
    let j = w.job(&job).unwrap();
    assert!(!state_of(&j).is_terminal(), "the run ended before worker A could be killed: {j:#?}");
    let mut gen1: Vec<&str> = j.tasks.iter().map(|t| t.attempts[0].worker_id.as_str()).collect();
    gen1.sort();
    assert_eq!(gen1, ["wa", "wb"], "one rank per worker: {j:#?}");
    // Worker A's trainer wrote it straight into the bucket.
    assert!(bucket_has(net, &ck.blob), "checkpoint blob {} is not in the bucket", ck.blob);
    lap(&format!("checkpoint at step {ck_step} (2 ranks across hosts); killing worker A's machine"));
    net.kill_host("wa");
    w.workers.get_mut("wa").unwrap().sigkill();

    let j = w.wait_job(&job, Duration::from_secs(300), "finished", |j| state_of(j).is_terminal());
    assert_eq!(state_of(&j), JobState::Succeeded, "{j:#?}");
    // The last generation is one rank (elastic), on worker B. Before it, the surviving rank may notice its dead peer
    // (its ring connection closes) and fail before worker A is declared lost: then one more generation is placed
    // on A, and lost with it.
    let last: Vec<&Attempt> =
        j.tasks.iter().filter_map(|t| t.attempts.last()).filter(|a| a.attempt == j.attempt).collect();
    if last.len() != 1 {
        let (_, out, err) = w.cli(&["job", "logs", &job]);
        eprintln!("job logs:\n{out}\n{err}");
    }
    assert!(j.attempt >= 2, "{j:#?}");
    assert_eq!(last.len(), 1, "{j:#?}");
    assert_eq!((last[0].worker_id.as_str(), last[0].state), ("wb", TaskState::Succeeded as i32), "{j:#?}");
    let on_a = j.tasks.iter().flat_map(|t| &t.attempts).filter(|a| a.worker_id == "wa");
    assert!(on_a.clone().any(|a| a.state == TaskState::Lost as i32), "{j:#?}");
    let second =
        w.rt.block_on(
            RunServiceClient::new(ch.clone())
                .get(GetRunRequest { run_id: format!("{job}.{}", j.attempt), ..Default::default() }),
        )
        .unwrap()
        .into_inner();
    assert!(
        second.resumed_from_step >= ck_step,
        "resumed from {} but a checkpoint at {ck_step} existed",
        second.resumed_from_step
    );
    let first_step_reported = second.metrics.iter().map(|p| p.step).min().unwrap_or(0);
    assert!(first_step_reported > second.resumed_from_step, "the retry started over at step {first_step_reported}");
    lap(&format!("resumed as 1 rank on worker B from step {} and succeeded", second.resumed_from_step));

    // 4. Worker A returns. The model is registered, exported on the cluster, deployed one replica per worker.
    w.start_worker("wa", true);
    w.wait_workers_ready(&["wa", "wb"], Duration::from_secs(30));
    let out = w.ok(&["-o", "json", "model", "show", "digits:1"]);
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["lineage"]["run_id"], format!("{job}.{}", j.attempt), "{out}");
    assert_eq!(m["lineage"]["dataset"], "mnist@v1", "{out}");
    let out = w.ok(&["model", "export", "digits:1", "--on-cluster"]);
    assert!(out.contains("onnx"), "{out}");
    lap("registered and exported");

    let out = w.ok(&[
        "serve",
        "deploy",
        "digits:1",
        "--replicas",
        "2",
        "--cpus",
        "500m",
        "--memory",
        "256Mi",
        "--wait-secs",
        "120",
    ]);
    eprintln!("{out}");
    let d = wait_until("2 replicas ready", Duration::from_secs(60), || {
        w.deployment("digits").filter(|d| d.replica_status.iter().filter(|r| r.ready).count() == 2)
    });
    let mut hosts: Vec<String> =
        d.replica_status.iter().filter(|r| r.ready).map(|r| r.http.rsplit_once(':').unwrap().0.to_string()).collect();
    hosts.sort();
    assert_eq!(hosts, vec![ip("wa"), ip("wb")], "replicas not one per worker: {:#?}", d.replica_status);

    let gw_ready = dir.join("gateway.json");
    let mut gateway = P::spawn(
        net,
        "client",
        "gateway",
        Path::new(BIN),
        vec![
            "--scheduler".into(),
            w.all_addrs(),
            "serve".into(),
            "gateway".into(),
            "--http".into(),
            format!("{}:8000", ip("client")),
            "--grpc".into(),
            format!("{}:8001", ip("client")),
            "--ready-file".into(),
            gw_ready.display().to_string(),
        ],
        vec![],
        dir,
    );
    let gw = ready_addr(&gw_ready, &mut gateway, Duration::from_secs(30));
    wait_until("the gateway routing digits", Duration::from_secs(30), || {
        (http(gw, "GET", "/v2/models/digits/ready", "").0 == 200).then_some(())
    });
    assert_eq!(infer(gw, "digits"), (200, "1".into()));
    // Each replica answers on its worker's address, from the client's machine too.
    for r in d.replica_status.iter().filter(|r| r.ready) {
        assert_eq!(infer(r.http.parse().unwrap(), "digits"), (200, "1".into()), "replica {r:?}");
    }
    lap("deployed on both workers, answering through the gateway");

    // 5. The edge agent enrols, is given the model, downloads it through the control plane and serves it.
    let edge_ready = dir.join("edge.json");
    let mut agent = P::spawn(
        net,
        "edge",
        "edge-agent",
        Path::new(BIN),
        vec![
            "edge".into(),
            "agent".into(),
            "--server".into(),
            w.all_addrs(),
            "--device".into(),
            "cam-1".into(),
            "--labels".into(),
            "site=edge".into(),
            "--cache".into(),
            dir.join("edge-cache").display().to_string(),
            "--listen".into(),
            format!("{}:9000", ip("edge")),
            "--sync-ms".into(),
            "200".into(),
            "--ready-file".into(),
            edge_ready.display().to_string(),
        ],
        vec![],
        dir,
    );
    let edge = ready_addr(&edge_ready, &mut agent, Duration::from_secs(30));
    wait_until("cam-1 enrolled", Duration::from_secs(30), || {
        let (code, out, _) = w.cli(&["edge", "list"]);
        (code == 0 && out.contains("cam-1")).then_some(())
    });
    let out = w.ok(&["edge", "deploy", "digits:1", "--selector", "site=edge"]);
    assert!(out.contains("signed"), "{out}");
    wait_until("the edge agent serving digits:1", Duration::from_secs(60), || {
        (infer(edge, "digits") == (200, "1".into())).then_some(())
    });
    lap("edge agent serving");

    // 6. The leader's machine dies. A new leader; everything above still answers.
    let leader = w.wait_leader(Duration::from_secs(30));
    net.kill_host(&format!("s{leader}"));
    w.nodes.get_mut(&leader).unwrap().sigkill();
    let new_leader = w.wait_leader(Duration::from_secs(60));
    assert_ne!(new_leader, leader);
    lap(&format!("leader {leader} killed; {new_leader} leads"));

    for _ in 0..20 {
        assert_eq!(infer(gw, "digits"), (200, "1".into()), "the gateway after the leader's loss");
        assert_eq!(infer(edge, "digits"), (200, "1".into()), "the edge agent after the leader's loss");
    }
    // Blobs through the remaining nodes' blob service: the model's weights, and the dataset.
    let pulled = dir.join("pulled");
    w.ok(&["model", "pull", "digits:1", "-d", pulled.to_str().unwrap()]);
    assert!(std::fs::metadata(pulled.join("weights.bin")).map(|m| m.len()).unwrap_or(0) > 1000, "no weights pulled");
    assert!(pulled.join("model.json").exists());
    let out = w.ok(&["dataset", "show", "mnist"]);
    assert!(out.contains("10000"), "{out}");
    // The training job's output.
    let (code, out, err) = w.cli(&["job", "logs", &job]);
    assert_eq!(code, 0, "{err}");
    let resumed = format!("resuming from step {}", second.resumed_from_step);
    assert!(out.contains(&resumed) && out.contains("training cnn on mnist@v1"), "training logs: {out}{err}");
    // A new job runs to completion.
    let ch = w.any_channel();
    let id =
        w.rt.block_on(JobServiceClient::new(ch).submit(SubmitRequest {
            spec: Some(sh_job("after-failover", "echo still-here", 100, 0)),
            request_id: String::new(),
        }))
        .unwrap()
        .into_inner()
        .job_id;
    let j = w.wait_job(&id, Duration::from_secs(60), "finished", |j| state_of(j).is_terminal());
    assert_eq!(state_of(&j), JobState::Succeeded, "{j:#?}");
    let out = w.ok(&["job", "logs", &id]);
    assert!(out.contains("still-here"), "{out}");
    assert_eq!(infer(gw, "digits"), (200, "1".into()));
    // No node kept blobs of its own: they are all in the bucket.
    for id in 1..=3 {
        let private = dir.join(format!("s{id}-data")).join("blobs");
        assert_eq!(count_files(&private), 0, "node {id} stored blobs in {}", private.display());
    }
    lap("all still answering after the leader's loss");

    drop(agent);
    drop(gateway);
    weed.sigkill();
}
