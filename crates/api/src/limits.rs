//! Per-token limits on calls to a node (the scheduler's auth layer) or a serving front (the gateway, per inference
//! key): a request rate (a token bucket per token) and a number of unary calls in flight. A call over either limit is answered RESOURCE_EXHAUSTED at once, with the wait in its message and in the
//! `retry-after-ms` metadata, before it costs the node anything else; the client's retry rule backs off. Each token
//! has its own bucket, so a client over its limit spends only its own budget, not another client's.
//!
//! The decision is the pure [`take`]; [`Limiter`] holds the buckets. Invariants and limits:
//! - Limits are per node: a client spreading its calls over `n` nodes gets up to `n` times the rate on the nodes that
//!   answer locally. A call a follower relays is counted there and again on the leader (the relay marker comes from
//!   the caller's side of the wire and cannot be trusted to skip the count), so the leader bounds every token.
//! - The root token is never limited (the auth layer does not ask): it is the operator's and the nodes' own (Raft).
//! - The in-flight count covers a call until its answer's headers: a unary call for its whole run, a stream only
//!   until it is established (long-lived streams, such as a worker's assignments, are not capped).
//! - A refused call is held for its retry hint (at least [`HOLD_MIN`], at most [`HOLD_MAX`]) before it is answered,
//!   so a client that ignores the hint and retries at once is slowed to the pace the hint asked for instead of
//!   spending the node's CPU on refusals; at most [`MAX_HELD`] refusals are held at once (beyond that they are
//!   answered at once), and a held refusal keeps nothing of its request.
//! - Memory is bounded: at most [`MAX_KEYS`] buckets; beyond that, buckets idle for a minute are dropped first,
//!   and if none is, the call is admitted without one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most tokens a node tracks at once.
pub const MAX_KEYS: usize = 100_000;
/// Shortest and longest time a refused call is held before its answer.
pub const HOLD_MIN: Duration = Duration::from_millis(50);
pub const HOLD_MAX: Duration = Duration::from_secs(1);
/// Most refused calls held at once, over all tokens.
pub const MAX_HELD: usize = 4096;
/// The metadata key that carries how long to wait, in milliseconds.
pub const RETRY_AFTER_METADATA: &str = "retry-after-ms";

/// Limits for every token (plain data; the binary sets it from flags).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    /// Sustained calls per second per token; 0: no rate limit.
    pub rate_per_sec: f64,
    /// Calls a token may make at once after being idle (the bucket's size); at least 1.
    pub burst: f64,
    /// Unary calls of one token in flight at once; 0: no limit.
    pub max_in_flight: u32,
}

impl Default for LimitConfig {
    /// Generous for people and scripts (a worker's reports, a CLI loop); a runaway client is stopped well before it
    /// starves the node: 1,000 calls/s, bursts of 2,000, 256 unary calls in flight.
    fn default() -> Self {
        LimitConfig { rate_per_sec: 1000.0, burst: 2000.0, max_in_flight: 256 }
    }
}

/// One token's bucket: how many calls it may make now, as of `at` (seconds on the node's monotonic clock).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at: f64,
}

/// Takes one call out of `b` at `now` (seconds): Ok, or Err with how long until one is available. Pure.
pub fn take(b: &mut Bucket, now: f64, cfg: &LimitConfig) -> Result<(), Duration> {
    if cfg.rate_per_sec <= 0.0 {
        return Ok(());
    }
    let burst = cfg.burst.max(1.0);
    b.tokens = (b.tokens + (now - b.at).max(0.0) * cfg.rate_per_sec).min(burst);
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        Ok(())
    } else {
        Err(Duration::from_secs_f64((1.0 - b.tokens) / cfg.rate_per_sec))
    }
}

/// How long a refusal is held before it is answered: its retry hint, within [`HOLD_MIN`]..=[`HOLD_MAX`]. Pure.
pub fn hold_for(r: &Refused) -> Duration {
    match r {
        Refused::Rate { retry_after } => (*retry_after).clamp(HOLD_MIN, HOLD_MAX),
        Refused::InFlight { .. } => HOLD_MIN,
    }
}

/// Why a call was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Rate { retry_after: Duration },
    InFlight { limit: u32 },
}

impl Refused {
    /// RESOURCE_EXHAUSTED naming the limit, with `retry-after-ms`.
    pub fn status(&self, who: &str, cfg: &LimitConfig) -> tonic::Status {
        let (msg, wait) = match self {
            Refused::Rate { retry_after } => (
                format!(
                    "token {who} is over its rate limit ({} calls/s, bursts of {}): retry after {} ms",
                    cfg.rate_per_sec,
                    cfg.burst,
                    retry_after.as_millis().max(1)
                ),
                retry_after.as_millis().max(1),
            ),
            Refused::InFlight { limit } => {
                (format!("token {who} has {limit} calls in flight, its limit: retry after 10 ms"), 10)
            }
        };
        let mut st = tonic::Status::resource_exhausted(msg);
        if let Ok(v) = wait.to_string().parse() {
            st.metadata_mut().insert(RETRY_AFTER_METADATA, v);
        }
        st
    }
}

