//! Transport security: the cluster's certificate authority, the certificates it issues to scheduler nodes and
//! workers, who a client certificate names, and the TLS halves of our servers and clients (rustls with ring).
//!
//! - `aidos cert init --dir D` makes the CA ([`Ca::init`]): `D/ca.pem` (public, given to every client) and
//!   `D/ca.key` (mode 0600; only scheduler nodes hold it). Each scheduler node issues its own certificate from it
//!   when it starts ([`Ca::issue_node`]), so no per-node files are copied around.
//! - A worker joins with a one-time join token: it makes a key pair and a signing request ([`request`]), sends
//!   the request with the token, and the leader answers a certificate for that key ([`Ca::sign_request`]); the
//!   key never leaves the worker. An edge device gets its certificate the same way when it enrols.
//! - A certificate's subject common name says who it is ([`Identity`]): `aidos-node:<id>`,
//!   `aidos-worker:<name>` or `aidos-device:<name>`. Every scheduler certificate also names [`SERVER_NAME`], which clients verify (so a
//!   node's certificate does not depend on the address it is dialled at).
//! - Servers ([`ServerTls`]) verify a client certificate when one is presented (chain to the cluster CA, dates)
//!   and accept clients without one: the CLI and jobs authenticate with tokens over server-authenticated TLS.
//!   What a call needs beyond that (a node's certificate for Raft, a worker's for the worker channel) is the
//!   scheduler's auth layer's decision, from [`peer_of`].
//!
//! Invariants: CA files are never overwritten; private keys are written with mode 0600; a TLS handshake that
//! takes longer than [`HANDSHAKE_TIMEOUT`] is dropped without holding up other connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[cfg(feature = "ca")]
use rcgen::{
    BasicConstraints, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose,
    SerialNumber,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The name every scheduler node's certificate carries and every client verifies.
pub const SERVER_NAME: &str = "scheduler.aidos";
/// Files of a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// Files a worker keeps its certificate in (in its data directory).
pub const CERT_FILE: &str = "tls.pem";
pub const KEY_FILE: &str = "tls.key";
/// The environment variable naming the CA certificate a client trusts (set by workers for their tasks).
pub const CA_ENV: &str = "AIDOS_CA_CERT";
/// A TLS handshake slower than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The CA's own lifetime.
#[cfg(feature = "ca")]
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of the certificates the CA issues.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default lifetime of edge devices' certificates: their agents renew them by themselves.
pub const DEFAULT_DEVICE_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long before its issue a certificate's validity starts: slack for clocks a little behind the CA's.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// Longest name a worker certificate may carry.
const MAX_NAME: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} already exists: refusing to overwrite a cluster CA (use another --dir, or remove it yourself)")]
    Exists(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

fn invalid(what: &str) -> impl FnOnce(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Invalid(format!("{what}: {e}"))
}

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Node(u64),
    Worker(String),
    /// An edge device (`aidos edge agent`), by its device name.
    Device(String),
}

impl Identity {
    pub fn common_name(&self) -> String {
        match self {
            Identity::Node(id) => format!("aidos-node:{id}"),
            Identity::Worker(name) => format!("aidos-worker:{name}"),
            Identity::Device(name) => format!("aidos-device:{name}"),
        }
    }

    pub fn parse(common_name: &str) -> Option<Identity> {
        if let Some(id) = common_name.strip_prefix("aidos-node:") {
            return id.parse().ok().map(Identity::Node);
        }
        if let Some(n) = common_name.strip_prefix("aidos-device:") {
            return valid_name(n).then(|| Identity::Device(n.to_string()));
        }
        common_name.strip_prefix("aidos-worker:").filter(|n| valid_name(n)).map(|n| Identity::Worker(n.to_string()))
    }
}

