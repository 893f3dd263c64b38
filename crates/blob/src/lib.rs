//! The blob store contract: immutable, content-addressed blobs named by the BLAKE3 hash of their bytes.
//!
//! Implementations: [`LocalDirStore`] (a directory shared by the processes of one machine: the embedded default and
//! single-machine clusters) and [`S3Store`] (an S3-compatible bucket on the `object_store` crate: AWS S3 or a
//! self-hosted store such as SeaweedFS, path-style over plain HTTP where asked; configured by [`S3Config`], from
//! flags or the usual AWS environment variables); nothing outside this crate knows where bytes live.
//! `tests/conformance.rs` runs one suite of behaviours against every implementation.
//!
//! Invariants: a blob is visible under its id only once it is completely written and fsynced (write to a temp
//! file, fsync, rename, fsync the directory), so a crash never leaves a half-written blob under a valid name;
//! reads verify the hash, so a corrupted blob is reported instead of returned.
//!
//! # Garbage collection and the refresh rule
//! The control plane deletes blobs that nothing references (`aidos_scheduler`'s `gc` module) with
//! [`BlobStore::list`] and [`BlobStore::delete_if_older`], and only blobs whose modified time is older than a grace
//! period. A blob's modified time is its last *put* (or [`BlobStore::touch`]): a put of bytes the store already
//! holds is not a no-op, it refreshes the modified time, so re-pushing an old, unreferenced blob cannot be
//! collected before it is referenced. Stores that cannot touch in place refresh at most every `refresh_after`
//! ([`S3Config::refresh_after`]; 0 for [`LocalDirStore`]), which gives the rule every writer follows:
//!
//! **a blob must be referenced (committed in a manifest, checkpoint, model version, ...) within
//! `grace - refresh_after` of its last put.**

mod blocking;
pub mod cache;
pub mod config;
pub use config::{StoreConfig, open_worker_store};
pub mod service;
pub mod upload;

pub use cache::CachedStore;
pub use service::ServiceStore;

pub mod s3;
pub use s3::{S3Config, S3Store};

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use bytes::Bytes;

/// A blob's name: the lowercase hex BLAKE3 hash of its bytes (64 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(String);

impl BlobId {
    /// The id of these bytes.
    pub fn of(data: &[u8]) -> BlobId {
        BlobId::from_hash(blake3::hash(data))
    }

    /// The id of the bytes that hashed to `hash` (hashed in pieces: [`upload::Upload`]).
    pub fn from_hash(hash: blake3::Hash) -> BlobId {
        BlobId(hash.to_hex().to_string())
    }

    /// Parses a hex id, refusing anything that is not 64 lowercase hex characters (ids name files).
    pub fn parse(s: &str) -> Result<BlobId, BlobError> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(BlobId(s.to_string()))
        } else {
            Err(BlobError::BadId(s.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(BlobId),
    #[error("blob {id} is corrupt: its content hashes to {actual}")]
    Corrupt { id: BlobId, actual: BlobId },
    #[error("not a blob id: {0:?} (expected 64 hex characters)")]
    BadId(String),
    #[error("blob store io at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A store reached over the network (the blob service, S3) failed; `store` names it, `message` the problem.
    #[error("blob store {store}: {message}")]
    Remote { store: String, message: String },
}

/// Bytes of a blob: memory-mapped where the store can, owned otherwise.
pub enum BlobBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for BlobBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            BlobBytes::Mapped(m) => m,
            BlobBytes::Owned(v) => v,
        }
    }
}

