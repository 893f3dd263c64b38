//! `aidos server`: one scheduler node of a (possibly multi-node) Raft cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aidos_scheduler::{SchedulerConfig, SchedulerNode, Strategy};
use anyhow::Context;
use clap::Args;

use super::args::{Global, PlacementArg};
use super::process::shutdown_signal;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// This node's Raft id (> 0), unique in the cluster
    #[arg(long, env = "AIDOS_NODE_ID")]
    pub id: u64,
    /// ed25519 key (32-byte seed file) edge deployments are signed with; created when missing; give every node of
    /// the cluster the same file (default: <data-dir>/edge-signing.key)
    #[arg(long, env = "AIDOS_EDGE_SIGNING_KEY")]
    pub edge_signing_key: Option<std::path::PathBuf>,
    /// The cluster's root (admin) token file: read when it exists, else created (mode 0600) with a new token. Give
    /// every node of a cluster the same file; clients present its token (or tokens made with it, `aidos token
    /// create`). Default: <data-dir>/admin.token
    #[arg(long, env = "AIDOS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Where the web dashboard and the JSON HTTP API listen (docs/http-api.md; Prometheus service discovery of
    /// serving replicas: GET /v1/http_sd; every call with a token); unset: neither. Loopback unless the cluster's
    /// network is trusted
    #[arg(long, env = "AIDOS_HTTP")]
    pub http: Option<std::net::SocketAddr>,
    /// Calls per second one token may make to this node, sustained (0: no limit); over it, calls are answered
    /// RESOURCE_EXHAUSTED with a retry hint
    #[arg(long, env = "AIDOS_RATE_LIMIT_PER_SEC", default_value_t = 1000.0)]
    pub rate_limit_per_sec: f64,
    /// Calls one token may make at once after being idle (the bucket's size)
    #[arg(long, env = "AIDOS_RATE_LIMIT_BURST", default_value_t = 2000.0)]
    pub rate_limit_burst: f64,
    /// Unary calls one token may have in flight on this node at once (0: no limit)
    #[arg(long, env = "AIDOS_MAX_IN_FLIGHT_PER_TOKEN", default_value_t = 256)]
    pub max_in_flight_per_token: u32,
    /// Shared secret a new edge device must present to enrol (the agents' --enrollment-token); without it
    /// enrolment is open, though a known device name still enrols again only with its own credential
    #[arg(long, env = "AIDOS_EDGE_ENROLLMENT_TOKEN", hide_env_values = true)]
    pub edge_enrollment_token: Option<String>,
    /// Largest blob one upload through this node's blob service may carry, e.g. 2Gi (the upload streams into the
    /// store, but the tasks and clients that read a blob hold it whole)
    #[arg(long, env = "AIDOS_MAX_BLOB_BYTES", value_parser = super::args::parse_bytes, default_value = "2Gi")]
    pub max_blob_bytes: u64,
    /// Address the gRPC server binds (loopback by default: jobs run arbitrary code)
    #[arg(long, env = "AIDOS_LISTEN", default_value = aidos_api::DEFAULT_SCHEDULER_ADDR)]
    pub listen: SocketAddr,
    /// Address other nodes and workers dial to reach this node (default: this node's entry in --peers, else --listen)
    #[arg(long, env = "AIDOS_ADVERTISE")]
    pub advertise: Option<String>,
    /// Initial voters as id=addr, comma-separated, this node included (empty: a single-node cluster)
    #[arg(long, env = "AIDOS_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<(u64, String)>,
    /// Directory for this node's Raft log, vote and state machine
    #[arg(long, env = "AIDOS_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Serve TLS on every listener, and authenticate nodes and workers with certificates of the cluster CA in this
    /// directory (ca.pem and ca.key, from `aidos cert init`; every node needs the same CA). The node issues its own
    /// certificate at start; workers join with one-time join tokens
    #[arg(long, env = "AIDOS_TLS_DIR", help_heading = "Transport security")]
    pub tls_dir: Option<PathBuf>,
    /// Lifetime of this node's own certificate (365d, 12h, 90m, 3600); the node issues a new one from the CA two
    /// thirds into it, without a restart
    #[arg(long, env = "AIDOS_NODE_CERT_LIFETIME", default_value = "365d", value_parser = crate::cli::token::parse_ttl,
          help_heading = "Transport security")]
    pub node_cert_lifetime: i64,
    /// Lifetime of workers' certificates (365d, 12h, ...); workers renew theirs two thirds into it, presenting the
    /// current one
    #[arg(long, env = "AIDOS_WORKER_CERT_LIFETIME", default_value = "365d",
          value_parser = crate::cli::token::parse_ttl, help_heading = "Transport security")]
    pub worker_cert_lifetime: i64,
    /// Lifetime of edge devices' certificates (30d, 12h, 90m, 3600); agents renew theirs after two thirds of it
    #[arg(long, env = "AIDOS_DEVICE_CERT_LIFETIME", default_value = "30d", value_parser = crate::cli::token::parse_ttl,
          help_heading = "Transport security")]
    pub device_cert_lifetime: i64,
    /// Run a cluster of several nodes without TLS (tokens and data cross the network in the clear). Without
    /// --tls-dir, a node with more than one --peers entry refuses to start unless this is given
    #[arg(long, env = "AIDOS_INSECURE", help_heading = "Transport security")]
    pub insecure: bool,
    /// A worker silent for this many milliseconds is declared lost
    #[arg(long, env = "AIDOS_WORKER_TIMEOUT_MS", default_value_t = 5000)]
    pub worker_timeout_ms: u64,
    /// How often workers should heartbeat, in milliseconds
    #[arg(long, env = "AIDOS_HEARTBEAT_INTERVAL_MS", default_value_t = 500)]
    pub heartbeat_interval_ms: u64,
    /// Placement strategy for jobs that do not choose one
    #[arg(long, env = "AIDOS_PLACEMENT", value_enum, default_value_t = PlacementArg::Binpack)]
    pub placement: PlacementArg,
    /// Keep at most this many finished (succeeded, failed, cancelled) jobs: older ones are compacted out of the
    /// cluster state (their runs, metrics and models stay)
    #[arg(
        long,
        env = "AIDOS_RETAIN_FINISHED_JOBS",
        help_heading = "Retention and blob GC",
        default_value_t = aidos_scheduler::retention::DEFAULT_MAX_FINISHED_JOBS
    )]
    pub retain_finished_jobs: usize,
    /// Compact a finished job this many seconds after it finished, however few there are (default: 7 days)
    #[arg(
        long,
        env = "AIDOS_RETAIN_FINISHED_FOR_SECS",
        help_heading = "Retention and blob GC",
        value_parser = parse_secs,
        default_value = "604800"
    )]
    pub retain_finished_for_secs: Duration,
    /// How often the leader applies the retention policy, in seconds (0: never)
    #[arg(
        long,
        env = "AIDOS_RETENTION_INTERVAL_SECS",
        help_heading = "Retention and blob GC",
        value_parser = parse_secs,
        default_value = "30"
    )]
    pub retention_interval_secs: Duration,
    /// How long the audit log keeps a record, in seconds (0: kept until the newest 100,000 push it out)
    #[arg(
        long,
        env = "AIDOS_AUDIT_RETENTION_SECS",
        help_heading = "Retention and blob GC",
        value_parser = parse_secs,
        default_value = "7776000"
    )]
    pub audit_retention_secs: Duration,
    /// How often the leader deletes unreferenced blobs from the blob store, in seconds (fractions allowed; 0: never)
    #[arg(
        long,
        env = "AIDOS_BLOB_GC_INTERVAL_SECS",
        help_heading = "Retention and blob GC",
        value_parser = parse_secs,
        default_value = "600"
    )]
    pub blob_gc_interval_secs: Duration,
    /// An unreferenced blob is deleted only once its last upload is this many seconds old (at least 1, and longer
    /// than the S3 store's refresh interval): whatever uploads blobs must reference them (commit the dataset,
    /// record the checkpoint, register the model) within this time
    #[arg(
        long,
        env = "AIDOS_BLOB_GC_GRACE_SECS",
        help_heading = "Retention and blob GC",
        value_parser = parse_secs,
        default_value = "3600"
    )]
    pub blob_gc_grace_secs: Duration,
}