/// A worker or device name a certificate may carry: 1..=128 of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A certificate the CA issued.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    /// The private key, when the CA made it ([`Ca::issue_node`]); empty for a signed request.
    pub key_pem: String,
    /// Hex, as [`peer_of`] reads it back.
    pub serial: String,
    pub not_after_ms: i64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("serial", &self.serial).field("not_after_ms", &self.not_after_ms).finish()
    }
}

#[cfg(feature = "ca")]
/// The cluster's certificate authority.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

#[cfg(feature = "ca")]
impl Ca {
    /// Makes a new CA in `dir` (created if missing). Refuses when either file exists.
    pub fn init(dir: &Path) -> Result<Ca, TlsError> {
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(TlsError::Exists(p.clone()));
            }
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key = KeyPair::generate().map_err(invalid("CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("aidos cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(serial());
        let now = std::time::SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + CA_LIFETIME).into();
        let cert = params.self_signed(&key).map_err(invalid("CA certificate"))?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
        Ca::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// The CA in `dir` (its certificate and key).
    pub fn load(dir: &Path) -> Result<Ca, TlsError> {
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        Ca::from_pem(&cert, &key).map_err(|e| TlsError::Invalid(format!("{}: {e}", dir.display())))
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let issuer = Issuer::from_ca_cert_pem(cert_pem, KeyPair::from_pem(key_pem).map_err(invalid("CA key"))?)
            .map_err(invalid("CA certificate"))?;
        Ok(Ca { cert_pem: cert_pem.to_string(), issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A new key and certificate for a serving front (a gateway, `aidos serve run`) reached at `names` (DNS names
    /// or IP addresses): `aidos cert issue`. Clients verify it against the cluster CA.
    pub fn issue_server(&self, names: &[String], lifetime: Duration) -> Result<Issued, TlsError> {
        if names.is_empty() {
            return Err(TlsError::Invalid("a serving certificate needs at least one name (--name)".into()));
        }
        let key = KeyPair::generate().map_err(invalid("key"))?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(invalid("names"))?;
        params.distinguished_name = name(&names[0]);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serial = serial();
        params.serial_number = Some(serial.clone());
        let now = std::time::SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + lifetime).into();
        let cert = params.signed_by(&key, &self.issuer).map_err(invalid("certificate"))?;
        let not_after_ms =
            (now + lifetime).duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default();
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), serial: hex(&serial.to_bytes()), not_after_ms })
    }

    /// A new key and certificate for scheduler node `id`: server (for [`SERVER_NAME`], which clients verify, and
    /// `names`, the hosts and addresses the node is reached at, for browsers and curl) and client (for its peers).
    pub fn issue_node(&self, id: u64, names: &[String], lifetime: Duration) -> Result<Issued, TlsError> {
        let key = KeyPair::generate().map_err(invalid("node key"))?;
        let mut issued = self.issue(&Identity::Node(id), names, &key, lifetime)?;
        issued.key_pem = key.serialize_pem();
        Ok(issued)
    }

    /// A certificate naming `identity` for the key of the signing request `csr_pem`. Only the request's public
    /// key is used (it proves the requester holds the key); what the certificate names and may do is ours.
    pub fn sign_request(&self, csr_pem: &str, identity: &Identity, lifetime: Duration) -> Result<Issued, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Invalid(format!("certificate signing request: {e}")))?;
        self.issue(identity, &[], &csr.public_key, lifetime)
    }

    fn issue(
        &self,
        identity: &Identity,
        names: &[String],
        key: &impl rcgen::PublicKeyData,
        lifetime: Duration,
    ) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&identity.common_name());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Identity::Node(_) = identity {
            params.subject_alt_names =
                vec![rcgen::SanType::DnsName(SERVER_NAME.try_into().map_err(invalid("server name"))?)];
            for n in names.iter().map(|n| n.trim().trim_start_matches('[').trim_end_matches(']')) {
                let san = match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => rcgen::SanType::IpAddress(ip),
                    Err(_) => rcgen::SanType::DnsName(n.try_into().map_err(invalid("host name"))?),
                };
                if !n.is_empty() && !params.subject_alt_names.contains(&san) {
                    params.subject_alt_names.push(san);
                }
            }
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let serial = serial();
        params.serial_number = Some(serial.clone());
        let now = std::time::SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        let not_after = now + lifetime;
        params.not_after = not_after.into();
        let cert = params.signed_by(key, &self.issuer).map_err(invalid("certificate"))?;
        let not_after_ms =
            not_after.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default();
        Ok(Issued { cert_pem: cert.pem(), key_pem: String::new(), serial: hex(&serial.to_bytes()), not_after_ms })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

