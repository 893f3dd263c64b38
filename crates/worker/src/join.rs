//! A worker's certificate on a cluster that serves TLS: read from the data directory, obtained by joining with a
//! one-time join token (`WorkerService.Join`), and renewed while the worker runs (`WorkerService.RenewCert`).
//!
//! The worker makes its key pairs here and sends only signing requests; keys are written with mode 0600.
//!
//! Crash safety of the files: a join writes the key before the certificate, so a crash between the two leaves a
//! key without a certificate (the next start, still without one, joins again with a new token) and never a
//! certificate without its key. A renewal replaces a pair that works: it writes `tls.next.key`, then
//! `tls.next.pem` atomically (the commit point), then renames the key and the certificate over the old ones;
//! [`finish_renewal`] at start completes a renewal that had reached its commit point and drops one that had not,
//! so the files always hold a matching pair.
//!
//! Renewal: two thirds into the certificate's lifetime ([`tls::PeerCert::renew_at_ms`]); a failed renewal is
//! retried after a tenth of the time left (1 s to 60 s). The new certificate is presented from the next TLS
//! handshake ([`ClientTls::rotate`]), and the worker's clients (its scheduler connection, its blob store) drop
//! their cached connections when the identity rotates, so their next calls present it; calls and streams under
//! way finish on the old connections. The scheduler refuses a worker certificate once it expired, even on a
//! connection made before.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aidos_api::auth::Credentials;
use aidos_api::tls::{self, ClientTls, Identity};
use aidos_api::v1::{JoinRequest, RenewCertRequest};

use crate::connection::{Connection, request};
use crate::{WorkerConfig, WorkerError};

/// The CA certificate the worker keeps for its tasks (`AIDOS_CA_CERT`).
pub const CA_FILE: &str = "tls-ca.pem";
/// A renewal's files before they replace [`tls::CERT_FILE`] and [`tls::KEY_FILE`].
const NEXT_CERT_FILE: &str = "tls.next.pem";
const NEXT_KEY_FILE: &str = "tls.next.key";

/// This worker's TLS client identity (`ca` plus its certificate), the certificate's PEM, and where the CA
/// certificate is for its tasks.
pub async fn identity(
    cfg: &WorkerConfig,
    data_dir: &Path,
    worker_id: &str,
    ca: ClientTls,
) -> Result<(ClientTls, String, PathBuf), WorkerError> {
    let (cert_path, key_path, ca_path) =
        (data_dir.join(tls::CERT_FILE), data_dir.join(tls::KEY_FILE), data_dir.join(CA_FILE));
    crate::records::write_atomic(&ca_path, ca.ca_pem.as_bytes()).map_err(|e| WorkerError::io("write", &ca_path, e))?;
    finish_renewal(data_dir)?;
    let token = cfg.join_token.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if cert_path.exists() && key_path.exists() {
        let cert = std::fs::read_to_string(&cert_path).map_err(|e| WorkerError::io("read", &cert_path, e))?;
        let key = std::fs::read_to_string(&key_path).map_err(|e| WorkerError::io("read", &key_path, e))?;
        let peer = check_names(&cert, worker_id, &cert_path)?;
        if peer.not_after_ms > aidos_api::now_ms() {
            let tls = ca
                .with_identity(&cert, &key)
                .map_err(|e| WorkerError::Config(format!("{} / {}: {e}", cert_path.display(), key_path.display())))?;
            return Ok((tls, cert, ca_path));
        }
        // Expired (the worker was stopped past its certificate's end): only a new join brings it back.
        if token.is_none() {
            return Err(WorkerError::Config(format!(
                "this worker's certificate ({}) expired at {} ms since the epoch: give it a new join token \
                 (--join-token; `aidos token create --role worker --join`)",
                cert_path.display(),
                peer.not_after_ms
            )));
        }
        tracing::warn!(worker = worker_id, "the certificate in {} expired: joining again", cert_path.display());
    }
    let Some(token) = token else {
        return Err(WorkerError::Config(format!(
            "the cluster serves TLS and this worker has no certificate ({} is missing): give it a join token \
             (--join-token; an admin makes one with `aidos token create --role worker --join`)",
            cert_path.display()
        )));
    };
    let (csr, key) =
        tls::request(&Identity::Worker(worker_id.to_string())).map_err(|e| WorkerError::Config(e.to_string()))?;
    // The join itself presents no token and no certificate: the join token in the request is the credential.
    let conn = Connection::new(&cfg.schedulers, &Credentials { tls: Some(ca.clone()), ..Default::default() })?;
    let req = JoinRequest { token: token.to_string(), worker_id: worker_id.to_string(), csr_pem: csr };
    let got = conn
        .unary("join", |mut c| {
            let r = request(req.clone());
            async move { c.join(r).await }
        })
        .await
        .map_err(|s| WorkerError::Config(format!("joining the cluster: {}", s.message())))?;
    tls::write_private(&key_path, key.as_bytes()).map_err(|e| WorkerError::Config(e.to_string()))?;
    crate::records::write_atomic(&cert_path, got.cert_pem.as_bytes())
        .map_err(|e| WorkerError::io("write", &cert_path, e))?;
    tracing::info!(worker = worker_id, "joined the cluster: certificate in {}", cert_path.display());
    let tls = ca
        .with_identity(&got.cert_pem, &key)
        .map_err(|e| WorkerError::Config(format!("the certificate the cluster issued: {e}")))?;
    Ok((tls, got.cert_pem, ca_path))
}

