//! The worker's stable identity: `cfg.worker_id`, else `data_dir/worker_id`, else a generated one
//! (`<hostname>-<8 hex>`) persisted there atomically so that a restart keeps it.

use std::io::Read;
use std::path::Path;

use crate::WorkerError;
use crate::records::write_atomic;

/// This machine's host name (`gethostname`), or "localhost" when it cannot be read.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for buf.len() bytes; gethostname NUL-terminates unless truncated, and
    // we stop at the first NUL or the end of the buffer either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
        if !name.is_empty() {
            return name;
        }
    }
    "localhost".to_string()
}

/// Loads the persisted worker id or generates and persists a new one.
pub fn load_or_create_worker_id(data_dir: &Path) -> Result<String, WorkerError> {
    let path = data_dir.join("worker_id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(WorkerError::io("read", &path, e)),
    }
    let id = generate_worker_id(&hostname());
    write_atomic(&path, format!("{id}\n").as_bytes()).map_err(|e| WorkerError::io("write", &path, e))?;
    Ok(id)
}

/// `<sanitized hostname>-<8 hex digits>`.
pub fn generate_worker_id(hostname: &str) -> String {
    let host: String = hostname
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let host = host.trim_matches('-');
    let host = if host.is_empty() { "worker" } else { host };
    format!("{host}-{:08x}", random_u32())
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok() {
        return u32::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u32) ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_generated_once_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_worker_id(dir.path()).unwrap();
        let b = load_or_create_worker_id(dir.path()).unwrap();
        assert_eq!(a, b);
        assert!(!a.is_empty());
    }

    #[test]
    fn generated_ids_are_sanitized() {
        let id = generate_worker_id("My Host_1");
        assert!(id.starts_with("my-host-1-"), "{id}");
        assert_eq!(id.len(), "my-host-1-".len() + 8);
    }
}
