//! Chunked, resumable artifact downloads into the cache, verified before they count.
//!
//! A download appends chunks to `partial/<artifact>.part` and asks each time from the partial file's length, so a
//! dropped connection or an agent restart resumes where it stopped. Once complete, the bytes are checked against
//! the artifact id (BLAKE3 of the content) and the deployment's ed25519 signature against the pinned key, then
//! renamed into `models/`. A mismatch deletes the partial file and is reported; the running model is not touched.
//! Space is checked before the first byte ([`Cache::reserve`]: the cache quota and the disk's free space); a disk
//! that fills up during the download (another process took the space) deletes the partial file and reports
//! [`EdgeError::DiskFull`].

use std::io::Write;

use aidos_api::v1::EdgeDeployment;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use crate::cache::Cache;
use crate::error::EdgeError;

/// Bytes asked for per chunk.
pub const CHUNK: u32 = 256 * 1024;

/// Where chunks come from (the control plane over gRPC; a test double in tests).
#[tonic::async_trait]
pub trait ChunkSource: Send {
    /// Up to `max` bytes of `artifact` from `offset`, and the artifact's total size.
    async fn chunk(&mut self, artifact: &str, offset: u64, max: u32) -> Result<(Vec<u8>, u64), EdgeError>;
}

/// Checks the deployment's signature over its signed bytes with the pinned key.
pub fn verify_signature(d: &EdgeDeployment, key: &VerifyingKey) -> Result<(), EdgeError> {
    let bad = || EdgeError::BadSignature { deployment: d.name.clone() };
    let sig: [u8; 64] = d.signature.as_slice().try_into().map_err(|_| bad())?;
    key.verify(&aidos_api::edge::signed_bytes(d), &Signature::from_bytes(&sig)).map_err(|_| bad())
}

