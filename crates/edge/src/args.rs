//! The agent's flags, shared by `aidos-edge` and `aidos edge agent` (clap lives with the binaries' entry points;
//! the library itself takes the plain [`AgentConfig`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::AgentConfig;

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Control-plane addresses (any scheduler node), comma-separated
    #[arg(long, env = "AIDOS_EDGE_SERVER", value_delimiter = ',', required = true)]
    pub server: Vec<String>,
    /// This device's name, unique in the fleet
    #[arg(long, env = "AIDOS_EDGE_DEVICE")]
    pub device: String,
    /// Labels as k=v, comma-separated (deployments select devices by them)
    #[arg(long, env = "AIDOS_EDGE_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Cache directory: models, partial downloads, state and the telemetry buffer (survives restarts)
    #[arg(long, env = "AIDOS_EDGE_CACHE")]
    pub cache: PathBuf,
    /// Most bytes the cached models and partial downloads may take (0: no limit besides the disk)
    #[arg(long, env = "AIDOS_EDGE_CACHE_MAX_BYTES", default_value_t = 0)]
    pub cache_max_bytes: u64,
    /// Local inference address (Open Inference Protocol over HTTP)
    #[arg(long, env = "AIDOS_EDGE_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Runtime: tract (pure Rust), ort (ONNX Runtime from ORT_DYLIB_PATH) or auto (ort when its library loads,
    /// else tract)
    #[arg(long, env = "AIDOS_EDGE_RUNTIME", default_value = "auto")]
    pub runtime: String,
    /// How often to sync with the control plane, in milliseconds
    #[arg(long, env = "AIDOS_EDGE_SYNC_MS", default_value_t = 1000)]
    pub sync_ms: u64,
    /// Health-check tolerance, relative: |out - expected| <= tol * (1 + |expected|)
    #[arg(long, env = "AIDOS_EDGE_TOLERANCE", default_value_t = 1e-4)]
    pub tolerance: f32,
    /// The control plane's enrolment token (its --edge-enrollment-token), needed to enrol a new device there
    #[arg(long, env = "AIDOS_EDGE_ENROLLMENT_TOKEN", default_value = "", hide_env_values = true)]
    pub enrollment_token: String,
    /// Keep resident the pages that start-up and model loading touched (by default the agent releases its clean
    /// code and read-only data pages after loading a model, so that resident memory counts what serving uses)
    #[arg(long, env = "AIDOS_EDGE_KEEP_STARTUP_PAGES")]
    pub keep_startup_pages: bool,
    /// Write `{"http": ADDR}` here once serving
    #[arg(long, env = "AIDOS_EDGE_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// The cluster CA's certificate (ca.pem from `aidos cert init`): reach a control plane that serves TLS,
    /// verifying it against this CA
    #[arg(long, env = "AIDOS_EDGE_SERVER_CA")]
    pub server_ca: Option<PathBuf>,
    /// A one-time join token (`aidos token create --role worker --join`) that admits this new device; a control
    /// plane that serves TLS needs one (or its --edge-enrollment-token) for a new device
    #[arg(long, env = "AIDOS_EDGE_JOIN_TOKEN", default_value = "", hide_env_values = true)]
    pub join_token: String,
    /// The project this device belongs to: it runs that project's edge deployments only (default: the join token's
    /// project when it names one, else `default`)
    #[arg(long, env = "AIDOS_EDGE_PROJECT", default_value = "")]
    pub project: String,
}

impl AgentArgs {
    pub fn config(self) -> Result<AgentConfig, String> {
        let mut labels = std::collections::BTreeMap::new();
        for l in &self.labels {
            let (k, v) = l.split_once('=').ok_or_else(|| format!("--labels: `{l}` is not k=v"))?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        let runtime = match self.runtime.as_str() {
            "auto" => match crate::agent::ort_unavailable() {
                None => aidos_runtime::RuntimeKind::Ort,
                Some(why) => {
                    tracing::info!("runtime tract (ort not used: {why})");
                    aidos_runtime::RuntimeKind::Tract
                }
            },
            "ort" => match crate::agent::ort_unavailable() {
                None => aidos_runtime::RuntimeKind::Ort,
                Some(why) => return Err(format!("--runtime ort: {why}")),
            },
            other => other.parse().map_err(|e| format!("--runtime: {e}"))?,
        };
        Ok(AgentConfig {
            servers: self.server,
            device: self.device,
            labels,
            cache_dir: self.cache,
            cache_max_bytes: self.cache_max_bytes,
            listen: self.listen,
            runtime,
            sync_interval: Duration::from_millis(self.sync_ms.max(50)),
            tolerance: self.tolerance,
            keep_startup_pages: self.keep_startup_pages,
            ready_file: self.ready_file,
            enrollment_token: self.enrollment_token,
            join_token: self.join_token,
            project: self.project,
            server_tls: match &self.server_ca {
                Some(p) => Some(aidos_api::tls::ClientTls::load(p).map_err(|e| format!("--server-ca: {e}"))?),
                None => None,
            },
        })
    }
}
