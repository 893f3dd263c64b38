//! The agent's cache directory: what it runs and ran, verified model files, partial downloads and the pinned key.
//!
//! Layout: `state.json` (atomically replaced), `models/<artifact>.onnx` (complete, verified files only),
//! `partial/<artifact>.part` (a download in progress, resumed from its length), `telemetry.jsonl` (see
//! `telemetry`). Invariants: a file under `models/` has been hash- and signature-verified before it was renamed
//! there; `state.json` names only files under `models/`; the current and the previous (last good) model are never
//! evicted. Everything survives a restart, so the agent serves from the cache when the control plane is gone.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::EdgeError;

/// A verified model in the cache and the deployment it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedModel {
    pub deployment: String,
    pub model: String,
    pub version: u32,
    pub artifact: String,
    pub signature_hex: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The control plane's public key, pinned at the first enrolment (hex).
    pub pinned_key_hex: Option<String>,
    /// This device's credential (32 random bytes, hex), made at first start and presented on every call; the
    /// control plane keeps only its hash. It is why `state.json` is written with mode 0600.
    #[serde(default)]
    pub credential_hex: Option<String>,
    pub current: Option<CachedModel>,
    /// The last good model before `current` (what a failed health check rolls back to).
    pub previous: Option<CachedModel>,
    /// Deployments refused or rolled back (artifact + signature), with why: not tried again.
    #[serde(default)]
    pub rejected: std::collections::BTreeMap<String, String>,
    /// On a control plane that serves TLS: the device's certificate and its key (PEM; kept here, beside the
    /// credential, so one atomic write keeps them together), and when it was issued and expires.
    #[serde(default)]
    pub cert: Option<DeviceCert>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// When the agent received it, and how long it lives, both by the agent's own clock (so a device whose clock
    /// is off neither renews at every sync nor waits past expiry). Missing: renewed at once.
    #[serde(default)]
    pub received_at_ms: i64,
    #[serde(default)]
    pub lifetime_ms: i64,
}

impl DeviceCert {
    /// Renewed once two thirds of its life have passed (as cert-manager's default), so a control plane that is
    /// away for a while does not leave the device with an expired one.
    pub fn due(&self, now_ms: i64) -> bool {
        now_ms >= self.received_at_ms + self.lifetime_ms * 2 / 3
    }

    /// Past its life: the control plane's TLS handshake would refuse it, so the agent presents none (and enrols
    /// again with its credential and a new request).
    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.received_at_ms + self.lifetime_ms
    }
}

/// Bytes a download leaves free on the cache's filesystem, for `state.json` and the telemetry buffer: a model that
/// would fill the disk to the last block is refused rather than starving the agent's own bookkeeping.
pub const DISK_HEADROOM: u64 = 1 << 20;

pub struct Cache {
    pub root: PathBuf,
    /// Most bytes `models/` and `partial/` may hold together (0: no limit besides the disk).
    pub max_bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EdgeError + '_ {
    move |e| EdgeError::Cache(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` (mode 0600) through a synced temporary file and a rename: readers see the old or the
/// new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EdgeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

impl Cache {
    pub fn open(root: &Path, max_bytes: u64) -> Result<Cache, EdgeError> {
        for d in ["models", "partial"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        Ok(Cache { root: root.to_path_buf(), max_bytes })
    }

    fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn load_state(&self) -> Result<State, EdgeError> {
        let p = self.state_path();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| EdgeError::Cache(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io(&p)(e)),
        }
    }

    pub fn save_state(&self, s: &State) -> Result<(), EdgeError> {
        write_atomic(&self.state_path(), &serde_json::to_vec_pretty(s).expect("state serializes"))
    }

    pub fn model_path(&self, artifact: &str) -> PathBuf {
        self.root.join("models").join(format!("{artifact}.onnx"))
    }

    pub fn partial_path(&self, artifact: &str) -> PathBuf {
        self.root.join("partial").join(format!("{artifact}.part"))
    }

    /// Bytes held by model files and partial downloads.
    pub fn used_bytes(&self) -> u64 {
        ["models", "partial"]
            .iter()
            .flat_map(|d| std::fs::read_dir(self.root.join(d)).into_iter().flatten().flatten())
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// Bytes the cache's filesystem still gives to an unprivileged writer.
    pub fn disk_available(&self) -> Result<u64, EdgeError> {
        let st =
            rustix::fs::statvfs(&self.root).map_err(|e| EdgeError::Cache(format!("{}: {e}", self.root.display())))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// The error for a disk without `need` more bytes (plus [`DISK_HEADROOM`]).
    pub fn disk_full(&self, need: u64) -> EdgeError {
        EdgeError::DiskFull {
            dir: self.root.display().to_string(),
            need,
            available: self.disk_available().unwrap_or(0),
            headroom: DISK_HEADROOM,
        }
    }

    /// Makes room for `need` more bytes, both under `max_bytes` and on the disk (keeping [`DISK_HEADROOM`] free):
    /// evicts cached models other than `keep` when short; refuses when that is not enough. Nothing kept is touched.
    pub fn reserve(&self, need: u64, keep: &[&str]) -> Result<(), EdgeError> {
        let over_quota = || self.max_bytes > 0 && self.used_bytes() + need > self.max_bytes;
        let short_on_disk = || -> Result<bool, EdgeError> { Ok(self.disk_available()? < need + DISK_HEADROOM) };
        if over_quota() || short_on_disk()? {
            for e in std::fs::read_dir(self.root.join("models")).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !keep.iter().any(|k| name.starts_with(k)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if over_quota() {
            return Err(EdgeError::CacheFull { need, used: self.used_bytes(), max: self.max_bytes });
        }
        if short_on_disk()? {
            return Err(self.disk_full(need));
        }
        Ok(())
    }
}