/// The contract every blob store meets. Blocking: call from a blocking context (`spawn_blocking`) in async code.
pub trait BlobStore: Send + Sync {
    /// Stores `data` (idempotent: the same bytes give the same id) and returns its id once durable.
    fn put(&self, data: &[u8]) -> Result<BlobId, BlobError>;
    /// Stores blob `id` of `size` bytes from `pieces` as they come, without holding it whole (the blob service's
    /// uploads), and returns once it is durable. The blob is published only when `pieces` ends without an error;
    /// on an error the store publishes nothing, cleans up what it wrote and returns that error.
    ///
    /// The store trusts the bytes: `pieces` verifies as it goes that they are `size` bytes hashing to `id`, and
    /// yields an error instead of its end when they are not ([`upload::Upload`]). The default collects the pieces
    /// and [`BlobStore::put`]s them, checking the id that computes.
    fn put_stream(&self, id: &BlobId, size: u64, pieces: Pieces<'_>) -> Result<(), BlobError> {
        let mut data = Vec::with_capacity(size.min(STREAM_RESERVE) as usize);
        for p in pieces {
            data.extend_from_slice(&p?);
        }
        let actual = self.put(&data)?;
        if &actual != id {
            return Err(BlobError::Corrupt { id: id.clone(), actual });
        }
        Ok(())
    }
    /// The blob's bytes, verified against its id.
    fn get(&self, id: &BlobId) -> Result<BlobBytes, BlobError>;
    fn contains(&self, id: &BlobId) -> Result<bool, BlobError>;
    /// Up to `len` bytes of the blob from `offset`, and its total size. *Not* verified against the id (that needs
    /// the whole content): for chunked transfers whose receiver verifies what it assembled (edge downloads).
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<(Vec<u8>, u64), BlobError>;
    /// The blob's bytes from `offset` to its end, in pieces of `piece` bytes (the last may be shorter; none when
    /// `offset` is at or past the end), with the blob's total size; a missing blob is an error of this call, not
    /// of the pieces. *Not* verified against the id, as [`BlobStore::read_range`]: for the blob service's
    /// downloads, whose client verifies. Stores that can answer it with one request override it (one streamed GET
    /// on S3); the default chains [`BlobStore::read_range`] calls of `piece` bytes. Dropping the stream stops it.
    fn read_stream(&self, id: &BlobId, offset: u64, piece: usize) -> Result<ByteStream<'_>, BlobError> {
        read_stream_by_ranges(self, id, offset, piece)
    }
    /// Refreshes the blob's modified time as a put of its bytes would (see the module docs' refresh rule). `true`:
    /// the store holds the blob and it is refreshed; `false`: it does not hold it, or cannot refresh it without its
    /// bytes — put them.
    fn touch(&self, id: &BlobId) -> Result<bool, BlobError>;
    /// Every blob the store holds, for the garbage collector. What is not a blob under the store's root (temp
    /// files of writes in progress, foreign keys) is left out.
    fn list(&self) -> Result<Vec<BlobInfo>, BlobError>;
    /// Deletes the blob. Deleting a blob the store does not hold is Ok.
    fn delete(&self, id: &BlobId) -> Result<(), BlobError>;
    /// Deletes the blob only if its modified time (last put or touch) is before `cutoff`; `true` when it was
    /// deleted. The collector's delete: each store documents how it orders against a concurrent put.
    fn delete_if_older(&self, id: &BlobId, cutoff: SystemTime) -> Result<bool, BlobError>;
}

/// The bytes of a streamed put, in pieces of any size ([`BlobStore::put_stream`]).
pub type Pieces<'a> = &'a mut dyn Iterator<Item = Result<Bytes, BlobError>>;

/// [`BlobStore::read_stream`] as a chain of [`BlobStore::read_range`] calls of `piece` bytes (its default).
fn read_stream_by_ranges<'a, S: BlobStore + ?Sized>(
    store: &'a S,
    id: &BlobId,
    offset: u64,
    piece: usize,
) -> Result<ByteStream<'a>, BlobError> {
    let piece = piece.max(1) as u64;
    let (first, total) = store.read_range(id, offset, piece)?;
    let mut next = offset.saturating_add(first.len() as u64);
    let mut first = (!first.is_empty()).then(|| Bytes::from(first));
    let id = id.clone();
    let pieces = std::iter::from_fn(move || {
        if let Some(b) = first.take() {
            return Some(Ok(b));
        }
        if next >= total {
            return None;
        }
        Some(match store.read_range(&id, next, piece) {
            // The store has less than it said: stop short (the receiver's hash check fails).
            Ok((data, _)) if data.is_empty() => return None,
            Ok((data, _)) => {
                next += data.len() as u64;
                Ok(Bytes::from(data))
            }
            Err(e) => {
                next = total;
                Err(e)
            }
        })
    });
    Ok(ByteStream { total, pieces: Box::new(pieces) })
}

/// A blob's bytes as they are read ([`BlobStore::read_stream`]).
pub struct ByteStream<'a> {
    /// The blob's size (not what is left after the offset).
    pub total: u64,
    /// The bytes in order; an error ends them.
    pub pieces: Box<dyn Iterator<Item = Result<Bytes, BlobError>> + Send + 'a>,
}

/// Most bytes the default [`BlobStore::put_stream`] reserves up front (an announced size is a claim, not a fact).
const STREAM_RESERVE: u64 = 64 << 20;

/// One stored blob, as [`BlobStore::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub id: BlobId,
    pub size: u64,
    /// The blob's last put or touch (the store's clock: an S3 server's, a file system's).
    pub modified: SystemTime,
}

