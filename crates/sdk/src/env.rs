//! The task environment contract (see the crate docs for the table) and dataset references.

use std::path::PathBuf;
use std::sync::Arc;

use aidos_blob::{BlobError, BlobStore, S3Config};

use aidos_api::contract::task_env;
use aidos_api::v1::AttemptRef;

use crate::error::{Result, SdkError};

pub const ENV_JOB_ID: &str = task_env::JOB_ID;
pub const ENV_RANK: &str = task_env::RANK;
pub const ENV_WORLD_SIZE: &str = task_env::WORLD_SIZE;
pub const ENV_ATTEMPT: &str = task_env::ATTEMPT;
pub const ENV_FENCING_TOKEN: &str = task_env::FENCING_TOKEN;
pub const ENV_WORKER_ID: &str = task_env::WORKER_ID;
pub const ENV_SCHEDULER: &str = task_env::SCHEDULER;
pub const ENV_WORK_DIR: &str = task_env::WORK_DIR;
pub const ENV_ADVERTISE_HOST: &str = task_env::ADVERTISE_HOST;
pub const ENV_BLOB_DIR: &str = task_env::BLOB_DIR;
pub const ENV_BLOB_CACHE_MAX_BYTES: &str = task_env::BLOB_CACHE_MAX_BYTES;
pub const ENV_S3_BUCKET: &str = aidos_blob::s3::ENV_BUCKET;

/// The parsed task environment: who this process is (job, rank, attempt, fencing token, worker) and where the
/// cluster is (schedulers, blob store, working directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEnv {
    pub job_id: String,
    pub rank: u32,
    pub world_size: u32,
    pub attempt: u32,
    pub fencing_token: u64,
    pub worker_id: String,
    /// Scheduler addresses (`host:port` or `http://host:port`), any node of the cluster.
    pub schedulers: Vec<String>,
    pub work_dir: PathBuf,
    /// Root of the local-directory blob store shared with the cluster or, with `blob_cache_max_bytes`, of this
    /// worker's cache in front of the cluster's blob service.
    pub blob_dir: PathBuf,
    /// `Some(bytes)`: `blob_dir` is a cache of at most this size, and blobs come from `s3` when set, else from the
    /// scheduler's blob service.
    pub blob_cache_max_bytes: Option<u64>,
    /// The S3-compatible bucket behind the cache (`AIDOS_S3_BUCKET` and the `AWS_*` variables; see
    /// [`aidos_blob::S3Config::from_lookup`]).
    pub s3: Option<S3Config>,
    /// Host other machines reach this task at (`AIDOS_ADVERTISE_HOST`; default `127.0.0.1`): a data-parallel
    /// rank accepts its ring connection there.
    pub advertise_host: String,
    /// The job's token (`AIDOS_TOKEN`, set by the scheduler for every task; valid while the job runs) and project.
    pub credentials: aidos_api::auth::Credentials,
}

impl TaskEnv {
    /// The cluster's blob store as this task sees it: the directory shared with the cluster, or this worker's
    /// bounded cache in front of the S3 bucket or the scheduler's blob service (when `blob_cache_max_bytes` is set).
    pub fn open_blob_store(&self) -> std::result::Result<Arc<dyn BlobStore>, BlobError> {
        aidos_blob::open_worker_store(
            &self.blob_dir,
            self.blob_cache_max_bytes,
            self.s3.as_ref(),
            &self.schedulers,
            &self.credentials,
        )
    }

