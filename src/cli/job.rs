//! `aidos job ...`: submit, list, status, logs, cancel, wait.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use aidos_api::{
    CancelJobRequest, GetJobRequest, Job, JobSpec, JobState, ListJobsRequest, LogStream, LogsRequest,
    PlacementStrategy, ProcessSpec, Resources, SubmitRequest, WatchJobRequest, job_spec,
};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::args::{Global, Output, PlacementArg, parse_bytes, parse_cpu, parse_kv};
use super::client::{Client, is_final, status_error};
use super::process::Exit;
use super::render::{self, print_json, print_table};

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Submit a job from a TOML spec file, or from flags and `-- CMD ARGS...`; prints its id
    Submit(SubmitArgs),
    /// List jobs, newest first
    List(ListArgs),
    /// Show one job: its state, reason, tasks and every attempt
    Status {
        /// Job id
        id: String,
    },
    /// Print a job's output (stdout and stderr to the matching streams)
    Logs(LogsArgs),
    /// Cancel a job
    Cancel {
        /// Job id
        id: String,
    },
    /// Wait for a job to finish: exit 0 if it succeeded, 1 if it failed or was cancelled, 2 on timeout
    Wait(WaitArgs),
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Job spec file (TOML); flags given as well override its values
    pub spec: Option<PathBuf>,
    /// Job name
    #[arg(long, env = "AIDOS_SUBMIT_NAME")]
    pub name: Option<String>,
    /// CPU per replica, in cores (`2`, `0.5`) or millicores (`500m`) [default: 1]
    #[arg(long, env = "AIDOS_SUBMIT_CPU", value_parser = parse_cpu)]
    pub cpu: Option<u64>,
    /// Memory per replica (`256Mi`, `4Gi`, bytes) [default: 256Mi]
    #[arg(long, env = "AIDOS_SUBMIT_MEMORY", value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// GPUs per replica [default: 0]
    #[arg(long, env = "AIDOS_SUBMIT_GPUS")]
    pub gpus: Option<u32>,
    /// Number of replicas, placed together as a gang [default: 1]
    #[arg(long, env = "AIDOS_SUBMIT_REPLICAS")]
    pub replicas: Option<u32>,
    /// Priority: higher runs first [default: 0]
    #[arg(long, env = "AIDOS_SUBMIT_PRIORITY", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Gang restarts allowed after a failure or a lost worker [default: 0]
    #[arg(long, env = "AIDOS_SUBMIT_MAX_RETRIES")]
    pub max_retries: Option<u32>,
    /// Job label k=v (repeatable, or comma-separated)
    #[arg(long, env = "AIDOS_SUBMIT_LABEL", value_delimiter = ',', value_parser = parse_kv)]
    pub label: Vec<(String, String)>,
    /// Worker constraint: `k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k` (repeatable)
    #[arg(long, env = "AIDOS_SUBMIT_CONSTRAINT")]
    pub constraint: Vec<String>,
    /// Placement strategy [default: the scheduler's]
    #[arg(long, env = "AIDOS_SUBMIT_PLACEMENT", value_enum)]
    pub placement: Option<PlacementArg>,
    /// Wall-clock limit per attempt in seconds (0: none)
    #[arg(long, env = "AIDOS_SUBMIT_TIMEOUT_SECS")]
    pub timeout_secs: Option<u64>,
    /// Environment variable K=V for the process (repeatable)
    #[arg(long, env = "AIDOS_SUBMIT_ENV", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Idempotency key: resubmitting with the same key returns the first job (default: a fresh random one)
    #[arg(long, env = "AIDOS_SUBMIT_REQUEST_ID")]
    pub request_id: Option<String>,
    /// Wait for the job to finish, like `aidos job wait`
    #[arg(long, env = "AIDOS_SUBMIT_WAIT")]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit code 2)
    #[arg(long, env = "AIDOS_SUBMIT_WAIT_TIMEOUT_SECS", requires = "wait")]
    pub wait_timeout_secs: Option<u64>,
    /// The command to run, after `--`
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only jobs in these states, comma-separated (pending,running,succeeded,failed,cancelled)
    #[arg(long, env = "AIDOS_LIST_STATE", value_delimiter = ',', value_parser = parse_state)]
    pub state: Vec<JobState>,
    /// Only jobs with this label k=v (repeatable; all must match)
    #[arg(long, env = "AIDOS_LIST_LABEL", value_delimiter = ',', value_parser = parse_kv)]
    pub label: Vec<(String, String)>,
    /// Only jobs whose name starts with this
    #[arg(long, env = "AIDOS_LIST_NAME_PREFIX")]
    pub name_prefix: Option<String>,
    /// At most this many jobs (0: all)
    #[arg(long, env = "AIDOS_LIST_LIMIT", default_value_t = 0)]
    pub limit: u32,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Job id
    pub id: String,
    /// Keep streaming until the job ends
    #[arg(short, long, env = "AIDOS_LOGS_FOLLOW")]
    pub follow: bool,
    /// Only this replica's output
    #[arg(long, env = "AIDOS_LOGS_RANK")]
    pub rank: Option<u32>,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Job id
    pub id: String,
    /// Give up after this many seconds (exit code 2)
    #[arg(long, env = "AIDOS_WAIT_TIMEOUT_SECS")]
    pub timeout_secs: Option<u64>,
}