#[cfg(feature = "ca")]
/// 16 random bytes, positive.
fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

#[cfg(feature = "ca")]
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes a private key: created with mode 0600, never group- or world-readable.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path).map_err(io(path))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io(path))
}

/// A new key pair and a signing request for it (what a joining worker sends): `(csr_pem, key_pem)`.
pub fn request(identity: &Identity) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(invalid("key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&identity.common_name());
    let csr = params.serialize_request(&key).map_err(invalid("signing request"))?;
    Ok((csr.pem().map_err(invalid("signing request"))?, key.serialize_pem()))
}

#[cfg(feature = "ca")]
/// What a verified client certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    pub identity: Identity,
    /// Hex, as [`Issued::serial`].
    pub serial: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

#[cfg(feature = "ca")]
impl PeerCert {
    /// When it was issued: its validity starts [`BACKDATE`] earlier.
    pub fn issued_at_ms(&self) -> i64 {
        self.not_before_ms + BACKDATE.as_millis() as i64
    }

    /// When its holder should have a new one: two thirds into its lifetime (so a renewal that fails has a third of
    /// it to be retried in).
    pub fn renew_at_ms(&self) -> i64 {
        let issued = self.issued_at_ms().min(self.not_after_ms);
        issued + (self.not_after_ms - issued) * 2 / 3
    }
}

/// Sleeps until the wall-clock time `at_ms`, in steps of at most ten minutes re-read from the wall clock: one
/// monotonic sleep of months (a certificate's renewal) would overshoot across a suspended host.
pub async fn sleep_until_ms(at_ms: i64) {
    loop {
        let left = at_ms - crate::now_ms();
        if left <= 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(left.min(600_000) as u64)).await;
    }
}

#[cfg(feature = "ca")]
/// Who the (already verified) certificate `der` names; None when it names no aidos identity.
pub fn peer_of(der: &[u8]) -> Option<PeerCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    let identity = Identity::parse(cn)?;
    let serial = hex(cert.tbs_certificate.raw_serial());
    let v = cert.validity();
    Some(PeerCert {
        identity,
        serial,
        not_before_ms: v.not_before.timestamp() * 1000,
        not_after_ms: v.not_after.timestamp() * 1000,
    })
}

#[cfg(feature = "ca")]
/// [`peer_of`] the first certificate of `pem`.
pub fn peer_of_pem(pem: &str) -> Option<PeerCert> {
    peer_of(CertificateDer::from_pem_slice(pem.as_bytes()).ok()?.as_ref())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let v: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid(format!("{what}: {e}")))?;
    if v.is_empty() {
        return Err(TlsError::Invalid(format!("{what}: no certificate in it")));
    }
    Ok(v)
}

fn certified(
    issued: &Issued,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let chain = certs(&issued.cert_pem, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| TlsError::Invalid(format!("private key: {e}")))?;
    let signer =
        provider.key_provider.load_private_key(key).map_err(|e| TlsError::Invalid(format!("private key: {e}")))?;
    let key = rustls::sign::CertifiedKey::new(chain, signer);
    // A key that is not the certificate's fails here, with a clear error, rather than at every handshake.
    key.keys_match().map_err(|e| TlsError::Invalid(format!("the private key is not the certificate's: {e}")))?;
    Ok(key)
}

