//! The one leader-following scheduler client, shared by the worker, the SDK and the CLI.
//!
//! A [`Client`] holds the scheduler addresses it knows (the configured ones plus every leader a follower named)
//! and a cursor on the one believed to serve; one cached [`Channel`](tonic::transport::Channel) per address, connected on first use, presenting the caller's [`Credentials`] on every
//! call ([`AuthChannel`]). Every caller
//! goes through [`Client::call`] for unary calls, and through [`Client::on_failure`] / [`Client::advance`] after
//! a stream broke, so one rule decides what is retried and where the next try goes.
//!
//! Retry rule ([`is_retryable`], [`Client::on_failure`]):
//! - Every status but those that name a problem with the request itself (invalid, not found, stale, refused,
//!   unimplemented, ...) may go away on another node or after a moment, and is retried: UNAVAILABLE, and also
//!   whatever a node that dies mid-call leaves behind (tonic reports a reset HTTP/2 stream as UNKNOWN or INTERNAL
//!   with messages that vary). A worker's completion report lost that way would leave its job RUNNING for ever.
//! - A retryable answer naming the leader (`aidos-leader` metadata, see [`crate::LEADER_METADATA_KEY`]) is followed
//!   at once, without a pause (at most [`MAX_REDIRECTS`] times in a row, so two nodes naming each other cannot
//!   spin); a hinted address not known yet is learned and kept.
//! - Any other retryable failure moves the cursor to the next address. Every address gets one try per round; the
//!   pause ([`Backoff`], doubling from `backoff_min` to `backoff_max`) comes between rounds, and a call gives up
//!   after its budget ([`Config::budget`]; `None`: never) with the last failure.
//!
//! Invariants:
//! - Addresses are kept normalized ([`normalize_addr`]: `http://host:port`, no trailing slash) and validated, so
//!   hints and configured addresses compare equal and a channel can always be built for the cursor's address.
//! - Only a failure observed on the *current* address moves the cursor: concurrent failures against an address
//!   that was already left do not rotate twice (the client is shared, e.g. by all loops of a worker).
//! - A transport failure drops the cached channel of that address (a fresh one reconnects cleanly); a follower's
//!   answer keeps it.
//! - No lock is held across an await: a `call` is cancel-safe (dropping it leaves the client consistent).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use crate::LEADER_METADATA_KEY;
pub use crate::auth::{AuthChannel, Credentials};
pub use crate::contract::normalize_addr;

/// Consecutive leader hints followed without a pause; one more counts as an ordinary failure.
pub const MAX_REDIRECTS: u32 = 3;

/// Fragments of the messages tonic (or a node relaying a broken call) gives transport failures.
/// ("http2 error": hyper's words for a connection that failed under a call, a keep-alive ping left unanswered
/// among them.)
const TRANSPORT_MARKERS: [&str; 8] = [
    "transport",
    "connect",
    "not ready",
    "h2 protocol error",
    "http2 error",
    "broken pipe",
    "stream closed",
    "timeout expired",
];

/// How one caller wants its calls retried. The rule is the same for everyone (module docs); these are its limits.
#[derive(Debug, Clone)]
pub struct Config {
    /// Deadline of establishing a connection.
    pub connect_timeout: Duration,
    /// Deadline of one try of a unary call, enforced here (a stuck call on a dead node's connection then fails as
    /// a transport error and the next address is tried). `None`: no deadline (the caller sets its own).
    pub attempt_timeout: Option<Duration>,
    /// How long one call keeps retrying before it returns the last failure. `None`: until it succeeds.
    pub budget: Option<Duration>,
    /// The first pause between rounds of addresses...
    pub backoff_min: Duration,
    /// ... doubling up to this.
    pub backoff_max: Duration,
    /// HTTP/2 keep-alive pings (also while idle), to notice a dead node under a long-lived stream.
    pub keep_alive: Option<Duration>,
    /// How long a keep-alive ping may go unanswered before the connection is dropped. `None`: the interval. (A ping
    /// waits behind the data already queued on the connection, so a slow link needs a longer timeout.)
    pub keep_alive_timeout: Option<Duration>,
    /// Largest message the caller's service clients should accept and send ([`Client::max_message`]); tonic's
    /// default is 4 MiB. A channel has no such limit; the generated clients take it.
    pub max_message: usize,
    /// Log the first and every 30th failed try of a call at WARN (a daemon's operator wants to know); DEBUG
    /// otherwise.
    pub warn_on_retry: bool,
    /// The token (and project) presented on every call.
    pub credentials: Credentials,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            connect_timeout: Duration::from_secs(2),
            attempt_timeout: None,
            budget: Some(Duration::from_secs(10)),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            keep_alive: None,
            keep_alive_timeout: None,
            max_message: 4 << 20,
            warn_on_retry: false,
            credentials: Credentials::default(),
        }
    }
}