/// ENOSPC, or EDQUOT (a disk quota: the same to the agent).
fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// Downloads (or resumes) `d`'s artifact and verifies it; returns the path of the verified model file. `keep`
/// names artifacts the cache must not evict to make room.
pub async fn fetch(
    src: &mut dyn ChunkSource,
    cache: &Cache,
    d: &EdgeDeployment,
    key: &VerifyingKey,
    keep: &[&str],
) -> Result<std::path::PathBuf, EdgeError> {
    // The signature first: nothing unsigned is downloaded at all.
    verify_signature(d, key)?;
    let dest = cache.model_path(&d.artifact);
    if dest.exists() {
        return Ok(dest);
    }
    let part = cache.partial_path(&d.artifact);
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if have > d.size {
        let _ = std::fs::remove_file(&part);
        return Err(EdgeError::Download {
            artifact: d.artifact.clone(),
            why: format!("partial file larger than {} bytes", d.size),
        });
    }
    cache.reserve(d.size - have, keep)?;
    let dl = |why: String| EdgeError::Download { artifact: d.artifact.clone(), why };
    // A full disk: the partial file goes (it would hold the space the agent needs to keep running, and resuming
    // it cannot succeed until space returns); other write errors keep it for a resume.
    let write_failed = |e: std::io::Error, need: u64| {
        if is_disk_full(&e) {
            let _ = std::fs::remove_file(&part);
            cache.disk_full(need)
        } else {
            dl(format!("writing {}: {e}", part.display()))
        }
    };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&part).map_err(|e| dl(e.to_string()))?;
    let mut offset = have;
    while offset < d.size {
        let (data, total) = src.chunk(&d.artifact, offset, CHUNK).await?;
        if total != d.size {
            return Err(dl(format!("the control plane holds {total} bytes, the deployment says {}", d.size)));
        }
        if data.is_empty() {
            return Err(dl(format!("truncated: no data at offset {offset} of {total}")));
        }
        f.write_all(&data).map_err(|e| write_failed(e, d.size - offset))?;
        offset += data.len() as u64;
    }
    f.sync_all().map_err(|e| write_failed(e, d.size))?;
    drop(f);
    let bytes = std::fs::read(&part).map_err(|e| dl(e.to_string()))?;
    let actual = blake3::hash(&bytes).to_hex().to_string();
    if actual != d.artifact {
        let _ = std::fs::remove_file(&part);
        return Err(EdgeError::HashMismatch { expected: d.artifact.clone(), actual, bytes: bytes.len() as u64 });
    }
    std::fs::rename(&part, &dest).map_err(|e| dl(e.to_string()))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    /// Serves `data` in chunks; fails every call after `fail_after` calls when set; records the offsets asked.
    struct Flaky {
        data: Vec<u8>,
        fail_after: Option<usize>,
        calls: usize,
        offsets: Vec<u64>,
    }

    #[tonic::async_trait]
    impl ChunkSource for Flaky {
        async fn chunk(&mut self, _: &str, offset: u64, max: u32) -> Result<(Vec<u8>, u64), EdgeError> {
            self.calls += 1;
            if self.fail_after.is_some_and(|n| self.calls > n) {
                return Err(EdgeError::ControlPlane("connection reset".into()));
            }
            self.offsets.push(offset);
            let end = (offset as usize + max as usize).min(self.data.len());
            Ok((self.data[offset as usize..end].to_vec(), self.data.len() as u64))
        }
    }

    fn deployment(data: &[u8], key: &SigningKey) -> EdgeDeployment {
        let mut d = EdgeDeployment {
            name: "d".into(),
            model: "m".into(),
            version: 1,
            artifact: blake3::hash(data).to_hex().to_string(),
            size: data.len() as u64,
            sample_input: vec![1.0],
            sample_output: vec![2.0],
            ..Default::default()
        };
        d.signature = key.sign(&aidos_api::edge::signed_bytes(&d)).to_bytes().to_vec();
        d
    }

    fn data() -> Vec<u8> {
        (0..(CHUNK as usize * 3 + 1000)).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_truncated_download_resumes_from_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 0).unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let data = data();
        let d = deployment(&data, &key);
        let mut src = Flaky { data: data.clone(), fail_after: Some(2), calls: 0, offsets: vec![] };
        let err = fetch(&mut src, &cache, &d, &key.verifying_key(), &[]).await.unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
        assert!(!cache.model_path(&d.artifact).exists(), "an incomplete file was installed");
        assert_eq!(std::fs::metadata(cache.partial_path(&d.artifact)).unwrap().len(), 2 * CHUNK as u64);
        let mut src = Flaky { data: data.clone(), fail_after: None, calls: 0, offsets: vec![] };
        let path = fetch(&mut src, &cache, &d, &key.verifying_key(), &[]).await.unwrap();
        assert_eq!(src.offsets[0], 2 * CHUNK as u64, "did not resume: {:?}", src.offsets);
        assert_eq!(std::fs::read(path).unwrap(), data);
    }

    #[tokio::test]
    async fn a_hash_mismatch_or_a_wrong_signature_is_refused_and_nothing_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 0).unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let data = data();
        let d = deployment(&data, &key);
        let mut tampered = data.clone();
        tampered[100] ^= 1;
        let mut src = Flaky { data: tampered, fail_after: None, calls: 0, offsets: vec![] };
        let err = fetch(&mut src, &cache, &d, &key.verifying_key(), &[]).await.unwrap_err();
        assert!(matches!(err, EdgeError::HashMismatch { .. }), "{err}");
        assert!(!cache.model_path(&d.artifact).exists() && !cache.partial_path(&d.artifact).exists());

        let rogue = SigningKey::from_bytes(&[9; 32]);
        let forged = deployment(&data, &rogue);
        let mut src = Flaky { data: data.clone(), fail_after: None, calls: 0, offsets: vec![] };
        let err = fetch(&mut src, &cache, &forged, &key.verifying_key(), &[]).await.unwrap_err();
        assert!(matches!(err, EdgeError::BadSignature { .. }), "{err}");
        assert_eq!(src.calls, 0, "an unsigned artifact was downloaded");
    }

    #[tokio::test]
    async fn a_full_cache_refuses_the_download() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1000).unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let data = data();
        let d = deployment(&data, &key);
        let mut src = Flaky { data, fail_after: None, calls: 0, offsets: vec![] };
        let err = fetch(&mut src, &cache, &d, &key.verifying_key(), &[]).await.unwrap_err();
        assert!(err.to_string().contains("cache full"), "{err}");
        assert_eq!(src.calls, 0);
    }

    /// The real thing, not the quota: the cache lives on a 4 MiB tmpfs (a private mount namespace made by
    /// re-running this test under `unshare`), already holding the running model. A download too big for the disk is
    /// refused before any byte is fetched; one the disk fills up under (another writer takes the space between two
    /// chunks) stops with ENOSPC reported and its partial file deleted. The running model's file is intact after
    /// both, and the cache can still save its state.
    #[test]
    fn a_full_disk_refuses_or_aborts_the_download_and_keeps_the_running_model() {
        const INNER: &str = "AIDOS_TEST_TMPFS_CACHE";
        let Ok(dir) = std::env::var(INNER) else {
            let dir = tempfile::tempdir().unwrap();
            let name = "download::tests::a_full_disk_refuses_or_aborts_the_download_and_keeps_the_running_model";
            let out = std::process::Command::new("unshare")
                .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
                .arg(r#"mount -t tmpfs -o size=4m aidos-test "$0" && exec "$1" --exact "$2" --nocapture --test-threads 1"#)
                .arg(dir.path())
                .arg(std::env::current_exe().unwrap())
                .arg(name)
                .env(INNER, dir.path())
                .output()
                .expect("run unshare (util-linux)");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && text.contains("1 passed"), "in a mount namespace: {text}");
            return;
        };
        let root = std::path::Path::new(&dir);
        let cache = Cache::open(root, 0).unwrap();
        assert!(cache.disk_available().unwrap() <= 4 << 20, "not on the 4 MiB tmpfs");
        let key = SigningKey::from_bytes(&[7; 32]);
        let running: Vec<u8> = (0..(1 << 20)).map(|i| (i % 253) as u8).collect();
        let running_id = blake3::hash(&running).to_hex().to_string();
        std::fs::write(cache.model_path(&running_id), &running).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();

        // 1. Bigger than the disk: refused up front, nothing asked, nothing written.
        let big: Vec<u8> = (0..(3 << 20)).map(|i| (i % 241) as u8).collect();
        let d = deployment(&big, &key);
        let mut src = Flaky { data: big, fail_after: None, calls: 0, offsets: vec![] };
        let err = rt.block_on(fetch(&mut src, &cache, &d, &key.verifying_key(), &[&running_id])).unwrap_err();
        assert!(matches!(err, EdgeError::DiskFull { .. }), "{err}");
        assert!(err.to_string().starts_with("disk full under"), "{err}");
        assert_eq!(src.calls, 0);

        // 2. Fits when it starts; the disk fills up after the first chunk.
        struct FillsDisk(Flaky, std::path::PathBuf);
        #[tonic::async_trait]
        impl ChunkSource for FillsDisk {
            async fn chunk(&mut self, a: &str, offset: u64, max: u32) -> Result<(Vec<u8>, u64), EdgeError> {
                if self.0.calls == 1 {
                    let mut f = std::fs::File::create(&self.1).unwrap();
                    while f.write_all(&[0u8; 64 * 1024]).is_ok() {}
                }
                self.0.chunk(a, offset, max).await
            }
        }
        let mid: Vec<u8> = (0..(CHUNK as usize * 4)).map(|i| (i % 239) as u8).collect();
        let d = deployment(&mid, &key);
        let filler = root.join("filler");
        let mut src = FillsDisk(Flaky { data: mid, fail_after: None, calls: 0, offsets: vec![] }, filler.clone());
        let err = rt.block_on(fetch(&mut src, &cache, &d, &key.verifying_key(), &[&running_id])).unwrap_err();
        assert!(matches!(err, EdgeError::DiskFull { .. }), "{err}");
        assert!(!cache.partial_path(&d.artifact).exists(), "the partial file still holds the space");
        assert!(!cache.model_path(&d.artifact).exists());

        // The running model is untouched; with the other writer gone the state can be saved again.
        assert_eq!(std::fs::read(cache.model_path(&running_id)).unwrap(), running);
        std::fs::remove_file(&filler).unwrap();
        cache.save_state(&crate::cache::State::default()).unwrap();
    }
}