/// Renews the certificate `cert_pem` that `tls` presents, for as long as the worker runs (spawn it; it never
/// returns on its own). See the module doc for timing and files.
pub async fn keep_renewed(
    conn: Arc<Connection>,
    tls: ClientTls,
    data_dir: PathBuf,
    worker_id: String,
    cert_pem: String,
) {
    let mut current = cert_pem;
    loop {
        let Some(peer) = tls::peer_of_pem(&current) else {
            tracing::error!(worker = worker_id, "cannot read this worker's certificate: it will not be renewed");
            return;
        };
        tls::sleep_until_ms(peer.renew_at_ms()).await;
        match renew(&conn, &tls, &data_dir, &worker_id).await {
            Ok(cert) => {
                let next = tls::peer_of_pem(&cert);
                let until = next.as_ref().map(|p| p.not_after_ms).unwrap_or_default();
                tracing::info!(worker = worker_id, not_after_ms = until, "renewed this worker's certificate");
                // Due again at once: this machine's clock is ahead of the CA's by most of a lifetime. Renew no
                // faster than once a second, and say why.
                if next.is_some_and(|p| p.renew_at_ms() <= aidos_api::now_ms()) {
                    tracing::warn!(
                        worker = worker_id,
                        "the renewed certificate is already due for renewal: is this machine's clock ahead of the \
                         scheduler's?"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                current = cert;
            }
            Err(e) => {
                let left = (peer.not_after_ms - aidos_api::now_ms()).max(0) as u64;
                let pause = Duration::from_millis(left / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
                tracing::warn!(worker = worker_id, "renewing this worker's certificate: {e}; again in {pause:?}");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// One renewal: a new key, its certificate from the leader (presenting the current one), the files replaced, and
/// the new identity presented from the next handshake on. Returns the new certificate's PEM.
async fn renew(conn: &Connection, tls: &ClientTls, data_dir: &Path, worker_id: &str) -> Result<String, WorkerError> {
    let (csr, key) =
        tls::request(&Identity::Worker(worker_id.to_string())).map_err(|e| WorkerError::Config(e.to_string()))?;
    let req = RenewCertRequest { worker_id: worker_id.to_string(), csr_pem: csr };
    let got = conn
        .unary("renew certificate", |mut c| {
            let r = request(req.clone());
            async move { c.renew_cert(r).await }
        })
        .await
        .map_err(|s| WorkerError::Config(format!("renewing the certificate: {}", s.message())))?;
    check_names(&got.cert_pem, worker_id, Path::new("the renewed certificate"))?;
    let (dir, cert, key_pem) = (data_dir.to_path_buf(), got.cert_pem.clone(), key.clone());
    tokio::task::spawn_blocking(move || replace_pair(&dir, &cert, &key_pem))
        .await
        .map_err(|e| WorkerError::Config(format!("replacing the certificate files: {e}")))??;
    tls.rotate(&got.cert_pem, &key).map_err(|e| WorkerError::Config(format!("the renewed certificate: {e}")))?;
    Ok(got.cert_pem)
}

/// Replaces the certificate and key files with a new pair (see the module doc for the order).
fn replace_pair(data_dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), WorkerError> {
    // A commit point left by a renewal whose renames failed would pair with the new key: drop it first.
    let stale = data_dir.join(NEXT_CERT_FILE);
    if stale.exists() {
        std::fs::remove_file(&stale).map_err(|e| WorkerError::io("remove", &stale, e))?;
    }
    let next_key = data_dir.join(NEXT_KEY_FILE);
    tls::write_private(&next_key, key_pem.as_bytes()).map_err(|e| WorkerError::Config(e.to_string()))?;
    let next_cert = data_dir.join(NEXT_CERT_FILE);
    crate::records::write_atomic(&next_cert, cert_pem.as_bytes())
        .map_err(|e| WorkerError::io("write", &next_cert, e))?;
    finish_renewal(data_dir)
}

/// Completes a renewal that reached its commit point (`tls.next.pem` written), or drops one that did not.
pub fn finish_renewal(data_dir: &Path) -> Result<(), WorkerError> {
    let (next_cert, next_key) = (data_dir.join(NEXT_CERT_FILE), data_dir.join(NEXT_KEY_FILE));
    let rename = |from: &Path, to: &Path| std::fs::rename(from, to).map_err(|e| WorkerError::io("rename", from, e));
    if next_cert.exists() {
        if next_key.exists() {
            rename(&next_key, &data_dir.join(tls::KEY_FILE))?;
        }
        rename(&next_cert, &data_dir.join(tls::CERT_FILE))?;
    } else if next_key.exists() {
        std::fs::remove_file(&next_key).map_err(|e| WorkerError::io("remove", &next_key, e))?;
    }
    if let Ok(d) = std::fs::File::open(data_dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Refuses a certificate that names another worker (a data directory copied from another machine).
fn check_names(cert_pem: &str, worker_id: &str, path: &Path) -> Result<tls::PeerCert, WorkerError> {
    match tls::peer_of_pem(cert_pem) {
        Some(p) if p.identity == Identity::Worker(worker_id.to_string()) => Ok(p),
        other => Err(WorkerError::Config(format!(
            "{} is not this worker's certificate (it names {:?}, this worker is {worker_id})",
            path.display(),
            other.map(|p| p.identity)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_renewal_is_completed_past_its_commit_point_and_dropped_before_it() {
        let d = std::env::temp_dir().join(format!("aidos-join-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        let write = |f: &str, s: &str| std::fs::write(d.join(f), s).unwrap();
        write(tls::CERT_FILE, "old cert");
        write(tls::KEY_FILE, "old key");
        // Crashed while writing the new key: dropped, the old pair stays.
        write(NEXT_KEY_FILE, "half a ke");
        finish_renewal(&d).unwrap();
        assert_eq!((read(tls::CERT_FILE), read(tls::KEY_FILE)), ("old cert".into(), "old key".into()));
        assert!(!d.join(NEXT_KEY_FILE).exists());
        // Crashed after the commit point, before the renames: completed.
        write(NEXT_KEY_FILE, "new key");
        write(NEXT_CERT_FILE, "new cert");
        finish_renewal(&d).unwrap();
        assert_eq!((read(tls::CERT_FILE), read(tls::KEY_FILE)), ("new cert".into(), "new key".into()));
        // Crashed between the two renames (the key already moved): completed.
        write(tls::KEY_FILE, "newer key");
        write(NEXT_CERT_FILE, "newer cert");
        finish_renewal(&d).unwrap();
        assert_eq!((read(tls::CERT_FILE), read(tls::KEY_FILE)), ("newer cert".into(), "newer key".into()));
        assert!(!d.join(NEXT_CERT_FILE).exists());
        // A whole replacement.
        replace_pair(&d, "c4", "k4").unwrap();
        assert_eq!((read(tls::CERT_FILE), read(tls::KEY_FILE)), ("c4".into(), "k4".into()));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
