//! A worker's certificate on a cluster that serves TLS: read from the data directory, or obtained once by
//! joining with a one-time join token (`WorkerService.Join`).
//!
//! The worker makes its key pair here and sends only a signing request; the key is written with mode 0600 before
//! the certificate, so a crash between the two leaves a key without a certificate (the next start, still without
//! one, joins again with a new token) and never a certificate without its key.

use std::path::{Path, PathBuf};

use aidos_api::auth::Credentials;
use aidos_api::tls::{self, ClientTls, Identity};
use aidos_api::v1::JoinRequest;

use crate::connection::{Connection, request};
use crate::{WorkerConfig, WorkerError};

/// The CA certificate the worker keeps for its tasks (`AIDOS_CA_CERT`).
pub const CA_FILE: &str = "tls-ca.pem";

/// This worker's TLS client identity (`ca` plus its certificate), and where the CA certificate is for its tasks.
pub async fn identity(
    cfg: &WorkerConfig,
    data_dir: &Path,
    worker_id: &str,
    ca: ClientTls,
) -> Result<(ClientTls, PathBuf), WorkerError> {
    let (cert_path, key_path, ca_path) =
        (data_dir.join(tls::CERT_FILE), data_dir.join(tls::KEY_FILE), data_dir.join(CA_FILE));
    crate::records::write_atomic(&ca_path, ca.ca_pem.as_bytes()).map_err(|e| WorkerError::io("write", &ca_path, e))?;
    if cert_path.exists() && key_path.exists() {
        let cert = std::fs::read_to_string(&cert_path).map_err(|e| WorkerError::io("read", &cert_path, e))?;
        let key = std::fs::read_to_string(&key_path).map_err(|e| WorkerError::io("read", &key_path, e))?;
        check_names(&cert, worker_id, &cert_path)?;
        return Ok((ca.with_identity(&cert, &key), ca_path));
    }
    let Some(token) = cfg.join_token.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
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
    Ok((ca.with_identity(&got.cert_pem, &key), ca_path))
}

/// Refuses a certificate that names another worker (a data directory copied from another machine).
fn check_names(cert_pem: &str, worker_id: &str, path: &Path) -> Result<(), WorkerError> {
    match tls::peer_of_pem(cert_pem).map(|p| p.identity) {
        Some(Identity::Worker(id)) if id == worker_id => Ok(()),
        other => Err(WorkerError::Config(format!(
            "{} is not this worker's certificate (it names {other:?}, this worker is {worker_id})",
            path.display()
        ))),
    }
}
