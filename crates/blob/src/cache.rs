//! [`CachedStore`]: a bounded, content-addressed local cache in front of another store (a worker's view of the
//! cluster's blobs: the blob service or S3 behind, a local directory in front).
//!
//! - A miss is filled from the store behind, whose `get` verified the hash; a cached blob found corrupt is
//!   dropped and filled again. Hits refresh the file's modification time, and after every fill or put the cache
//!   evicts the least recently used blobs until it holds at most `max_bytes`.
//! - A blob larger than the whole cache is served without being cached; a cache that cannot be written (disk full,
//!   say) is skipped with a warning: the blob is still returned, and a task never fails because of its cache.
//! - `put` writes through: the blob is durable behind before it is cached, so a worker's loss loses nothing.
//! - Eviction deletes files that a task may still have mapped: on Linux a mapping outlives its file's name.
//! - Garbage collection (`touch`, `list`, `delete`, `delete_if_older`) is the store behind's: a delete there also
//!   drops the cached copy. The cache's own modified times are its LRU clock, never the collector's.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::{BlobBytes, BlobError, BlobId, BlobInfo, BlobStore, ByteStream, LocalDirStore};

pub struct CachedStore {
    local: LocalDirStore,
    behind: Arc<dyn BlobStore>,
    max_bytes: u64,
    /// Serialises evictions (fills may run concurrently).
    evicting: Mutex<()>,
}

impl CachedStore {
    pub fn new(local: LocalDirStore, behind: Arc<dyn BlobStore>, max_bytes: u64) -> CachedStore {
        CachedStore { local, behind, max_bytes, evicting: Mutex::new(()) }
    }

    /// The cache's directory.
    pub fn local(&self) -> &LocalDirStore {
        &self.local
    }

    /// Caches `data`, whose id the store behind computed or verified.
    fn keep(&self, id: &BlobId, data: &[u8]) {
        if data.len() as u64 > self.max_bytes {
            return;
        }
        match self.local.put_as(id, data) {
            Ok(_) => {
                if let Err(e) = self.evict() {
                    eprintln!("aidos: blob cache {}: eviction failed: {e}", self.local.root().display());
                }
            }
            Err(e) => eprintln!("aidos: blob cache {}: not caching: {e}", self.local.root().display()),
        }
    }

    /// Deletes the least recently used blobs until the cache holds at most `max_bytes`.
    pub fn evict(&self) -> Result<u64, BlobError> {
        let _one = self.evicting.lock().unwrap_or_else(|p| p.into_inner());
        let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        let root = self.local.root();
        let io = |p: &std::path::Path| {
            let p = p.to_path_buf();
            move |source| BlobError::Io { path: p, source }
        };
        for shard in std::fs::read_dir(root).map_err(io(root))?.flatten() {
            let Ok(entries) = std::fs::read_dir(shard.path()) else { continue };
            for e in entries.flatten() {
                let name = e.file_name();
                if name.to_str().is_none_or(|n| n.starts_with('.')) {
                    continue; // temp files of writes in progress
                }
                if let Ok(m) = e.metadata() {
                    files.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), e.path()));
                }
            }
        }
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        let mut freed = 0;
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                freed += len;
            }
        }
        Ok(freed)
    }
}

impl BlobStore for CachedStore {
    fn put(&self, data: &[u8]) -> Result<BlobId, BlobError> {
        let id = self.behind.put(data)?;
        self.keep(&id, data);
        Ok(id)
    }

    fn get(&self, id: &BlobId) -> Result<BlobBytes, BlobError> {
        match self.local.get(id) {
            Ok(b) => {
                // A hit is "recently used" for eviction.
                if let Ok(f) = std::fs::File::options().append(true).open(self.local.path(id)) {
                    let _ = f.set_modified(SystemTime::now());
                }
                return Ok(b);
            }
            Err(BlobError::NotFound(_)) => {}
            Err(BlobError::Corrupt { .. }) => {
                let _ = std::fs::remove_file(self.local.path(id));
            }
            Err(e) => return Err(e),
        }
        let bytes = self.behind.get(id)?;
        self.keep(id, &bytes);
        Ok(bytes)
    }