/// A client that cannot be built from its addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("no scheduler address given")]
    NoAddress,
    #[error("bad scheduler address `{addr}`: {reason}")]
    BadAddress { addr: String, reason: String },
}

/// Whether retrying a scheduler call (possibly on another node) may help: everything but answers that name a
/// problem with the request itself. The one definition for every client (see the module docs for why it is broad).
pub fn is_retryable(st: &Status) -> bool {
    !matches!(
        st.code(),
        Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::Unimplemented
            | Code::OutOfRange
    )
}

/// Whether the status describes the connection rather than an answer of a node.
pub fn is_transport_error(st: &Status) -> bool {
    let m = st.message().to_ascii_lowercase();
    TRANSPORT_MARKERS.iter().any(|s| m.contains(s))
}

/// The leader address a follower put in its answer, if any (normalized).
pub fn leader_hint(st: &Status) -> Option<String> {
    let v = st.metadata().get(LEADER_METADATA_KEY)?.to_str().ok()?.trim();
    if v.is_empty() { None } else { Some(normalize_addr(v)) }
}

/// What the caller should do after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Not retryable: give the status to the caller.
    Fatal,
    /// Switched to a hinted leader: retry right away.
    Redirected,
    /// Moved on (or stayed) after a transport/availability error: retry, pausing between rounds.
    Retry,
}

/// Exponential backoff: `min`, doubling, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max: max.max(min), next: min }
    }
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// One call's progress through the retry rule: when to pause, and for how long.
#[derive(Debug)]
struct Tries {
    backoff: Backoff,
    /// Failed tries in the current round of addresses.
    in_round: usize,
    /// Consecutive redirects.
    redirects: u32,
    /// Failed tries in all (redirects followed at once not counted).
    failures: u32,
}

impl Tries {
    fn new(cfg: &Config) -> Tries {
        Tries { backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max), in_round: 0, redirects: 0, failures: 0 }
    }

    /// Records a retryable failure; the pause before the next try (`None`: retry at once).
    fn after(&mut self, failure: Failure, addrs: usize) -> Option<Duration> {
        if failure == Failure::Redirected && self.redirects < MAX_REDIRECTS {
            self.redirects += 1;
            return None;
        }
        self.redirects = 0;
        self.failures += 1;
        self.in_round += 1;
        if self.in_round < addrs {
            return None;
        }
        self.in_round = 0;
        Some(self.backoff.next_delay())
    }
}

struct Inner {
    addrs: Vec<String>,
    current: usize,
    channels: HashMap<String, AuthChannel>,
    /// The TLS identity's generation the cached channels were made at (`tls::ClientTls::generation`).
    generation: u64,
}

/// The shared leader-following scheduler client (see the module docs). `Send + Sync`; share it by reference or
/// in an `Arc`.
pub struct Client {
    cfg: Config,
    inner: Mutex<Inner>,
}

