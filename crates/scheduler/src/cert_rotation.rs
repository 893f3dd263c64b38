//! A node's own certificate, re-issued from the cluster CA two thirds into its lifetime
//! ([`aidos_api::tls::PeerCert::renew_at_ms`]) and presented from the next TLS handshake on, by its listeners
//! ([`ServerTls::rotate`]) and by its calls to its peers ([`aidos_api::tls::ClientTls::rotate`]). Connections
//! already made stay up, so a node outlives any number of its certificates without a restart or a dropped call.
//!
//! Every node holds the CA key (`--tls-dir`), so it issues its own certificate with no round trip and no Raft
//! entry: node certificates are not recorded in the replicated state (a node is recognised by its CA-signed
//! `aidos-node:<id>` name). A failed issue (it needs no I/O, so only a broken CA key fails) is retried every minute
//! while the current certificate lasts.

use std::sync::Arc;
use std::time::Duration;

use aidos_api::tls::{Issued, ServerTls};
use tokio::sync::watch;

use crate::core::Core;

/// Keeps this node's certificate fresh until `stop`. `first` is the one it started with; `names` what it names.
pub async fn run(
    core: Arc<Core>,
    server: ServerTls,
    names: Vec<String>,
    lifetime: Duration,
    first: Issued,
    mut stop: watch::Receiver<bool>,
) {
    let Some(node) = core.tls.clone() else { return };
    let id = core.cfg.node_id;
    let mut current = first;
    loop {
        let renew_at = aidos_api::tls::peer_of_pem(&current.cert_pem)
            .map(|p| p.renew_at_ms())
            .unwrap_or_else(|| aidos_api::now_ms() + lifetime.as_millis() as i64 * 2 / 3);
        tokio::select! {
            _ = aidos_api::tls::sleep_until_ms(renew_at) => {},
            _ = stop.changed() => return,
        }
        let next = node.ca.issue_node(id, &names, lifetime).and_then(|n| {
            server.rotate(&n)?;
            node.client.rotate(&n.cert_pem, &n.key_pem)?;
            Ok(n)
        });
        match next {
            Ok(n) => {
                tracing::info!(node = id, serial = %n.serial, not_after_ms = n.not_after_ms, "rotated this node's certificate");
                current = n;
            }
            Err(e) => {
                tracing::error!(node = id, "re-issuing this node's certificate: {e}; again in a minute");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {},
                    _ = stop.changed() => return,
                }
            }
        }
    }
}
