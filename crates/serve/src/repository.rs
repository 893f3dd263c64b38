//! The model repository: which model versions this server holds, each behind its own [`Backend`]: a local
//! [`Batcher`] ([`Repository::load`]) or anything else the caller built ([`Repository::load_backend`], e.g. the
//! gateway's remote pools).
//!
//! Versions of a model live side by side; a request without a version goes to the highest loaded version
//! (the default "latest" policy). A [`VersionPolicy`] decides which versions of a model directory are loaded.
//! Loading a version that is already loaded replaces it only after the new one is ready (in-flight requests
//! finish on the old one), so a reload never fails requests.
//!
//! Directory layout (Triton's): `ROOT/<model>/<version>/model.onnx`, optional `ROOT/<model>/config.toml`
//! with `max_batch_size`, `max_queue_delay_us`, `preferred_batch_sizes`, `max_queue_size`, `instances`,
//! `request_timeout_ms`, `runtime` and `version_policy` (`"latest:N"`, `"all"` or `"specific:1,3"`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aidos_runtime::{ModelRuntime, RuntimeKind};

use crate::backend::Backend;
use crate::batcher::Batcher;
use crate::config::BatchConfig;
use crate::error::ServeError;
use crate::metrics::Metrics;

/// Which versions of a model directory are loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    Latest(usize),
    All,
    Specific(Vec<u64>),
}

impl std::str::FromStr for VersionPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("version_policy: `{s}` is not latest:N, all or specific:V,V");
        match s.split_once(':') {
            None if s == "all" => Ok(VersionPolicy::All),
            None if s == "latest" => Ok(VersionPolicy::Latest(1)),
            Some(("latest", n)) => n.parse().ok().filter(|n| *n > 0).map(VersionPolicy::Latest).ok_or_else(bad),
            Some(("specific", v)) => v
                .split(',')
                .map(|x| x.trim().parse::<u64>())
                .collect::<Result<_, _>>()
                .map(VersionPolicy::Specific)
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl VersionPolicy {
    /// The versions to load out of those available (ascending).
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut v = available.to_vec();
        v.sort_unstable();
        match self {
            VersionPolicy::All => v,
            VersionPolicy::Latest(n) => v[v.len().saturating_sub(*n)..].to_vec(),
            VersionPolicy::Specific(want) => v.into_iter().filter(|x| want.contains(x)).collect(),
        }
    }
}

/// One loaded model version.
pub struct LoadedVersion {
    pub name: String,
    pub version: u64,
    pub runtime: RuntimeKind,
    /// Shared so that whoever added it (the gateway) can tell its own entry from a replacement.
    pub backend: Arc<dyn Backend>,
}

/// Thread-safe set of loaded models.
pub struct Repository {
    models: RwLock<BTreeMap<String, BTreeMap<u64, Arc<LoadedVersion>>>>,
    metrics: Arc<Metrics>,
    /// Canary splits by model name: (canary version, percent of the requests that name no version).
    canaries: RwLock<BTreeMap<String, (u64, u32)>>,
    /// Requests that named no version of a model with a canary, counted to split them (see [`takes_canary`]).
    unversioned: std::sync::atomic::AtomicU64,
}

/// Whether the `n`-th request (from 0) goes to a canary taking `percent` of them: exactly `percent` of every 100
/// consecutive requests, spread evenly (request n is the canary's when floor((n+1)·p/100) > floor(n·p/100)).
pub fn takes_canary(n: u64, percent: u32) -> bool {
    let p = u64::from(percent.min(100));
    (n % 100 + 1) * p / 100 > (n % 100) * p / 100
}

/// A model that was in the repository, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: u64,
    pub runtime: &'static str,
}

