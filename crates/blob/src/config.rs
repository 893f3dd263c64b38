//! Where a node keeps the cluster's blobs: a plain description ([`StoreConfig`]) that the binary fills from flags
//! and every component opens the same way ([`StoreConfig::open`]), plus the one rule about which descriptions a
//! multi-node cluster may use ([`StoreConfig::check_cluster`]).
//!
//! The rule: every scheduler node serves every blob (edge downloads, the blob service, GC), so in a cluster of more
//! than one node each node's store must name the *same* bytes. An S3 bucket does; a directory does only when the
//! operator declares it shared (NFS, a cluster filesystem). Private local directories would split the cluster's
//! blobs between machines (a push reaches one node, a download asks another), so such a cluster refuses to start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::{BlobError, BlobStore, LocalDirStore, S3Config, S3Store};

/// The backing store of a scheduler node, or the direct store of a worker.
// A few hundred bytes, built once per process from flags: boxing the S3 variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A local directory. `shared`: the operator declares that every node mounts the same directory.
    Dir { path: PathBuf, shared: bool },
    /// An S3-compatible bucket (shared by construction).
    S3(S3Config),
}

impl StoreConfig {
    /// Opens the store (no network request for S3: problems show on first use, each named).
    pub fn open(&self) -> Result<Arc<dyn BlobStore>, BlobError> {
        Ok(match self {
            StoreConfig::Dir { path, .. } => Arc::new(LocalDirStore::open(path)?),
            StoreConfig::S3(c) => Arc::new(S3Store::open(c.clone())?),
        })
    }

    /// Whether every node that is given this config sees the same blobs.
    pub fn is_shared(&self) -> bool {
        match self {
            StoreConfig::Dir { shared, .. } => *shared,
            StoreConfig::S3(_) => true,
        }
    }

    /// For messages: `directory /x (private)`, `s3://bucket/prefix at endpoint`.
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Dir { path, shared } => {
                format!("directory {} ({})", path.display(), if *shared { "declared shared" } else { "private" })
            }
            StoreConfig::S3(c) => c.describe(),
        }
    }

    /// The rule of the module doc, as a pure check: `members` are the cluster's voters (id -> address), empty or
    /// one for a single node. Err says what is wrong and what to give instead.
    pub fn check_cluster(&self, members: &BTreeMap<u64, String>) -> Result<(), String> {
        if members.len() <= 1 || self.is_shared() {
            return Ok(());
        }
        Err(format!(
            "a cluster of {} scheduler nodes cannot keep blobs in a private local directory ({}): a dataset pushed \
             through one node would be missing on the others. Give every node the same S3-compatible bucket \
             (--s3-bucket, --s3-endpoint, credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), or a \
             directory every node mounts (--blob-dir on NFS) together with --blob-dir-shared",
            members.len(),
            self.describe()
        ))
    }
}

/// The cluster's blob store as a worker and its tasks see it: `dir` itself when it is a directory shared with the
/// cluster (`cache_max_bytes` None), else a bounded cache in `dir` in front of `s3` when given, or else of the
/// scheduler's blob service at `schedulers` (presenting `credentials`). Blocking, like the stores: open and use it from a blocking context.
pub fn open_worker_store(
    dir: &std::path::Path,
    cache_max_bytes: Option<u64>,
    s3: Option<&S3Config>,
    schedulers: &[String],
    credentials: &aidos_api::auth::Credentials,
) -> Result<Arc<dyn BlobStore>, BlobError> {
    let local = LocalDirStore::open(dir)?;
    Ok(match cache_max_bytes {
        None => Arc::new(local),
        Some(max) => {
            let behind: Arc<dyn BlobStore> = match s3 {
                Some(c) => Arc::new(S3Store::open(c.clone())?),
                None => Arc::new(crate::ServiceStore::connect(schedulers, credentials.clone())?),
            };
            Arc::new(crate::CachedStore::new(local, behind, max))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: u64) -> BTreeMap<u64, String> {
        (1..=n).map(|i| (i, format!("10.0.0.{i}:7070"))).collect()
    }

    #[test]
    fn only_private_dirs_in_multi_node_clusters_are_refused() {
        let private = StoreConfig::Dir { path: "/var/aidos/blobs".into(), shared: false };
        let shared = StoreConfig::Dir { path: "/mnt/nfs/blobs".into(), shared: true };
        let s3 = StoreConfig::S3(S3Config::new("aidos"));
        for one in [members(0), members(1)] {
            assert!(private.check_cluster(&one).is_ok());
        }
        let e = private.check_cluster(&members(3)).unwrap_err();
        assert!(e.contains("3 scheduler nodes") && e.contains("/var/aidos/blobs") && e.contains("--s3-bucket"), "{e}");
        assert!(e.contains("--blob-dir-shared"), "{e}");
        assert!(shared.check_cluster(&members(3)).is_ok());
        assert!(s3.check_cluster(&members(3)).is_ok());
    }
}