/// The certificate a server presents; replaced in place by [`ServerTls::rotate`] (new handshakes get the new one,
/// connections already made are unaffected).
#[derive(Debug)]
struct Rotating(RwLock<Arc<rustls::sign::CertifiedKey>>);

impl rustls::server::ResolvesServerCert for Rotating {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A TLS server's configuration: our certificate, and (a scheduler node) client certificates verified against
/// the cluster CA when presented.
#[derive(Clone)]
pub struct ServerTls {
    resolver: Arc<Rotating>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// None: no client certificates are asked for (serving fronts: callers present inference keys).
    client_ca_pem: Option<String>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("verifies_clients", &self.client_ca_pem.is_some()).finish()
    }
}

impl ServerTls {
    /// A scheduler node's: `identity`, verifying client certificates against `ca_pem`.
    pub fn new(ca_pem: &str, identity: &Issued) -> Result<ServerTls, TlsError> {
        certs(ca_pem, "CA certificate")?;
        Ok(ServerTls { client_ca_pem: Some(ca_pem.into()), ..ServerTls::serving(identity)? })
    }

    /// A serving front's: `identity`, no client certificates.
    pub fn serving(identity: &Issued) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let key = certified(identity, &provider)?;
        Ok(ServerTls { resolver: Arc::new(Rotating(RwLock::new(Arc::new(key)))), provider, client_ca_pem: None })
    }

    /// [`Self::serving`] the certificate (chain) and key in the PEM files `cert` and `key`.
    pub fn from_files(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let cert_pem = std::fs::read_to_string(cert).map_err(io(cert))?;
        let key_pem = std::fs::read_to_string(key).map_err(io(key))?;
        let issued = Issued { cert_pem, key_pem, serial: String::new(), not_after_ms: 0 };
        ServerTls::serving(&issued)
            .map_err(|e| TlsError::Invalid(format!("{} / {}: {e}", cert.display(), key.display())))
    }

    /// Serves `identity` from the next handshake on.
    pub fn rotate(&self, identity: &Issued) -> Result<(), TlsError> {
        let key = Arc::new(certified(identity, &self.provider)?);
        *self.resolver.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }

    /// An acceptor offering `alpn` (`[b"h2"]` for gRPC; add `http/1.1` for an HTTP API).
    pub fn acceptor(&self, alpn: &[&[u8]]) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        let builder = match &self.client_ca_pem {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(ca, "CA certificate")? {
                    roots.add(c).map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
                }
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| TlsError::Invalid(format!("client verifier: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder.with_cert_resolver(self.resolver.clone());
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        if self.client_ca_pem.is_some() {
            // A resumed session carries the client certificate of the handshake it resumes, unchecked: with
            // resumption a client could go on presenting a certificate it rotated away from (or one that expired).
            // Every connection is a full handshake; connections are long-lived HTTP/2, so this costs little.
            cfg.send_tls13_tickets = 0;
            cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        }
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    }
}

/// A TLS connection a listener accepted, with the peer's address.
pub type Accepted = (tokio_rustls::server::TlsStream<TcpStream>, SocketAddr);

/// Accepts TCP connections on `listener` and completes their TLS handshakes concurrently, each within
/// [`HANDSHAKE_TIMEOUT`]; the connections come out of the returned channel. A failed handshake is logged at DEBUG
/// and dropped. Stops when the receiver is dropped.
pub fn accept(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> mpsc::Receiver<Accepted> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, addr)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake: {e}"),
                    Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// An axum listener over [`accept`]'s connections (use it through `ListenerExt::tap_io`, so that axum hands
/// handlers the peer address as `ConnectInfo<SocketAddr>`).
pub struct TlsListener {
    accepted: mpsc::Receiver<Accepted>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        Ok(TlsListener { accepted: accept(listener, acceptor), local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(c) => c,
            // The acceptor stops only when this listener is dropped: wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The certificate a client presents, if any; replaced in place by [`ClientTls::rotate`] (the next handshake of
/// every channel made from the same [`ClientTls`] presents the new one; connections already made are unaffected).
#[derive(Debug, Default)]
struct ClientIdentity {
    key: RwLock<Option<Arc<rustls::sign::CertifiedKey>>>,
    /// Bumped by every rotation: clients that cache connections drop them when it moves ([`ClientTls::generation`]).
    generation: std::sync::atomic::AtomicU64,
}

impl ClientIdentity {
    fn get(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.key.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl rustls::client::ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// What a client trusts (the cluster CA) and presents (its certificate, when it has one). Clones share the
/// identity: [`ClientTls::rotate`] on one is seen by every channel made from any of them. Two values are equal when
/// they trust the same CA and share one identity (two loads of the same files are not equal).
#[derive(Clone)]
pub struct ClientTls {
    pub ca_pem: Arc<str>,
    identity: Arc<ClientIdentity>,
    config: Arc<rustls::ClientConfig>,
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        self.ca_pem == other.ca_pem && Arc::ptr_eq(&self.identity, &other.identity)
    }
}

impl Eq for ClientTls {}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("identity", &self.identity.get().is_some()).finish()
    }
}

impl ClientTls {
    /// Trusting the CA certificate `ca_pem`, presenting nothing.
    pub fn trusting(ca_pem: &str) -> Result<ClientTls, TlsError> {
        let provider = provider();
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(ca_pem, "CA certificate")? {
            roots.add(c).map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
        }
        let identity = Arc::new(ClientIdentity::default());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_cert_resolver(identity.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        // A resumed session would present the certificate of the session it resumes (see ServerTls::acceptor).
        config.resumption = rustls::client::Resumption::disabled();
        Ok(ClientTls { ca_pem: ca_pem.into(), identity, config: Arc::new(config) })
    }

    /// Trusting the CA certificate in the file `ca`.
    pub fn load(ca: &Path) -> Result<ClientTls, TlsError> {
        let pem = std::fs::read_to_string(ca).map_err(io(ca))?;
        ClientTls::trusting(&pem).map_err(|e| TlsError::Invalid(format!("{}: {e}", ca.display())))
    }

    /// From [`CA_ENV`] read through `get` (None when unset or blank).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<ClientTls>, TlsError> {
        match get(CA_ENV).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
            Some(p) => ClientTls::load(Path::new(&p)).map(Some),
            None => Ok(None),
        }
    }

    /// The same trust, presenting the certificate `cert_pem` for the key `key_pem` (an identity of its own: the
    /// clones of `self` keep theirs).
    pub fn with_identity(&self, cert_pem: &str, key_pem: &str) -> Result<ClientTls, TlsError> {
        let t = ClientTls::trusting(&self.ca_pem)?;
        t.rotate(cert_pem, key_pem)?;
        Ok(t)
    }

    /// Presents `cert_pem` / `key_pem` from the next handshake on, on every channel made from this identity.
    pub fn rotate(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let issued =
            Issued { cert_pem: cert_pem.into(), key_pem: key_pem.into(), serial: String::new(), not_after_ms: 0 };
        let key = Arc::new(certified(&issued, &provider())?);
        *self.identity.key.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
        self.identity.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// How many times the identity was rotated. Connections made before a rotation still present the old
    /// certificate (TLS authenticates a connection once): a client that caches connections drops them when this
    /// moves, so its next calls present the new one ([`crate::client::Client`] does).
    pub fn generation(&self) -> u64 {
        self.identity.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether a certificate is presented.
    pub fn has_identity(&self) -> bool {
        self.identity.get().is_some()
    }

    /// tonic's connector over this TLS: each new connection verifies [`SERVER_NAME`] against the CA and presents
    /// the identity current at its handshake (a full handshake: no session resumption). Use it with an `http://`
    /// endpoint (the connector does the TLS; tonic refuses `https://` without its own TLS config).
    pub fn connector(&self) -> Connector {
        Connector { config: self.config.clone() }
    }
}

/// A TCP + TLS connector for tonic channels ([`ClientTls::connector`]).
#[derive(Clone)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
}

type Connecting = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>,
            > + Send,
    >,
>;

impl tonic::codegen::Service<tonic::codegen::http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
            let host = uri.host().ok_or_else(|| bad("no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).map_err(|e| bad(&e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// A multi-node cluster needs TLS unless the operator says otherwise (`--insecure`). Pure.
pub fn require_tls(members: usize, tls: bool, insecure: bool) -> Result<(), String> {
    if members > 1 && !tls && !insecure {
        return Err(format!(
            "a cluster of {members} nodes needs transport security: give --tls-dir (a CA made by `aidos cert init`), \
             or --insecure to run without it (tokens then cross the network in the clear)"
        ));
    }
    Ok(())
}

#[cfg(all(test, feature = "ca"))]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_bad_names_are_refused() {
        for id in [Identity::Node(3), Identity::Worker("gpu-7.rack_2".into()), Identity::Device("cam-1".into())] {
            assert_eq!(Identity::parse(&id.common_name()), Some(id));
        }
        for cn in ["aidos-worker:", "aidos-worker:a b", "aidos-node:x", "someone", "aidos-worker:a/b", "aidos-device:"]
        {
            assert_eq!(Identity::parse(cn), None, "{cn}");
        }
    }

    #[test]
    fn ca_issues_node_and_requested_certificates_that_read_back() {
        let dir = std::env::temp_dir().join(format!("aidos-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = Ca::init(&dir).unwrap();
        assert!(matches!(Ca::init(&dir), Err(TlsError::Exists(_))), "never overwrites a CA");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(CA_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "CA key readable by others: {mode:o}");
        }
        let ca = Ca::load(&dir).map(|_| ca).unwrap();
        let node = ca.issue_node(2, &["10.0.0.1".into(), "node1.example".into()], Duration::from_secs(3600)).unwrap();
        let der = certs(&node.cert_pem, "node").unwrap();
        let peer = peer_of(&der[0]).unwrap();
        assert_eq!(peer.identity, Identity::Node(2));
        assert_eq!(peer.serial, node.serial);
        assert!((peer.not_after_ms - node.not_after_ms).abs() < 2000);
        // A worker's request: the certificate names whom the CA says, whatever the request asked for.
        let (csr, _key) = request(&Identity::Node(1)).unwrap();
        let w = ca.sign_request(&csr, &Identity::Worker("w1".into()), Duration::from_secs(60)).unwrap();
        assert_eq!(peer_of(&certs(&w.cert_pem, "w").unwrap()[0]).unwrap().identity, Identity::Worker("w1".into()));
        assert!(w.key_pem.is_empty());
        // Renewed two thirds into its lifetime from its issue, whatever slack its validity starts with.
        let p = peer_of_pem(&w.cert_pem).unwrap();
        assert!((p.issued_at_ms() - crate::now_ms()).abs() < 2000, "{p:?}");
        assert!((p.renew_at_ms() - (crate::now_ms() + 40_000)).abs() < 2000, "{p:?}");
        assert!(ca.sign_request("not a request", &Identity::Worker("w".into()), Duration::from_secs(1)).is_err());
        ServerTls::new(ca.cert_pem(), &node).unwrap().acceptor(&[b"h2"]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn multi_node_clusters_need_tls_or_insecure() {
        assert!(require_tls(1, false, false).is_ok());
        assert!(require_tls(3, true, false).is_ok());
        assert!(require_tls(3, false, true).is_ok());
        assert!(require_tls(3, false, false).unwrap_err().contains("--insecure"));
    }
}