/// Seconds, fractions allowed (`0.2`, `30`), for clap.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}`: seconds must be zero or positive"))
}

fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s.split_once('=').ok_or_else(|| format!("`{s}` is not id=addr"))?;
    let id: u64 = id.trim().parse().map_err(|_| format!("`{id}` in `{s}` is not a node id"))?;
    if id == 0 {
        return Err(format!("`{s}`: node ids start at 1"));
    }
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(format!("`{s}` has no address"));
    }
    Ok((id, addr.to_string()))
}

pub async fn run(g: &Global, a: ServerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.id > 0, "--id must be > 0");
    anyhow::ensure!(a.heartbeat_interval_ms > 0, "--heartbeat-interval-ms must be > 0");
    anyhow::ensure!(
        a.worker_timeout_ms > a.heartbeat_interval_ms,
        "--worker-timeout-ms must be larger than --heartbeat-interval-ms"
    );
    let mut members: BTreeMap<u64, String> = BTreeMap::new();
    for (id, addr) in a.peers {
        if let Some(prev) = members.insert(id, addr.clone())
            && prev != addr
        {
            anyhow::bail!("--peers names node {id} twice ({prev} and {addr})");
        }
    }
    let advertise = a.advertise.or_else(|| members.get(&a.id).cloned()).unwrap_or_default();
    if !members.is_empty() && !members.contains_key(&a.id) {
        let me = if advertise.is_empty() { dial_addr(a.listen) } else { advertise.clone() };
        tracing::warn!("--peers does not name this node ({}); adding {}={me}", a.id, a.id);
        members.insert(a.id, me);
    }
    if advertise.is_empty() && a.listen.ip().is_unspecified() {
        tracing::warn!("listening on a wildcard address without --advertise: peers cannot dial {}", a.listen);
    }
    if let Err(why) = aidos_api::tls::require_tls(members.len(), a.tls_dir.is_some(), a.insecure) {
        anyhow::bail!("{why}");
    }
    // Certificates outliving the CA (10 years) would not verify anyway.
    for (flag, secs) in [
        ("--node-cert-lifetime", a.node_cert_lifetime),
        ("--worker-cert-lifetime", a.worker_cert_lifetime),
        ("--device-cert-lifetime", a.device_cert_lifetime),
    ] {
        // Shorter ones would renew faster than a renewal's round trip may take.
        anyhow::ensure!(secs >= 5, "{flag}: at least 5 seconds");
        anyhow::ensure!(secs <= 3650 * 86_400, "{flag}: at most 3650d (the CA's own lifetime)");
    }
    std::fs::create_dir_all(&a.data_dir).with_context(|| format!("creating {}", a.data_dir.display()))?;

    // Blobs: the flags' store, else a private directory (fine for one node; a multi-node cluster refuses it).
    let blobs = super::args::store_config(g)?
        .unwrap_or_else(|| aidos_blob::StoreConfig::Dir { path: a.data_dir.join("blobs"), shared: false });
    if let Err(why) = blobs.check_cluster(&members) {
        anyhow::bail!("{why}");
    }
    println!("blob store: {}", blobs.describe());
    let token_file = a.admin_token_file.clone().unwrap_or_else(|| a.data_dir.join("admin.token"));
    if members.len() > 1 && !token_file.exists() {
        anyhow::bail!(
            "{} is missing: every node of a {}-node cluster needs the same admin token file (nodes present it to \
             each other). Make one once with `aidos token new-root --file admin.token`, copy it to every node, and \
             pass --admin-token-file",
            token_file.display(),
            members.len()
        );
    }
    let root_token = SchedulerNode::load_or_create_root_token(&token_file)?;
    println!("admin token: {}", token_file.display());
    let cfg = SchedulerConfig {
        node_id: a.id,
        listen: a.listen,
        advertise,
        data_dir: a.data_dir,
        initial_members: members,
        worker_timeout: Duration::from_millis(a.worker_timeout_ms),
        heartbeat_interval: Duration::from_millis(a.heartbeat_interval_ms),
        default_strategy: match a.placement {
            PlacementArg::Binpack => Strategy::BinPack,
            PlacementArg::Spread => Strategy::Spread,
        },
        blobs: Some(blobs),
        edge_signing_key: a.edge_signing_key.clone(),
        edge_enrollment_token: a.edge_enrollment_token.clone(),
        max_blob_bytes: a.max_blob_bytes,
        retention: aidos_scheduler::retention::RetentionPolicy {
            max_finished_jobs: a.retain_finished_jobs,
            max_age: a.retain_finished_for_secs,
        },
        retention_interval: a.retention_interval_secs,
        blob_gc_interval: a.blob_gc_interval_secs,
        blob_gc_grace: a.blob_gc_grace_secs,
        root_token,
        limits: aidos_scheduler::limits::LimitConfig {
            rate_per_sec: a.rate_limit_per_sec,
            burst: a.rate_limit_burst,
            max_in_flight: a.max_in_flight_per_token,
        },
        http: a.http,
        audit_retention: a.audit_retention_secs,
        tls: a.tls_dir.clone().map(|dir| aidos_scheduler::TlsConfig {
            node_cert_lifetime: Duration::from_secs(a.node_cert_lifetime as u64),
            worker_cert_lifetime: Duration::from_secs(a.worker_cert_lifetime as u64),
            device_cert_lifetime: Duration::from_secs(a.device_cert_lifetime as u64),
            ..aidos_scheduler::TlsConfig::new(dir)
        }),
    };
    let node = SchedulerNode::start(cfg).await.with_context(|| format!("starting scheduler node {}", a.id))?;
    let scheme = if a.tls_dir.is_some() { "https" } else { "http" };
    println!(
        "scheduler {} listening on {}{}",
        a.id,
        node.local_addr(),
        if a.tls_dir.is_some() { " (TLS)" } else { "" }
    );
    if let Some(h) = node.http_addr() {
        println!("dashboard and HTTP API on {scheme}://{h}/ (docs/http-api.md)");
    }
    shutdown_signal().await;
    node.shutdown().await;
    Ok(())
}

/// The address a local client dials to reach a listener (a wildcard bind is reached through loopback).
pub fn dial_addr(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port()).to_string()
}
