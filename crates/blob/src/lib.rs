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

mod blocking;
pub mod cache;
pub mod service;

pub use cache::CachedStore;
pub use service::ServiceStore;

pub mod s3;
pub use s3::{S3Config, S3Store};

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A blob's name: the lowercase hex BLAKE3 hash of its bytes (64 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(String);

impl BlobId {
    /// The id of these bytes.
    pub fn of(data: &[u8]) -> BlobId {
        BlobId(blake3::hash(data).to_hex().to_string())
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
    /// The blob's bytes, verified against its id.
    fn get(&self, id: &BlobId) -> Result<BlobBytes, BlobError>;
    fn contains(&self, id: &BlobId) -> Result<bool, BlobError>;
    /// Up to `len` bytes of the blob from `offset`, and its total size. *Not* verified against the id (that needs
    /// the whole content): for chunked transfers whose receiver verifies what it assembled (edge downloads).
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<(Vec<u8>, u64), BlobError>;
}

/// A shared or borrowed store is a store (callers hold `Arc<dyn BlobStore>` and pass `&store` where `&dyn BlobStore`
/// is expected).
macro_rules! forward_store {
    ($($t:ty),*) => {$(
        impl<T: BlobStore + ?Sized> BlobStore for $t {
            fn put(&self, data: &[u8]) -> Result<BlobId, BlobError> {
                (**self).put(data)
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
        }
    )*};
}
forward_store!(std::sync::Arc<T>, &T);

/// Blobs as files under one directory: `<root>/<id[0..2]>/<id>`.
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
        if path.exists() {
            return Ok(());
        }
        let dir = path.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = dir.join(format!(".{}.tmp.{}", id.0, std::process::id()));
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

impl BlobStore for LocalDirStore {
    fn put(&self, data: &[u8]) -> Result<BlobId, BlobError> {
        let id = BlobId::of(data);
        self.put_as(&id, data)?;
        Ok(id)
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
}