fn parse_state(s: &str) -> Result<JobState, String> {
    let up = s.trim().to_ascii_uppercase();
    let name = if up.starts_with("JOB_STATE_") { up } else { format!("JOB_STATE_{up}") };
    JobState::from_str_name(&name)
        .filter(|st| *st != JobState::Unspecified)
        .ok_or_else(|| format!("`{s}` is not a job state (pending, running, succeeded, failed, cancelled)"))
}

pub async fn run(g: &Global, cmd: JobCmd) -> anyhow::Result<()> {
    let mut client = Client::new(&g.scheduler)?;
    match cmd {
        JobCmd::Submit(a) => submit(g, &mut client, a).await,
        JobCmd::List(a) => list(g, &mut client, a).await,
        JobCmd::Status { id } => {
            let job = get(&mut client, &id).await?;
            // Data-parallel ranks report their own throughput on the attempt's run.
            let is_train = job.spec.as_ref().is_some_and(|s| s.kind == aidos_api::JobKind::Train as i32);
            let throughput = if is_train && job.attempt > 0 {
                let run = crate::cli::run::get_run(&mut client, &format!("{}.{}", job.id, job.attempt)).await.ok();
                run.map(|r| rank_throughput(&r)).unwrap_or_default()
            } else {
                HashMap::new()
            };
            show_job(g.output, &job, &throughput);
            Ok(())
        }
        JobCmd::Logs(a) => logs(&mut client, a).await,
        JobCmd::Cancel { id } => {
            let req = CancelJobRequest { job_id: id.clone() };
            let job = client
                .job(|mut c| {
                    let req = req.clone();
                    async move { c.cancel(req).await.map(|r| r.into_inner()) }
                })
                .await
                .map_err(|e| status_error(e, &format!("job {id}")))?;
            match g.output {
                Output::Json => print_json(&render::job_json(&job)),
                Output::Table => println!("job {} {}", job.id, render::job_state(job.state).to_ascii_lowercase()),
            }
            Ok(())
        }
        JobCmd::Wait(a) => wait(g, &mut client, &a.id, a.timeout_secs).await,
    }
}

/// Builds the spec from the file and/or flags.
fn build_spec(a: &SubmitArgs) -> anyhow::Result<JobSpec> {
    let mut spec = match (&a.spec, a.command.is_empty()) {
        (Some(_), false) => anyhow::bail!("give either a spec file or `-- CMD ARGS...`, not both"),
        (None, true) => anyhow::bail!("nothing to run: give a spec file (SPEC.toml) or `-- CMD ARGS...`"),
        (Some(path), true) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            aidos_api::spec::parse_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        (None, false) => JobSpec {
            kind: aidos_api::JobKind::Process as i32,
            resources: Some(Resources { cpu_millis: 1000, memory_bytes: 256 << 20, gpus: 0 }),
            replicas: 1,
            payload: Some(job_spec::Payload::Process(ProcessSpec {
                executable: a.command[0].clone(),
                args: a.command[1..].to_vec(),
                env: Default::default(),
            })),
            ..Default::default()
        },
    };
    if let Some(n) = &a.name {
        spec.name = n.clone();
    }
    let r = spec.resources.get_or_insert_with(Default::default);
    if let Some(c) = a.cpu {
        r.cpu_millis = c;
    }
    if let Some(m) = a.memory {
        r.memory_bytes = m;
    }
    if let Some(n) = a.gpus {
        r.gpus = n;
    }
    if let Some(n) = a.replicas {
        spec.replicas = n;
    }
    if let Some(p) = a.priority {
        spec.priority = p;
    }
    if let Some(n) = a.max_retries {
        spec.max_retries = n;
    }
    if let Some(t) = a.timeout_secs {
        spec.timeout_secs = t;
    }
    if let Some(p) = a.placement {
        spec.placement = match p {
            PlacementArg::Binpack => PlacementStrategy::Binpack,
            PlacementArg::Spread => PlacementStrategy::Spread,
        } as i32;
    }
    spec.labels.extend(a.label.iter().cloned());
    for (i, c) in a.constraint.iter().enumerate() {
        let parsed = aidos_api::spec::parse_constraint(c)
            .map_err(|r| anyhow::anyhow!("invalid job spec: --constraint[{i}]: {r}"))?;
        spec.constraints.push(parsed);
    }
    if !a.env.is_empty()
        && let Some(job_spec::Payload::Process(p)) = &mut spec.payload
    {
        p.env.extend(a.env.iter().cloned());
    }
    aidos_api::spec::validate(&spec)?;
    Ok(spec)
}