impl Repository {
    pub fn new(metrics: Arc<Metrics>) -> Repository {
        Repository {
            models: RwLock::new(BTreeMap::new()),
            metrics,
            canaries: RwLock::new(BTreeMap::new()),
            unversioned: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Puts a model version behind a new batcher (replacing the same version if loaded).
    pub fn load(
        &self,
        name: &str,
        version: u64,
        kind: RuntimeKind,
        runtime: Arc<dyn ModelRuntime>,
        cfg: BatchConfig,
    ) -> Result<(), ServeError> {
        validate_name(name)?;
        let metrics = self.metrics.model(name, &version.to_string());
        let batcher = Batcher::start(name, runtime, cfg, metrics)?;
        self.insert(name, version, kind, Arc::new(batcher));
        tracing::info!(model = name, version, runtime = kind.as_str(), "model version loaded");
        Ok(())
    }

    /// Puts a model version in front of any other backend, e.g. remote replicas (replacing the same version if
    /// loaded).
    pub fn load_backend(
        &self,
        name: &str,
        version: u64,
        kind: RuntimeKind,
        backend: Arc<dyn Backend>,
    ) -> Result<(), ServeError> {
        validate_name(name)?;
        self.insert(name, version, kind, backend);
        tracing::info!(model = name, version, "model version added");
        Ok(())
    }

    fn insert(&self, name: &str, version: u64, runtime: RuntimeKind, backend: Arc<dyn Backend>) {
        let v = Arc::new(LoadedVersion { name: name.into(), version, runtime, backend });
        self.models.write().unwrap().entry(name.into()).or_default().insert(version, v);
    }

    /// Every loaded version.
    pub fn all(&self) -> Vec<Arc<LoadedVersion>> {
        self.models.read().unwrap().values().flat_map(|vs| vs.values().cloned()).collect()
    }

    /// Unloads one version, or every version when `version` is `None`. In-flight requests finish.
    pub fn unload(&self, name: &str, version: Option<u64>) -> Result<(), ServeError> {
        let mut models = self.models.write().unwrap();
        let versions = models.get_mut(name).ok_or_else(|| ServeError::ModelNotFound(name.into()))?;
        match version {
            Some(v) => {
                versions
                    .remove(&v)
                    .ok_or_else(|| ServeError::VersionNotFound { model: name.into(), version: v.to_string() })?;
                if versions.is_empty() {
                    models.remove(name);
                }
            }
            None => {
                models.remove(name);
            }
        }
        Ok(())
    }

    /// Sends `percent` of the requests for `name` that name no version to `version` (a canary), the rest to the
    /// highest other version; `None` ends the split.
    pub fn set_canary(&self, name: &str, canary: Option<(u64, u32)>) {
        let mut c = self.canaries.write().unwrap();
        match canary {
            Some(split) => c.insert(name.to_string(), split),
            None => c.remove(name),
        };
    }

    /// The version a request names (`""`: the highest loaded, or, while `name` has a canary split, the canary
    /// for its share of requests and the highest other version for the rest).
    pub fn resolve(&self, name: &str, version: &str) -> Result<Arc<LoadedVersion>, ServeError> {
        let models = self.models.read().unwrap();
        let versions = models.get(name).ok_or_else(|| ServeError::ModelNotFound(name.into()))?;
        let not_found = || ServeError::VersionNotFound { model: name.into(), version: version.into() };
        if version.is_empty() {
            if let Some(&(canary, percent)) = self.canaries.read().unwrap().get(name)
                && versions.contains_key(&canary)
            {
                let n = self.unversioned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let stable = versions.iter().rev().find(|(v, _)| **v != canary).map(|(_, l)| l);
                return match (takes_canary(n, percent), stable) {
                    (false, Some(l)) => Ok(l.clone()),
                    _ => Ok(versions[&canary].clone()),
                };
            }
            return versions.values().next_back().cloned().ok_or_else(not_found);
        }
        let v: u64 = version.parse().map_err(|_| not_found())?;
        versions.get(&v).cloned().ok_or_else(not_found)
    }

    /// One loaded version, by number.
    pub fn get(&self, name: &str, version: u64) -> Option<Arc<LoadedVersion>> {
        self.models.read().unwrap().get(name)?.get(&version).cloned()
    }

    /// Versions loaded for a model (ascending).
    pub fn versions(&self, name: &str) -> Vec<u64> {
        self.models.read().unwrap().get(name).map(|v| v.keys().copied().collect()).unwrap_or_default()
    }

    pub fn index(&self) -> Vec<IndexEntry> {
        let models = self.models.read().unwrap();
        models
            .values()
            .flat_map(|vs| vs.values())
            .map(|v| IndexEntry { name: v.name.clone(), version: v.version, runtime: v.runtime.as_str() })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.models.read().unwrap().is_empty()
    }

    /// Loads every model of a Triton-style directory (see the module docs). Returns what was loaded.
    pub fn load_dir(&self, root: &Path, defaults: &BatchConfig) -> Result<Vec<(String, u64)>, String> {
        let mut loaded = Vec::new();
        let entries = std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
        for e in entries.flatten() {
            if e.path().is_dir() {
                loaded.extend(self.load_model_dir(root, &e.file_name().to_string_lossy(), defaults)?);
            }
        }
        Ok(loaded)
    }

    /// Loads the versions of `ROOT/<name>` its version policy selects; unloads loaded versions it no longer
    /// selects (after the new ones are up).
    pub fn load_model_dir(
        &self,
        root: &Path,
        name: &str,
        defaults: &BatchConfig,
    ) -> Result<Vec<(String, u64)>, String> {
        validate_name(name).map_err(|e| e.to_string())?;
        let dir = root.join(name);
        let (cfg, kind, policy) = dir_config(&dir.join("config.toml"), defaults)?;
        let mut available = Vec::new();
        for v in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten() {
            if let Ok(n) = v.file_name().to_string_lossy().parse::<u64>()
                && v.path().join("model.onnx").is_file()
            {
                available.push(n);
            }
        }
        let selected = policy.select(&available);
        if selected.is_empty() {
            return Err(format!("{}: no <version>/model.onnx selected by policy {policy:?}", dir.display()));
        }
        let mut loaded = Vec::new();
        for v in &selected {
            let file = dir.join(v.to_string()).join("model.onnx");
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let rt = aidos_runtime::load_onnx(kind, &file.display().to_string(), &bytes).map_err(|e| e.to_string())?;
            self.load(name, *v, kind, Arc::from(rt), cfg.clone()).map_err(|e| format!("{name}:{v}: {e}"))?;
            loaded.push((name.to_string(), *v));
        }
        for old in self.versions(name) {
            if !selected.contains(&old) {
                let _ = self.unload(name, Some(old));
            }
        }
        Ok(loaded)
    }
}

fn validate_name(name: &str) -> Result<(), ServeError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(ServeError::InvalidInput(format!("model name `{name}`: use 1-128 of [A-Za-z0-9._-]"))) }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DirConfig {
    max_batch_size: Option<usize>,
    max_queue_delay_us: Option<u64>,
    preferred_batch_sizes: Option<Vec<usize>>,
    max_queue_size: Option<usize>,
    instances: Option<usize>,
    request_timeout_ms: Option<u64>,
    runtime: Option<String>,
    version_policy: Option<String>,
}

fn dir_config(path: &Path, d: &BatchConfig) -> Result<(BatchConfig, RuntimeKind, VersionPolicy), String> {
    let c: DirConfig = match std::fs::read_to_string(path) {
        Ok(s) => toml::from_str(&s).map_err(|e| format!("{}: {e}", path.display()))?,
        Err(_) => DirConfig::default(),
    };
    let cfg = BatchConfig {
        max_batch_size: c.max_batch_size.unwrap_or(d.max_batch_size),
        max_queue_delay: c.max_queue_delay_us.map(Duration::from_micros).unwrap_or(d.max_queue_delay),
        preferred_batch_sizes: c.preferred_batch_sizes.unwrap_or_else(|| d.preferred_batch_sizes.clone()),
        max_queue_size: c.max_queue_size.unwrap_or(d.max_queue_size),
        instances: c.instances.unwrap_or(d.instances),
        request_timeout: c.request_timeout_ms.map(Duration::from_millis).unwrap_or(d.request_timeout),
    };
    cfg.validate().map_err(|e| format!("{}: {e}", path.display()))?;
    let kind = c.runtime.as_deref().unwrap_or("tract").parse().map_err(|e| format!("{}: {e}", path.display()))?;
    let policy =
        c.version_policy.as_deref().unwrap_or("latest:1").parse().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((cfg, kind, policy))
}

#[cfg(test)]
mod tests {
    use super::takes_canary;

    #[test]
    fn a_canary_takes_exactly_its_share_of_every_hundred_requests_spread_out() {
        for p in [0, 1, 3, 10, 33, 50, 99, 100] {
            let taken: Vec<u64> = (0..1000).filter(|n| takes_canary(*n, p)).collect();
            assert_eq!(taken.len() as u32, p * 10, "{p}%");
            if p == 10 {
                // One in every ten, not ten in a row.
                assert!(taken.windows(2).all(|w| w[1] - w[0] == 10), "{taken:?}");
            }
        }
    }
}