    fn contains(&self, id: &BlobId) -> Result<bool, BlobError> {
        Ok(self.local.contains(id)? || self.behind.contains(id)?)
    }

    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<(Vec<u8>, u64), BlobError> {
        if self.local.contains(id)? {
            return self.local.read_range(id, offset, len);
        }
        self.behind.read_range(id, offset, len)
    }

    fn read_stream(&self, id: &BlobId, offset: u64, piece: usize) -> Result<ByteStream<'_>, BlobError> {
        if self.local.contains(id)? {
            return self.local.read_stream(id, offset, piece);
        }
        self.behind.read_stream(id, offset, piece)
    }

    fn touch(&self, id: &BlobId) -> Result<bool, BlobError> {
        self.behind.touch(id)
    }

    fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        self.behind.list()
    }

    fn delete(&self, id: &BlobId) -> Result<(), BlobError> {
        self.behind.delete(id)?;
        self.local.delete(id)
    }

    fn delete_if_older(&self, id: &BlobId, cutoff: SystemTime) -> Result<bool, BlobError> {
        let deleted = self.behind.delete_if_older(id, cutoff)?;
        if deleted {
            self.local.delete(id)?;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_verifies_and_evicts_the_least_recently_used() {
        let d = tempfile::tempdir().unwrap();
        let behind: Arc<dyn BlobStore> = Arc::new(LocalDirStore::open(d.path().join("behind")).unwrap());
        let ids: Vec<BlobId> = (0..4u8).map(|i| behind.put(&[i; 100]).unwrap()).collect();
        let cache = CachedStore::new(LocalDirStore::open(d.path().join("cache")).unwrap(), behind.clone(), 250);
        for id in &ids[..2] {
            assert_eq!(cache.get(id).unwrap().len(), 100);
        }
        assert!(cache.local().contains(&ids[0]).unwrap() && cache.local().contains(&ids[1]).unwrap());
        // Touch 0, then fill 2: 1 is the least recently used and goes.
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.get(&ids[0]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.get(&ids[2]).unwrap();
        assert!(cache.local().contains(&ids[0]).unwrap());
        assert!(!cache.local().contains(&ids[1]).unwrap(), "the least recently used blob is evicted");
        assert!(cache.local().contains(&ids[2]).unwrap());
        // A corrupted cached copy is dropped and filled again.
        std::fs::write(cache.local().path(&ids[0]), [9u8; 100]).unwrap();
        assert_eq!(&*cache.get(&ids[0]).unwrap(), &[0u8; 100][..]);
        // Writes go through to the store behind; a blob bigger than the cache is not cached.
        let big = cache.put(&[7u8; 1000]).unwrap();
        assert!(behind.contains(&big).unwrap() && !cache.local().contains(&big).unwrap());
        assert_eq!(cache.get(&big).unwrap().len(), 1000);
        // Missing everywhere: NotFound.
        assert!(matches!(cache.get(&BlobId::of(b"none")), Err(BlobError::NotFound(_))));
        // Collection is the store behind's; a delete drops the cached copy too.
        assert_eq!(cache.list().unwrap(), behind.list().unwrap());
        assert!(cache.touch(&ids[0]).unwrap());
        cache.delete(&ids[0]).unwrap();
        assert!(!behind.contains(&ids[0]).unwrap() && !cache.local().contains(&ids[0]).unwrap());
        assert!(matches!(cache.get(&ids[0]), Err(BlobError::NotFound(_))));
        let future = SystemTime::now() + std::time::Duration::from_secs(60);
        assert!(cache.delete_if_older(&ids[2], future).unwrap());
        assert!(!behind.contains(&ids[2]).unwrap() && !cache.local().contains(&ids[2]).unwrap());
    }
}