impl Client {
    /// A client over `addrs` (`host:port` or URLs; an entry may hold several, comma-separated). Connects lazily.
    pub fn new(addrs: &[String], cfg: Config) -> Result<Client, ClientError> {
        let mut list: Vec<String> = Vec::new();
        for a in addrs.iter().flat_map(|a| a.split(',')).map(str::trim).filter(|a| !a.is_empty()) {
            let n = normalize_addr(a);
            cfg.credentials
                .endpoint(&n)
                .map_err(|e| ClientError::BadAddress { addr: a.to_string(), reason: e.to_string() })?;
            if !list.contains(&n) {
                list.push(n);
            }
        }
        if list.is_empty() {
            return Err(ClientError::NoAddress);
        }
        let inner = Inner { addrs: list, current: 0, channels: HashMap::new(), generation: 0 };
        Ok(Client { cfg, inner: Mutex::new(inner) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`Self::lock`], having dropped the cached channels if the TLS identity was rotated since they were made: a
    /// connection presents the certificate of its handshake for as long as it lives, so after a renewal the next
    /// calls go over new connections (calls and streams already under way finish on the old ones).
    fn lock_current(&self) -> MutexGuard<'_, Inner> {
        let mut g = self.lock();
        let generation = self.cfg.credentials.tls.as_ref().map_or(0, |t| t.generation());
        if g.generation != generation {
            g.channels.clear();
            g.generation = generation;
        }
        g
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The message size limit the caller's service clients should take ([`Config::max_message`]).
    pub fn max_message(&self) -> usize {
        self.cfg.max_message
    }

    /// The address currently believed to serve (the leader, once a follower named it).
    pub fn current(&self) -> String {
        let g = self.lock();
        g.addrs[g.current].clone()
    }

    /// All known addresses: the configured ones, then the leaders learned from hints.
    pub fn known(&self) -> Vec<String> {
        self.lock().addrs.clone()
    }

    fn endpoint(&self, addr: &str) -> Endpoint {
        let mut ep = self
            .cfg
            .credentials
            .endpoint(addr)
            .expect("validated when added")
            .connect_timeout(self.cfg.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(crate::HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(crate::HTTP2_CONNECTION_WINDOW)
            .max_frame_size(crate::HTTP2_MAX_FRAME_SIZE);
        if let Some(k) = self.cfg.keep_alive {
            let timeout = self.cfg.keep_alive_timeout.unwrap_or(k);
            ep = ep.http2_keep_alive_interval(k).keep_alive_timeout(timeout).keep_alive_while_idle(true);
        }
        ep
    }

    /// The current address and its channel, created (not connected) if it is not cached yet: the connection is
    /// made by its first request. For streams; must be called inside a tokio runtime.
    pub fn channel(&self) -> (String, AuthChannel) {
        let mut g = self.lock_current();
        let addr = g.addrs[g.current].clone();
        if let Some(c) = g.channels.get(&addr) {
            return (addr, c.clone());
        }
        let ch = self.cfg.credentials.connect_lazy(&self.endpoint(&addr));
        let ch = crate::auth::with_credentials(ch, &self.cfg.credentials);
        g.channels.insert(addr.clone(), ch.clone());
        (addr, ch)
    }

    /// The current address and its channel, connecting one if it is not cached yet (so a dead node fails within
    /// the connect timeout, with an error that names it, and a connection made here is ready before the call).
    async fn connected(&self) -> (String, Result<AuthChannel, Status>) {
        let addr = {
            let g = self.lock_current();
            let addr = g.addrs[g.current].clone();
            if let Some(c) = g.channels.get(&addr) {
                return (addr, Ok(c.clone()));
            }
            addr
        };
        match self.cfg.credentials.connect(&self.endpoint(&addr)).await {
            // Another caller may have cached one meanwhile: keep one channel per address.
            Ok(ch) => {
                let ch = crate::auth::with_credentials(ch, &self.cfg.credentials);
                let ch = self.lock().channels.entry(addr.clone()).or_insert(ch).clone();
                (addr, Ok(ch))
            }
            Err(e) => {
                let st = Status::unavailable(format!("cannot connect to scheduler at {addr}: {}", error_chain(&e)));
                (addr, Err(st))
            }
        }
    }

    /// Drops the current channel and moves on to the next address (after a stream broke without a status, say).
    pub fn advance(&self) {
        let mut g = self.lock();
        let addr = g.addrs[g.current].clone();
        g.channels.remove(&addr);
        g.current = (g.current + 1) % g.addrs.len();
    }

    /// Records a failed try made against `used` and says what to do next: follow a leader hint, rotate to the next
    /// known address, or give up (not retryable). See the module docs.
    pub fn on_failure(&self, used: &str, status: &Status) -> Failure {
        if !is_retryable(status) {
            return Failure::Fatal;
        }
        let hint = leader_hint(status).filter(|h| h != used && Endpoint::from_shared(h.clone()).is_ok());
        let mut g = self.lock();
        if let Some(hint) = hint {
            let idx = match g.addrs.iter().position(|a| *a == hint) {
                Some(i) => i,
                None => {
                    tracing::info!("learned scheduler leader address {hint}");
                    g.addrs.push(hint.clone());
                    g.addrs.len() - 1
                }
            };
            if g.current != idx {
                tracing::debug!("following leader hint {used} -> {hint}");
                g.current = idx;
            }
            return Failure::Redirected;
        }
        if is_transport_error(status) {
            g.channels.remove(used);
        }
        if g.addrs[g.current] == used && g.addrs.len() > 1 {
            g.current = (g.current + 1) % g.addrs.len();
        }
        Failure::Retry
    }

    /// Runs one unary call by the retry rule of the module docs: until it succeeds, fails with a non-retryable
    /// status, or the budget is spent (then the last retryable status is returned: [`is_retryable`] tells the
    /// two apart). `f` builds the call from a channel and may be invoked several times; `what` names the call in
    /// logs.
    pub async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, Status>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = self.cfg.budget.map(|b| Instant::now() + b);
        let mut tries = Tries::new(&self.cfg);
        loop {
            let (addr, channel) = self.connected().await;
            let res = match (channel, self.cfg.attempt_timeout) {
                (Err(st), _) => Err(st),
                (Ok(ch), None) => f(ch).await,
                (Ok(ch), Some(t)) => match tokio::time::timeout(t, f(ch)).await {
                    Ok(r) => r,
                    // A transport error: the channel is dropped and the next address tried.
                    Err(_) => Err(Status::unavailable(format!("transport: no answer within {t:?}"))),
                },
            };
            let status = match res {
                Ok(v) => {
                    if tries.failures > 0 {
                        tracing::info!("{what}: succeeded against {addr} after {} failed tries", tries.failures);
                    }
                    return Ok(v);
                }
                Err(st) => st,
            };
            let failure = self.on_failure(&addr, &status);
            if failure == Failure::Fatal {
                return Err(status);
            }
            let n = tries.failures + 1;
            if self.cfg.warn_on_retry && (n == 1 || n.is_multiple_of(30)) {
                tracing::warn!("{what} via {addr} failed ({}: {}); retrying", status.code(), status.message());
            } else {
                tracing::debug!("{what} via {addr} failed ({}: {}); retrying", status.code(), status.message());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(status);
            }
            let pause = tries.after(failure, self.lock().addrs.len());
            if let Some(p) = pause {
                let p = deadline.map_or(p, |d| p.min(d - now));
                tokio::time::sleep(p).await;
            }
        }
    }
}

/// `e` and its sources, each once (tonic's connect errors nest the useful part: "connection refused").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tonic::metadata::MetadataValue;
    use tonic::{Request, Response};

    use super::*;
    use crate::cluster_service_client::ClusterServiceClient;
    use crate::cluster_service_server::{ClusterService, ClusterServiceServer};
    use crate::{
        AddNodeRequest, ClusterStatus, ClusterStatusRequest, ListWorkersRequest, ListWorkersResponse, RemoveNodeRequest,
    };

    fn unavailable(hint: Option<&str>) -> Status {
        let mut s = Status::unavailable("not the leader");
        if let Some(h) = hint {
            s.metadata_mut().insert(LEADER_METADATA_KEY, MetadataValue::try_from(h).unwrap());
        }
        s
    }

    fn client(addrs: &[&str]) -> Client {
        Client::new(&addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(), Config::default()).unwrap()
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize_addr("127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(normalize_addr("http://h:1/"), "http://h:1");
        assert_eq!(normalize_addr("https://h:1"), "https://h:1");
    }

    #[test]
    fn addresses_are_normalized_and_deduplicated() {
        let c = client(&["127.0.0.1:1", "http://127.0.0.1:1/", "https://h:2"]);
        assert_eq!(c.known(), vec!["http://127.0.0.1:1".to_string(), "https://h:2".to_string()]);
    }

    #[test]
    fn follows_hints_and_rotates() {
        let c = client(&["a:1", "b:2"]);
        assert_eq!(c.current(), "http://a:1");
        // Unavailable without hint: rotate.
        assert_eq!(c.on_failure("http://a:1", &unavailable(None)), Failure::Retry);
        assert_eq!(c.current(), "http://b:2");
        // A stale failure against an address we already left does not rotate again.
        assert_eq!(c.on_failure("http://a:1", &unavailable(None)), Failure::Retry);
        assert_eq!(c.current(), "http://b:2");
        // A hint to an unknown address is learned and followed.
        assert_eq!(c.on_failure("http://b:2", &unavailable(Some("c:3"))), Failure::Redirected);
        assert_eq!(c.current(), "http://c:3");
        assert_eq!(c.known().len(), 3);
        // A hint to a known one does not duplicate it.
        assert_eq!(c.on_failure("http://c:3", &unavailable(Some("http://a:1"))), Failure::Redirected);
        assert_eq!(c.current(), "http://a:1");
        assert_eq!(c.known().len(), 3);
        // Non-retryable codes are fatal and do not move the cursor.
        assert_eq!(c.on_failure("http://a:1", &Status::failed_precondition("stale")), Failure::Fatal);
        assert_eq!(c.on_failure("http://a:1", &Status::not_found("nope")), Failure::Fatal);
        assert_eq!(c.current(), "http://a:1");
        // A hint naming the address just used is no redirect: rotate.
        assert_eq!(c.on_failure("http://a:1", &unavailable(Some("a:1"))), Failure::Retry);
        assert_eq!(c.current(), "http://b:2");
        // advance() rotates unconditionally.
        c.advance();
        assert_eq!(c.current(), "http://c:3");
        c.advance();
        assert_eq!(c.current(), "http://a:1");
    }

    #[test]
    fn rejects_empty_config() {
        assert_eq!(Client::new(&[], Config::default()).err(), Some(ClientError::NoAddress));
        assert_eq!(Client::new(&[" ".into()], Config::default()).err(), Some(ClientError::NoAddress));
        assert_eq!(client(&["a:1,b:2"]).known().len(), 2);
        assert!(matches!(Client::new(&["a b:1".into()], Config::default()), Err(ClientError::BadAddress { .. })));
    }

    #[test]
    fn retryable_is_everything_but_a_problem_with_the_request() {
        assert!(is_retryable(&Status::unavailable("no leader")));
        assert!(is_retryable(&Status::unknown("transport error")));
        assert!(is_retryable(&Status::internal("h2 protocol error: connection reset")));
        assert!(is_retryable(&Status::cancelled("Timeout expired")));
        assert!(is_retryable(&Status::deadline_exceeded("transport: no answer within 5s")));
        // What a leader killed mid-call leaves behind varies: it must be retried, whatever the message says.
        assert!(is_retryable(&Status::unknown("error reading a body from connection")));
        assert!(is_retryable(&Status::internal("storage: disk full")));
        assert!(is_retryable(&Status::resource_exhausted("slow down")));
        for code in [
            Code::Ok,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::OutOfRange,
        ] {
            assert!(!is_retryable(&Status::new(code, "transport error")), "{code:?}");
        }
    }

    #[test]
    fn hints_only_on_retryable_answers_and_normalized() {
        assert_eq!(leader_hint(&unavailable(Some(" b:2 "))), Some("http://b:2".into()));
        assert_eq!(leader_hint(&unavailable(Some(""))), None);
        assert_eq!(leader_hint(&unavailable(None)), None);
        let c = client(&["a:1"]);
        let mut refused = Status::failed_precondition("stale");
        refused.metadata_mut().insert(LEADER_METADATA_KEY, MetadataValue::try_from("b:2").unwrap());
        assert_eq!(c.on_failure("http://a:1", &refused), Failure::Fatal);
        assert_eq!(c.known().len(), 1);
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let d: Vec<_> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 500, 500, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn pauses_between_rounds_and_bounds_redirects() {
        let cfg = Config {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(300),
            ..Config::default()
        };
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        let mut t = Tries::new(&cfg);
        // Three addresses: two failures go on at once, the third ends the round and pauses.
        assert_eq!(ms(t.after(Failure::Retry, 3)), None);
        assert_eq!(ms(t.after(Failure::Retry, 3)), None);
        assert_eq!(ms(t.after(Failure::Retry, 3)), Some(100));
        assert_eq!(ms(t.after(Failure::Retry, 3)), None);
        // Redirects are followed at once, MAX_REDIRECTS in a row; the next one counts as a failure.
        for _ in 0..MAX_REDIRECTS {
            assert_eq!(ms(t.after(Failure::Redirected, 3)), None);
        }
        assert_eq!(ms(t.after(Failure::Redirected, 3)), None);
        assert_eq!(ms(t.after(Failure::Retry, 3)), Some(200));
        assert_eq!(t.failures, 6);
        // One address: every failure ends a round.
        assert_eq!(ms(t.after(Failure::Retry, 1)), Some(300));
        assert_eq!(ms(t.after(Failure::Retry, 1)), Some(300));
    }

    #[test]
    fn gives_up_after_the_budget_with_the_last_failure() {
        // Nothing listens on these ports (bound then dropped).
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let cfg = Config { budget: Some(Duration::from_millis(700)), ..Config::default() };
        let c = Client::new(&[free(), free()], cfg).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let t = std::time::Instant::now();
        let mut tries = 0;
        let err = rt
            .block_on(c.call("ClusterService.Status", |ch| {
                tries += 1;
                async move { ClusterServiceClient::new(ch).status(ClusterStatusRequest::default()).await }
            }))
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(is_retryable(&err), "{err:?}");
        assert!(err.message().contains("cannot connect to scheduler at"), "{err:?}");
        assert_eq!(tries, 0, "no call is made without a connection");
    }

    /// A node answering `Status`: the leader, or a follower naming `hint`. Everything else is UNIMPLEMENTED.
    struct Node {
        hint: Option<String>,
        calls: Arc<AtomicU32>,
    }

    #[tonic::async_trait]
    impl ClusterService for Node {
        async fn status(&self, _: Request<ClusterStatusRequest>) -> Result<Response<ClusterStatus>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match &self.hint {
                Some(h) => Err(unavailable(Some(h))),
                None => Ok(Response::new(ClusterStatus { node_id: 7, ..Default::default() })),
            }
        }
        async fn add_node(&self, _: Request<AddNodeRequest>) -> Result<Response<ClusterStatus>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(Status::unimplemented("no"))
        }
        async fn remove_node(&self, _: Request<RemoveNodeRequest>) -> Result<Response<ClusterStatus>, Status> {
            Err(Status::unimplemented("no"))
        }
        async fn list_workers(&self, _: Request<ListWorkersRequest>) -> Result<Response<ListWorkersResponse>, Status> {
            Err(Status::unimplemented("no"))
        }
        async fn revoke_worker(
            &self,
            _: Request<crate::RevokeWorkerRequest>,
        ) -> Result<Response<crate::RevokeWorkerResponse>, Status> {
            Err(Status::unimplemented("no"))
        }
    }

    async fn serve(hint: Option<String>) -> (String, Arc<AtomicU32>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let calls = Arc::new(AtomicU32::new(0));
        let svc = ClusterServiceServer::new(Node { hint, calls: calls.clone() });
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
        tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming));
        (addr, calls)
    }