/// A random UUID-v4-shaped id.
pub fn new_request_id() -> String {
    let v: u128 = rand::random::<u128>() & !(0xf000u128 << 64) & !(0xc000u128 << 48);
    let v = v | (0x4000u128 << 64) | (0x8000u128 << 48);
    let h = format!("{v:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Submits one spec under `request_id` (a retry with the same id returns the earlier job).
pub async fn submit_spec(
    client: &mut Client,
    spec: aidos_api::JobSpec,
    request_id: String,
) -> anyhow::Result<aidos_api::SubmitResponse> {
    let req = SubmitRequest { spec: Some(spec), request_id };
    let resp = client
        .job(|mut c| {
            let req = req.clone();
            async move { c.submit(req).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(|e| status_error(e, ""))?;
    Ok(resp)
}

async fn submit(g: &Global, client: &mut Client, a: SubmitArgs) -> anyhow::Result<()> {
    let spec = build_spec(&a)?;
    let request_id = a.request_id.clone().unwrap_or_else(new_request_id);
    let resp = submit_spec(client, spec, request_id.clone()).await?;
    match g.output {
        Output::Json if !a.wait => {
            print_json(&json!({ "job_id": resp.job_id, "duplicate": resp.duplicate, "request_id": request_id }))
        }
        Output::Json => {}
        Output::Table => {
            println!("{}", resp.job_id);
            if resp.duplicate {
                eprintln!("(request id {request_id} was already submitted: this is the earlier job)");
            }
        }
    }
    let _ = std::io::stdout().flush();
    if a.wait {
        return wait(g, client, &resp.job_id, a.wait_timeout_secs).await;
    }
    Ok(())
}

async fn list(g: &Global, client: &mut Client, a: ListArgs) -> anyhow::Result<()> {
    let req = ListJobsRequest {
        states: a.state.iter().map(|s| *s as i32).collect(),
        labels: a.label.into_iter().collect(),
        name_prefix: a.name_prefix.unwrap_or_default(),
        limit: a.limit,
        ..Default::default()
    };
    let resp = client
        .job(|mut c| {
            let req = req.clone();
            async move { c.list(req).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(|e| status_error(e, ""))?;
    if g.output == Output::Json {
        print_json(&json!({ "jobs": resp.jobs.iter().map(render::job_json).collect::<Vec<_>>() }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = resp
        .jobs
        .iter()
        .map(|j| {
            let replicas = j.spec.as_ref().map(|s| s.replicas.max(1)).unwrap_or(1);
            vec![
                j.id.clone(),
                render::truncate(j.spec.as_ref().map(|s| s.name.as_str()).unwrap_or(""), 24),
                render::job_state(j.state).to_string(),
                replicas.to_string(),
                j.attempt.to_string(),
                render::age(j.created_at_ms),
                render::truncate(&j.reason, 60),
            ]
        })
        .collect();
    print_table(&["ID", "NAME", "STATE", "REPLICAS", "ATTEMPT", "AGE", "REASON"], &rows);
    Ok(())
}

async fn get(client: &mut Client, id: &str) -> anyhow::Result<Job> {
    let req = GetJobRequest { job_id: id.to_string() };
    client
        .job(|mut c| {
            let req = req.clone();
            async move { c.get(req).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(|e| status_error(e, &format!("job {id}")))
}

/// The latest `rank<R>.samples_per_sec` of each rank in a run.
fn rank_throughput(r: &aidos_api::Run) -> HashMap<u32, f64> {
    let mut best: HashMap<u32, (u64, f64)> = HashMap::new();
    for p in &r.metrics {
        let Some(rank) = aidos_api::contract::rank_of_throughput_metric(&p.name) else { continue };
        let e = best.entry(rank).or_insert((p.step, p.value));
        if p.step >= e.0 {
            *e = (p.step, p.value);
        }
    }
    best.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

fn show_job(out: Output, j: &Job, throughput: &HashMap<u32, f64>) {
    if out == Output::Json {
        let mut v = render::job_json(j);
        if !throughput.is_empty() {
            v["rank_samples_per_sec"] =
                throughput.iter().map(|(k, v)| (format!("rank{k}"), serde_json::json!(v))).collect();
        }
        print_json(&v);
        return;
    }
    let spec = j.spec.clone().unwrap_or_default();
    println!("id:          {}", j.id);
    if !spec.name.is_empty() {
        println!("name:        {}", spec.name);
    }
    println!("state:       {}", render::job_state(j.state));
    if !j.reason.is_empty() {
        println!("reason:      {}", j.reason);
    }
    if let Some(job_spec::Payload::Process(p)) = &spec.payload {
        println!("command:     {}", render::shell_words(&p.executable, &p.args));
    }
    println!("replicas:    {} x ({})", spec.replicas.max(1), render::resources(spec.resources.as_ref()));
    println!(
        "priority:    {}   max retries: {}   placement: {}",
        spec.priority,
        spec.max_retries,
        render::placement(spec.placement)
    );
    if !spec.labels.is_empty() {
        println!("labels:      {}", render::kv_list(&spec.labels));
    }
    if !spec.constraints.is_empty() {
        let cs: Vec<String> = spec.constraints.iter().map(render::constraint).collect();
        println!("constraints: {}", cs.join(", "));
    }
    println!("attempt:     {}", j.attempt);
    println!("created:     {} ago", render::age(j.created_at_ms));
    if j.tasks.is_empty() {
        return;
    }
    println!();
    let mut rows = Vec::new();
    for t in &j.tasks {
        if t.attempts.is_empty() {
            let row = [t.rank.to_string(), "-".into(), render::task_state(t.state).into()];
            rows.push(row.into_iter().chain(std::iter::repeat_n(String::new(), 5)).collect());
        }
        for at in &t.attempts {
            let finished = aidos_api::TaskState::try_from(at.state).is_ok_and(|s| s.is_terminal());
            let sps = match throughput.get(&t.rank) {
                Some(v) if at.attempt == j.attempt => format!("{v:.0} samples/s"),
                _ => "-".into(),
            };
            rows.push(vec![
                t.rank.to_string(),
                at.attempt.to_string(),
                render::task_state(at.state).to_string(),
                if at.worker_id.is_empty() { "-".into() } else { at.worker_id.clone() },
                if finished { at.exit_code.to_string() } else { "-".into() },
                at.fencing_token.to_string(),
                sps,
                render::truncate(&at.message, 60),
            ]);
        }
    }
    print_table(&["RANK", "ATTEMPT", "STATE", "WORKER", "EXIT", "TOKEN", "THROUGHPUT", "MESSAGE"], &rows);
}

pub async fn logs(client: &mut Client, a: LogsArgs) -> anyhow::Result<()> {
    let req = LogsRequest { job_id: a.id.clone(), follow: a.follow, rank: a.rank, ..Default::default() };
    // Bytes already written per (rank, attempt, stream): a reconnect replays from the start, so skip those.
    let mut written: HashMap<(u32, u32, i32), usize> = HashMap::new();
    let mut reconnects = 0u32;
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let mut progress = super::progress::ProgressView::new();
    loop {
        let mut stream = client
            .job(|mut c| {
                let req = req.clone();
                async move { c.logs(req).await.map(|r| r.into_inner()) }
            })
            .await
            .map_err(|e| status_error(e, &format!("job {}", a.id)))?;
        let mut seen: HashMap<(u32, u32, i32), usize> = HashMap::new();
        let err = loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    let key = (chunk.rank, chunk.attempt, chunk.stream);
                    let pos = seen.entry(key).or_default();
                    let done = written.entry(key).or_default();
                    let start = (*done).saturating_sub(*pos).min(chunk.data.len());
                    *pos += chunk.data.len();
                    let data = &chunk.data[start..];
                    if data.is_empty() {
                        continue;
                    }
                    *done += data.len();
                    reconnects = 0;
                    let res = if chunk.stream == LogStream::Stderr as i32 {
                        let mut r = Ok(());
                        progress.print(|| r = stderr.write_all(data).and_then(|_| stderr.flush()));
                        r
                    } else {
                        let shown = progress.filter(data);
                        let mut r = Ok(());
                        progress.print(|| r = stdout.write_all(&shown).and_then(|_| stdout.flush()));
                        r
                    };
                    match res {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                        Err(e) => return Err(e).context("writing logs"),
                    }
                }
                Ok(None) => {
                    let rest = progress.finish();
                    let _ = stdout.write_all(&rest);
                    return Ok(());
                }
                Err(st) => break st,
            }
        };
        if is_final(&err) || reconnects >= 10 {
            return Err(status_error(err, &format!("job {}", a.id)));
        }
        reconnects += 1;
        tracing::debug!("log stream broke ({}); reconnecting", err.message());
        client.advance();
        tokio::time::sleep(Duration::from_millis(100 * reconnects as u64)).await;
    }
}

/// Follows a job with Watch until it ends. Exit 0 on success, 1 on failure or cancellation, 2 on timeout.
pub async fn wait(g: &Global, client: &mut Client, id: &str, timeout_secs: Option<u64>) -> anyhow::Result<()> {
    let spinner = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(120));
        pb.set_message(format!("job {id}: waiting"));
        pb
    });
    let mut last: Option<Job> = None;
    let watch = watch_until_done(client, id, &spinner, &mut last);
    let result = match timeout_secs {
        Some(s) => tokio::time::timeout(Duration::from_secs(s), watch).await.ok(),
        None => Some(watch.await),
    };
    if let Some(pb) = &spinner {
        pb.finish_and_clear();
    }
    let job = match result {
        None => {
            let state = last.as_ref().map(|j| render::job_state(j.state)).unwrap_or("UNKNOWN");
            return Err(Exit { code: 2, msg: format!("timed out waiting for job {id} (state {state})") }.into());
        }
        Some(r) => r?,
    };
    let state = JobState::try_from(job.state).unwrap_or(JobState::Unspecified);
    if g.output == Output::Json {
        print_json(&render::job_json(&job));
    }
    match state {
        JobState::Succeeded => {
            if g.output == Output::Table {
                println!("job {id} succeeded");
            }
            Ok(())
        }
        _ => {
            let what = render::job_state(job.state).to_ascii_lowercase();
            let msg = if job.reason.is_empty() {
                format!("job {id} {what}")
            } else {
                format!("job {id} {what}: {}", job.reason)
            };
            Err(Exit { code: 1, msg }.into())
        }
    }
}

async fn watch_until_done(
    client: &mut Client,
    id: &str,
    spinner: &Option<indicatif::ProgressBar>,
    last: &mut Option<Job>,
) -> anyhow::Result<Job> {
    let req = WatchJobRequest { job_id: id.to_string() };
    let mut reconnects = 0u32;
    loop {
        let mut stream = client
            .job(|mut c| {
                let req = req.clone();
                async move { c.watch(req).await.map(|r| r.into_inner()) }
            })
            .await
            .map_err(|e| status_error(e, &format!("job {id}")))?;
        let err = loop {
            match stream.message().await {
                Ok(Some(job)) => {
                    reconnects = 0;
                    if let Some(pb) = spinner {
                        let mut m = format!("job {id}: {}", render::job_state(job.state));
                        if job.attempt > 1 {
                            m.push_str(&format!(" (attempt {})", job.attempt));
                        }
                        if !job.reason.is_empty() {
                            m.push_str(&format!(" - {}", render::truncate(&job.reason, 80)));
                        }
                        pb.set_message(m);
                    }
                    let done = JobState::try_from(job.state).is_ok_and(|s| s.is_terminal());
                    *last = Some(job);
                    if done {
                        return Ok(last.clone().unwrap_or_default());
                    }
                }
                // Ended without a terminal state (e.g. the node stepped down): watch again elsewhere.
                Ok(None) => break tonic::Status::unavailable("watch stream ended early"),
                Err(st) => break st,
            }
        };
        if is_final(&err) || reconnects >= 20 {
            return Err(status_error(err, &format!("job {id}")));
        }
        reconnects += 1;
        tracing::debug!("watch stream broke ({}); reconnecting", err.message());
        client.advance();
        tokio::time::sleep(Duration::from_millis(100 * reconnects.min(10) as u64)).await;
    }
}