/// A shared or borrowed store is a store (callers hold `Arc<dyn BlobStore>` and pass `&store` where `&dyn BlobStore`
/// is expected).
macro_rules! forward_store {
    ($($t:ty),*) => {$(
        impl<T: BlobStore + ?Sized> BlobStore for $t {
            fn put(&self, data: &[u8]) -> Result<BlobId, BlobError> {
                (**self).put(data)
            }
            fn put_stream(&self, id: &BlobId, size: u64, pieces: Pieces<'_>) -> Result<(), BlobError> {
                (**self).put_stream(id, size, pieces)
            }
            fn get(&self, id: &BlobId) -> Result<BlobBytes, BlobError> {
                (**self).get(id)
            }
            fn contains(&self, id: &BlobId) -> Result<bool, BlobError> {
                (**self).contains(id)
            }
            fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<(Vec<u8>, u64), BlobError> {
                (**self).read_range(id, offset, len)
            }
            fn read_stream(&self, id: &BlobId, offset: u64, piece: usize) -> Result<ByteStream<'_>, BlobError> {
                (**self).read_stream(id, offset, piece)
            }
            fn touch(&self, id: &BlobId) -> Result<bool, BlobError> {
                (**self).touch(id)
            }
            fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
                (**self).list()
            }
            fn delete(&self, id: &BlobId) -> Result<(), BlobError> {
                (**self).delete(id)
            }
            fn delete_if_older(&self, id: &BlobId, cutoff: SystemTime) -> Result<bool, BlobError> {
                (**self).delete_if_older(id, cutoff)
            }
        }
    )*};
}
forward_store!(std::sync::Arc<T>, &T);

/// Blobs as files under one directory: `<root>/<id[0..2]>/<id>`.
///
/// Puts and the collector's deletes order through the file's inode, so a put never returns while its blob is being
/// deleted: a put of a blob that exists touches the file (its modified time becomes now) and then checks that the
/// same file is still in place, writing a fresh copy otherwise; [`BlobStore::delete_if_older`] first renames the
/// file out of the way (atomic), then reads the modified time of what it moved: refreshed since `cutoff` → moved
/// back, older → deleted. So a racing put either refreshed the blob before the rename (it stays) or finds it gone
/// and writes it again (it is back). A reader in the microseconds between that rename and the move back sees the
/// blob missing; only blobs that were unreferenced and older than the grace period ever go through it.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io { path: path.to_path_buf(), source }
}

impl LocalDirStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores `data` under `id`, which the caller computed from it (or verified against it): `put` without a
    /// second hash, for the cache in front of another store.
    pub(crate) fn put_as(&self, id: &BlobId, data: &[u8]) -> Result<(), BlobError> {
        let path = self.path(id);
        if refresh(&path) {
            return Ok(());
        }
        let dir = path.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = dir.join(format!(".{}.tmp.{}.{}", id.0, std::process::id(), unique()));
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        Ok(())
    }

    pub(crate) fn path(&self, id: &BlobId) -> PathBuf {
        self.root.join(&id.0[..2]).join(&id.0)
    }
}