    /// Reads the contract from the process environment.
    pub fn from_env() -> Result<TaskEnv> {
        TaskEnv::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the contract through `get` (a variable's value, None when unset): testable without touching the
    /// process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<TaskEnv> {
        let req = |var: &'static str| -> Result<String> {
            match get(var) {
                None => Err(SdkError::MissingEnv { var }),
                Some(v) if v.trim().is_empty() => Err(SdkError::BadEnv { var, value: v, problem: "is empty".into() }),
                Some(v) => Ok(v.trim().to_string()),
            }
        };
        fn num<T: std::str::FromStr>(var: &'static str, v: String) -> Result<T>
        where
            T::Err: std::fmt::Display,
        {
            v.parse::<T>().map_err(|e| SdkError::BadEnv {
                var,
                value: v.clone(),
                problem: format!("not a number: {e}"),
            })
        }
        let job_id = req(ENV_JOB_ID)?;
        let rank: u32 = num(ENV_RANK, req(ENV_RANK)?)?;
        let world_size: u32 = num(ENV_WORLD_SIZE, req(ENV_WORLD_SIZE)?)?;
        if world_size == 0 {
            return Err(SdkError::BadEnv { var: ENV_WORLD_SIZE, value: "0".into(), problem: "must be >= 1".into() });
        }
        if rank >= world_size {
            return Err(SdkError::BadEnv {
                var: ENV_RANK,
                value: rank.to_string(),
                problem: format!("must be below {ENV_WORLD_SIZE} = {world_size}"),
            });
        }
        let attempt: u32 = num(ENV_ATTEMPT, req(ENV_ATTEMPT)?)?;
        if attempt == 0 {
            return Err(SdkError::BadEnv {
                var: ENV_ATTEMPT,
                value: "0".into(),
                problem: "attempts are 1-based".into(),
            });
        }
        let fencing_token: u64 = num(ENV_FENCING_TOKEN, req(ENV_FENCING_TOKEN)?)?;
        let worker_id = req(ENV_WORKER_ID)?;
        let raw = req(ENV_SCHEDULER)?;
        let schedulers: Vec<String> =
            raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        if schedulers.is_empty() {
            return Err(SdkError::BadEnv { var: ENV_SCHEDULER, value: raw, problem: "names no address".into() });
        }
        if let Some(bad) = schedulers.iter().find(|s| s.contains(char::is_whitespace)) {
            return Err(SdkError::BadEnv {
                var: ENV_SCHEDULER,
                value: raw.clone(),
                problem: format!("address {bad:?} contains whitespace (expected comma-separated host:port)"),
            });
        }
        let work_dir = PathBuf::from(req(ENV_WORK_DIR)?);
        let blob_dir = PathBuf::from(req(ENV_BLOB_DIR)?);
        let blob_cache_max_bytes = match get(ENV_BLOB_CACHE_MAX_BYTES).filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| SdkError::BadEnv {
                var: ENV_BLOB_CACHE_MAX_BYTES,
                value: v.clone(),
                problem: "not a byte count".into(),
            })?),
        };
        // Only a cache has a store behind it; a shared directory is the store itself.
        let s3 = match blob_cache_max_bytes {
            Some(_) => S3Config::from_lookup(&get).map_err(|e| SdkError::BadEnv {
                var: ENV_S3_BUCKET,
                value: String::new(),
                problem: e.to_string(),
            })?,
            None => None,
        };
        let advertise_host = get(ENV_ADVERTISE_HOST)
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "127.0.0.1".to_string());
        let tls = aidos_api::tls::ClientTls::from_lookup(&get).map_err(|e| SdkError::BadEnv {
            var: aidos_api::tls::CA_ENV,
            value: get(aidos_api::tls::CA_ENV).unwrap_or_default(),
            problem: e.to_string(),
        })?;
        let credentials = aidos_api::auth::Credentials::from_lookup(&get).with_tls(tls);
        Ok(TaskEnv {
            credentials,
            advertise_host,
            s3,
            job_id,
            rank,
            world_size,
            attempt,
            fencing_token,
            worker_id,
            schedulers,
            work_dir,
            blob_dir,
            blob_cache_max_bytes,
        })
    }

    /// This attempt, as the scheduler names it in fenced reports.
    pub fn attempt_ref(&self) -> AttemptRef {
        AttemptRef {
            job_id: self.job_id.clone(),
            rank: self.rank,
            attempt: self.attempt,
            fencing_token: self.fencing_token,
        }
    }

    /// The run this attempt writes: `<job_id>.<attempt>`.
    pub fn run_id(&self) -> String {
        format!("{}.{}", self.job_id, self.attempt)
    }
}

/// Whether `s` is a valid dataset/model name: 1-64 of `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A parsed dataset reference: `NAME` (version 0: the latest) or `NAME@vN` (N >= 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRef {
    pub name: String,
    /// 0: the latest version.
    pub version: u32,
}

impl DatasetRef {
    pub fn parse(s: &str) -> Result<DatasetRef> {
        let bad = |problem: &str| SdkError::BadDatasetRef { reference: s.to_string(), problem: problem.to_string() };
        let t = s.trim();
        let (name, version) = match t.split_once('@') {
            None => (t, 0),
            Some((name, v)) => {
                let digits = v.strip_prefix('v').ok_or_else(|| bad("the version must be written vN (e.g. @v3)"))?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("the version must be written vN with N a positive number"));
                }
                let n: u32 = digits.parse().map_err(|_| bad("the version number is too large"))?;
                if n == 0 {
                    return Err(bad("versions start at v1"));
                }
                (name, n)
            }
        };
        if name.is_empty() {
            return Err(bad("the name is empty"));
        }
        if !valid_name(name) {
            return Err(bad("the name must be 1-64 of A-Z a-z 0-9 . _ - and not start with ."));
        }
        Ok(DatasetRef { name: name.to_string(), version })
    }
}