#[derive(Debug, Default)]
struct Entry {
    bucket: Option<Bucket>,
    in_flight: u32,
}

/// The buckets and in-flight counts of one node.
#[derive(Debug)]
pub struct Limiter {
    cfg: LimitConfig,
    start: Instant,
    keys: Mutex<HashMap<String, Entry>>,
    held: Arc<tokio::sync::Semaphore>,
}

/// Holds one in-flight slot of a token until dropped.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    key: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut keys = self.limiter.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = keys.get_mut(&self.key) {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }
}

impl Limiter {
    pub fn new(cfg: LimitConfig) -> Arc<Limiter> {
        Arc::new(Limiter {
            cfg,
            start: Instant::now(),
            keys: Mutex::new(HashMap::new()),
            held: Arc::new(tokio::sync::Semaphore::new(MAX_HELD)),
        })
    }

    pub fn config(&self) -> &LimitConfig {
        &self.cfg
    }

    /// How long to hold refusal `r`, with the slot that allows it; None: answer at once (too many held already).
    pub fn hold(&self, r: &Refused) -> Option<(Duration, tokio::sync::OwnedSemaphorePermit)> {
        self.held.clone().try_acquire_owned().ok().map(|slot| (hold_for(r), slot))
    }

    /// Admits one call of token `key`, or says which limit it is over.
    pub fn admit(self: &Arc<Self>, key: &str) -> Result<Option<Permit>, Refused> {
        let now = self.start.elapsed().as_secs_f64();
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if !keys.contains_key(key) && keys.len() >= MAX_KEYS {
            let cutoff = now - 60.0;
            keys.retain(|_, e| e.in_flight > 0 || e.bucket.is_some_and(|b| b.at > cutoff));
            if keys.len() >= MAX_KEYS {
                return Ok(None);
            }
        }
        let burst = self.cfg.burst.max(1.0);
        let e = keys.entry(key.to_string()).or_default();
        let b = e.bucket.get_or_insert(Bucket { tokens: burst, at: now });
        if self.cfg.max_in_flight > 0 && e.in_flight >= self.cfg.max_in_flight {
            return Err(Refused::InFlight { limit: self.cfg.max_in_flight });
        }
        take(b, now, &self.cfg).map_err(|retry_after| Refused::Rate { retry_after })?;
        e.in_flight += 1;
        Ok(Some(Permit { limiter: self.clone(), key: key.to_string() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let cfg = LimitConfig { rate_per_sec: 10.0, burst: 3.0, max_in_flight: 0 };
        let mut b = Bucket { tokens: 3.0, at: 0.0 };
        for _ in 0..3 {
            assert!(take(&mut b, 0.0, &cfg).is_ok());
        }
        let wait = take(&mut b, 0.0, &cfg).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(take(&mut b, 0.05, &cfg).is_err(), "half a call refilled");
        assert!(take(&mut b, 0.1, &cfg).is_ok(), "one call refilled");
        // Idle time refills up to the burst, not beyond.
        assert!(take(&mut b, 100.0, &cfg).is_ok());
        assert!((b.tokens - 2.0).abs() < 1e-9);
        // Rate 0: no limit.
        let off = LimitConfig { rate_per_sec: 0.0, ..cfg };
        let mut empty = Bucket { tokens: 0.0, at: 0.0 };
        assert!(take(&mut empty, 0.0, &off).is_ok());
    }

    #[test]
    fn tokens_have_their_own_budgets_and_in_flight_slots() {
        let l = Limiter::new(LimitConfig { rate_per_sec: 0.001, burst: 2.0, max_in_flight: 1 });
        let p = l.admit("a").unwrap();
        assert_eq!(l.admit("a").unwrap_err(), Refused::InFlight { limit: 1 });
        drop(p);
        let _p = l.admit("a").unwrap();
        assert!(l.admit("b").is_ok(), "another token is not affected");
        drop(_p);
        assert!(matches!(l.admit("a"), Err(Refused::Rate { .. })), "a's burst of 2 is spent");
        let st = Refused::Rate { retry_after: Duration::from_millis(250) }.status("t1", l.config());
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        assert_eq!(st.metadata().get(RETRY_AFTER_METADATA).unwrap(), "250");
        assert!(st.message().contains("t1") && st.message().contains("retry after 250 ms"), "{}", st.message());
        assert_eq!(hold_for(&Refused::Rate { retry_after: Duration::from_millis(250) }), Duration::from_millis(250));
        assert_eq!(hold_for(&Refused::Rate { retry_after: Duration::from_millis(1) }), HOLD_MIN);
        assert_eq!(hold_for(&Refused::Rate { retry_after: Duration::from_secs(60) }), HOLD_MAX);
    }
}