/// A number no other call in this process got: temp and tombstone names of concurrent writers never collide.
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Touches the blob file at `path` and checks it is still in place afterwards: `true` when the blob there now
/// has a fresh modified time. `false` when there is none, it was moved away meanwhile (a collector's delete), or it
/// cannot be touched (permissions): the caller writes a fresh copy, which refreshes it as well.
fn refresh(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(f) = fs::File::options().append(true).open(path) else {
        return false;
    };
    if f.set_modified(SystemTime::now()).is_err() {
        return false;
    }
    match (f.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn fsync_dir(dir: &Path) -> Result<(), BlobError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl BlobStore for LocalDirStore {
    fn put(&self, data: &[u8]) -> Result<BlobId, BlobError> {
        let id = BlobId::of(data);
        self.put_as(&id, data)?;
        Ok(id)
    }

    /// Writes the pieces to a temp file as they come; fsync and rename only after `pieces` ended without an error
    /// (the temp file is removed otherwise). A blob already in place is overwritten by the same bytes.
    fn put_stream(&self, id: &BlobId, _size: u64, pieces: Pieces<'_>) -> Result<(), BlobError> {
        let path = self.path(id);
        let dir = path.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = dir.join(format!(".{}.tmp.{}.{}", id.0, std::process::id(), unique()));
        let written = (|| {
            let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
            for p in pieces {
                f.write_all(&p?).map_err(io(&tmp))?;
            }
            f.sync_all().map_err(io(&tmp))
        })();
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &path).map_err(io(&path))) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fsync_dir(dir)
    }

    fn get(&self, id: &BlobId) -> Result<BlobBytes, BlobError> {
        let path = self.path(id);
        let f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotFound(id.clone())),
            Err(e) => return Err(io(&path)(e)),
        };
        let len = f.metadata().map_err(io(&path))?.len();
        let bytes = if len == 0 {
            BlobBytes::Owned(Vec::new())
        } else {
            // SAFETY: blobs are immutable once renamed into place; nothing writes to this file again.
            BlobBytes::Mapped(unsafe { memmap2::Mmap::map(&f) }.map_err(io(&path))?)
        };
        let actual = BlobId::of(&bytes);
        if &actual != id {
            return Err(BlobError::Corrupt { id: id.clone(), actual });
        }
        Ok(bytes)
    }

    fn contains(&self, id: &BlobId) -> Result<bool, BlobError> {
        Ok(self.path(id).exists())
    }

    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<(Vec<u8>, u64), BlobError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.path(id);
        let mut f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotFound(id.clone())),
            Err(e) => return Err(io(&path)(e)),
        };
        let total = f.metadata().map_err(io(&path))?.len();
        let start = offset.min(total);
        let mut buf = Vec::with_capacity(len.min(total - start) as usize);
        f.seek(SeekFrom::Start(start)).map_err(io(&path))?;
        f.take(len).read_to_end(&mut buf).map_err(io(&path))?;
        Ok((buf, total))
    }

    fn touch(&self, id: &BlobId) -> Result<bool, BlobError> {
        Ok(refresh(&self.path(id)))
    }

    fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        let not_found = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let mut out = Vec::new();
        for shard in fs::read_dir(&self.root).map_err(io(&self.root))? {
            let shard = shard.map_err(io(&self.root))?;
            let name = shard.file_name();
            let Some(prefix) = name.to_str().filter(|n| n.len() == 2).map(str::to_string) else { continue };
            let dir = shard.path();
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if not_found(&e) || e.kind() == std::io::ErrorKind::NotADirectory => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            for e in entries {
                let e = e.map_err(io(&dir))?;
                // Temp files (`.<id>.tmp.*`) and tombstones (`.<id>.gc.*`) are not blob ids and are left out.
                let Some(id) = e.file_name().to_str().and_then(|n| BlobId::parse(n).ok()) else { continue };
                if id.0[..2] != prefix {
                    continue;
                }
                let path = e.path();
                let m = match e.metadata() {
                    Ok(m) => m,
                    Err(err) if not_found(&err) => continue,
                    Err(err) => return Err(io(&path)(err)),
                };
                if m.is_file() {
                    let modified = m.modified().map_err(io(&path))?;
                    out.push(BlobInfo { id, size: m.len(), modified });
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn delete(&self, id: &BlobId) -> Result<(), BlobError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => fsync_dir(path.parent().expect("blob paths have a parent")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Rename away, check, then delete or move back (see the type's docs). A crash between the rename and the
    /// delete leaves a `.<id>.gc.*` file that nothing lists or reads.
    fn delete_if_older(&self, id: &BlobId, cutoff: SystemTime) -> Result<bool, BlobError> {
        let path = self.path(id);
        let dir = path.parent().expect("blob paths have a parent");
        let tomb = dir.join(format!(".{}.gc.{}.{}", id.0, std::process::id(), unique()));
        match fs::rename(&path, &tomb) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(&path)(e)),
        }
        match fs::metadata(&tomb).and_then(|m| m.modified()) {
            Ok(modified) if modified < cutoff => {
                fs::remove_file(&tomb).map_err(io(&tomb))?;
                fsync_dir(dir)?;
                Ok(true)
            }
            // Refreshed by a put since the cutoff (or unreadable): it stays. A copy a put wrote meanwhile holds
            // the same bytes, so replacing it is harmless.
            _ => {
                fs::rename(&tomb, &path).map_err(io(&tomb))?;
                Ok(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_roundtrip_and_corruption_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalDirStore::open(d.path()).unwrap();
        let id = s.put(b"hello").unwrap();
        assert_eq!(id, s.put(b"hello").unwrap());
        assert_eq!(&*s.get(&id).unwrap(), b"hello");
        assert!(s.contains(&id).unwrap());
        assert_eq!(s.read_range(&id, 1, 3).unwrap(), (b"ell".to_vec(), 5));
        assert_eq!(s.read_range(&id, 4, 10).unwrap(), (b"o".to_vec(), 5));
        assert_eq!(s.read_range(&id, 9, 10).unwrap(), (vec![], 5));
        let missing = BlobId::of(b"nope");
        assert!(matches!(s.get(&missing), Err(BlobError::NotFound(_))));
        std::fs::write(s.path(&id), b"jello").unwrap();
        assert!(matches!(s.get(&id), Err(BlobError::Corrupt { .. })));
        assert!(BlobId::parse("../etc/passwd").is_err());
        assert!(BlobId::parse(id.as_str()).is_ok());
    }

    #[test]
    fn a_failed_streamed_put_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalDirStore::open(d.path()).unwrap();
        let id = BlobId::of(b"hello");
        let mut pieces = [Ok(Bytes::from_static(b"hel")), Err(BlobError::BadId("stop".into()))].into_iter();
        assert!(s.put_stream(&id, 5, &mut pieces).is_err());
        let shard = d.path().join(&id.0[..2]);
        assert_eq!(std::fs::read_dir(&shard).unwrap().count(), 0, "nothing left in {}", shard.display());
        s.put_stream(&id, 5, &mut [Ok(Bytes::from_static(b"hel")), Ok(Bytes::from_static(b"lo"))].into_iter()).unwrap();
        assert_eq!(&*s.get(&id).unwrap(), b"hello");
    }

    /// Sets a blob file's modified time `ago` in the past, as if it had been put then.
    fn age(s: &LocalDirStore, id: &BlobId, ago: std::time::Duration) {
        let f = std::fs::File::options().append(true).open(s.path(id)).unwrap();
        f.set_modified(SystemTime::now() - ago).unwrap();
    }

    fn modified(s: &LocalDirStore, id: &BlobId) -> SystemTime {
        s.list().unwrap().into_iter().find(|b| &b.id == id).expect("listed").modified
    }

    #[test]
    fn puts_and_touches_refresh_and_the_collectors_delete_spares_refreshed_blobs() {
        use std::time::Duration;
        let hour = Duration::from_secs(3600);
        let d = tempfile::tempdir().unwrap();
        let s = LocalDirStore::open(d.path()).unwrap();
        let id = s.put(b"old bytes").unwrap();
        let other = s.put(b"other").unwrap();
        // Files that are not blobs (a write in progress, a crashed delete) are not listed.
        std::fs::write(s.path(&id).with_file_name(format!(".{id}.tmp.1.2")), b"partial").unwrap();
        std::fs::write(d.path().join("README"), b"not a blob").unwrap();
        let listed: Vec<BlobId> = s.list().unwrap().into_iter().map(|b| b.id).collect();
        let mut want = vec![id.clone(), other.clone()];
        want.sort();
        assert_eq!(listed, want);

        // A re-put of old bytes makes them young again; so does a touch.
        age(&s, &id, 2 * hour);
        assert!(modified(&s, &id) < SystemTime::now() - hour);
        assert_eq!(s.put(b"old bytes").unwrap(), id);
        assert!(modified(&s, &id) > SystemTime::now() - Duration::from_secs(60));
        age(&s, &id, 2 * hour);
        assert!(s.touch(&id).unwrap());
        assert!(modified(&s, &id) > SystemTime::now() - Duration::from_secs(60));
        assert!(!s.touch(&BlobId::of(b"never stored")).unwrap());

        // The collector's delete: a fresh blob stays (and is readable), an old one goes.
        let cutoff = SystemTime::now() - hour;
        assert!(!s.delete_if_older(&id, cutoff).unwrap());
        assert_eq!(&*s.get(&id).unwrap(), b"old bytes");
        age(&s, &id, 2 * hour);
        assert!(s.delete_if_older(&id, cutoff).unwrap());
        assert!(matches!(s.get(&id), Err(BlobError::NotFound(_))));
        assert!(!s.delete_if_older(&id, cutoff).unwrap(), "already gone");
        // Nothing is left behind but the temp file planted above.
        let left: Vec<String> = std::fs::read_dir(s.path(&id).parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.iter().all(|n| n.contains(".tmp.") || n == other.as_str()), "{left:?}");
        // A put after the delete writes it again.
        assert_eq!(s.put(b"old bytes").unwrap(), id);
        assert_eq!(&*s.get(&id).unwrap(), b"old bytes");
        s.delete(&id).unwrap();
        s.delete(&id).unwrap();
        assert!(!s.contains(&id).unwrap());
    }
}