impl std::fmt::Display for DatasetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.version == 0 {
            write!(f, "{} (latest)", self.name)
        } else {
            write!(f, "{}@v{}", self.name, self.version)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn full() -> HashMap<&'static str, String> {
        [
            (ENV_JOB_ID, "job-3"),
            (ENV_RANK, "1"),
            (ENV_WORLD_SIZE, "2"),
            (ENV_ATTEMPT, "4"),
            (ENV_FENCING_TOKEN, "77"),
            (ENV_WORKER_ID, "w-1"),
            (ENV_SCHEDULER, "127.0.0.1:7070, http://10.0.0.2:7070,"),
            (ENV_WORK_DIR, "/tmp/wd"),
            (ENV_BLOB_DIR, "/tmp/blobs"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect()
    }

    fn parse(m: &HashMap<&'static str, String>) -> Result<TaskEnv> {
        TaskEnv::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn parses_the_full_contract() {
        let e = parse(&full()).unwrap();
        assert_eq!(e.job_id, "job-3");
        assert_eq!((e.rank, e.world_size, e.attempt, e.fencing_token), (1, 2, 4, 77));
        assert_eq!(e.worker_id, "w-1");
        assert_eq!(e.schedulers, vec!["127.0.0.1:7070".to_string(), "http://10.0.0.2:7070".to_string()]);
        assert_eq!(e.work_dir, PathBuf::from("/tmp/wd"));
        assert_eq!(e.blob_dir, PathBuf::from("/tmp/blobs"));
        assert_eq!(e.run_id(), "job-3.4");
        let a = e.attempt_ref();
        assert_eq!((a.job_id.as_str(), a.rank, a.attempt, a.fencing_token), ("job-3", 1, 4, 77));
    }

    #[test]
    fn missing_variables_are_named() {
        for var in [
            ENV_JOB_ID,
            ENV_RANK,
            ENV_WORLD_SIZE,
            ENV_ATTEMPT,
            ENV_FENCING_TOKEN,
            ENV_WORKER_ID,
            ENV_SCHEDULER,
            ENV_WORK_DIR,
            ENV_BLOB_DIR,
        ] {
            let mut m = full();
            m.remove(var);
            let err = parse(&m).unwrap_err();
            assert!(matches!(err, SdkError::MissingEnv { var: v } if v == var), "{var}: {err}");
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn malformed_variables_are_named() {
        let cases: &[(&str, &str)] = &[
            (ENV_RANK, "one"),
            (ENV_RANK, "2"), // >= world size
            (ENV_WORLD_SIZE, "0"),
            (ENV_ATTEMPT, "0"),
            (ENV_ATTEMPT, "-1"),
            (ENV_FENCING_TOKEN, "x"),
            (ENV_SCHEDULER, " , "),
            (ENV_SCHEDULER, "a:1,b c:2"),
            (ENV_JOB_ID, "  "),
            (ENV_BLOB_DIR, ""),
        ];
        for (var, value) in cases {
            let mut m = full();
            m.insert(var, value.to_string());
            let err = parse(&m).unwrap_err();
            assert!(matches!(&err, SdkError::BadEnv { var: v, .. } if v == var), "{var}={value}: {err}");
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn dataset_refs() {
        assert_eq!(DatasetRef::parse("mnist@v3").unwrap(), DatasetRef { name: "mnist".into(), version: 3 });
        assert_eq!(DatasetRef::parse("mnist").unwrap(), DatasetRef { name: "mnist".into(), version: 0 });
        assert_eq!(DatasetRef::parse("my.data_set-2@v12").unwrap().version, 12);
        assert_eq!(DatasetRef::parse("mnist@v3").unwrap().to_string(), "mnist@v3");
        for bad in [
            "",
            "@v3",
            "mnist@",
            "mnist@v",
            "mnist@3",
            "mnist@v0",
            "mnist@vx",
            "mnist@v-1",
            "mnist@v3@v4",
            "mn ist",
            ".hidden",
            "a/b@v1",
            "mnist@v99999999999",
        ] {
            let err = DatasetRef::parse(bad).unwrap_err();
            assert!(matches!(&err, SdkError::BadDatasetRef { reference, .. } if reference == bad), "{bad:?}: {err}");
        }
        let long = "x".repeat(65);
        assert!(DatasetRef::parse(&long).is_err());
    }
}