    #[tokio::test]
    async fn calls_follow_the_hint_at_once_and_return_refusals() {
        let (leader, on_leader) = serve(None).await;
        let (follower, on_follower) = serve(Some(leader.clone())).await;
        let cfg = Config { backoff_min: Duration::from_secs(60), ..Config::default() };
        let c = Client::new(std::slice::from_ref(&follower), cfg).unwrap();
        let status = |ch| async move { ClusterServiceClient::new(ch).status(ClusterStatusRequest::default()).await };
        // The follower names the leader: followed without a pause (the backoff would take a minute), and learned.
        let st = tokio::time::timeout(Duration::from_secs(10), c.call("Status", status)).await.unwrap().unwrap();
        assert_eq!(st.into_inner().node_id, 7);
        assert_eq!((on_follower.load(Ordering::SeqCst), on_leader.load(Ordering::SeqCst)), (1, 1));
        assert_eq!(c.current(), normalize_addr(&leader));
        assert_eq!(c.known(), vec![normalize_addr(&follower), normalize_addr(&leader)]);
        // A refusal about the request comes back at once, after one try, and the cursor stays.
        let mut tries = 0;
        let err = c
            .call("AddNode", |ch| {
                tries += 1;
                async move { ClusterServiceClient::new(ch).add_node(AddNodeRequest::default()).await }
            })
            .await
            .unwrap_err();
        assert_eq!((err.code(), tries), (Code::Unimplemented, 1));
        assert_eq!(c.current(), normalize_addr(&leader));
    }
}
