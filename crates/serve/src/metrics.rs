//! Prometheus metrics (`GET /metrics`), per model and version:
//! `aidos_inference_requests_total{model,version,outcome}`, histograms `aidos_inference_queue_seconds`,
//! `aidos_inference_compute_seconds`, `aidos_inference_request_seconds`, `aidos_inference_batch_size`, and the
//! gauge `aidos_inference_queue_depth`.
//!
//! A gateway adds, per deployment (model), version and replica: `aidos_gateway_requests_total{model,version,
//! replica,outcome}` (outcome `ok`: the replica answered 2xx; `refused`: it answered with an error, passed on to
//! the client; `failed`: it could not be reached or broke the connection, and the request was tried elsewhere),
//! `aidos_gateway_retries_total{model,version}`, `aidos_gateway_unavailable_total{model,version}` (no replica
//! could run a request), the histogram `aidos_gateway_request_seconds{model,version}` (arrival to the replica's
//! response head) and the gauge `aidos_gateway_in_flight{model,version,replica}`.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    model: String,
    version: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    model: String,
    version: String,
    replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaOutcomeLabels {
    model: String,
    version: String,
    replica: String,
    outcome: &'static str,
}

type HistFamily = Family<ModelLabels, Histogram, fn() -> Histogram>;

/// The gateway's series (cheap clones: each family is shared).
#[derive(Clone)]
pub struct GatewaySeries {
    requests: Family<ReplicaOutcomeLabels, Counter>,
    in_flight: Family<ReplicaLabels, Gauge>,
    retries: Family<ModelLabels, Counter>,
    unavailable: Family<ModelLabels, Counter>,
    seconds: HistFamily,
}

/// One routed model version's gateway series.
#[derive(Clone)]
pub struct GatewayModelMetrics {
    pub retries: Counter,
    pub unavailable: Counter,
    pub seconds: Histogram,
}

/// One replica's gateway series.
#[derive(Clone)]
pub struct GatewayReplicaMetrics {
    pub ok: Counter,
    pub refused: Counter,
    pub failed: Counter,
    pub in_flight: Gauge,
}

const OUTCOMES: [&str; 3] = ["ok", "refused", "failed"];

impl GatewaySeries {
    pub fn model(&self, model: &str, version: u64) -> GatewayModelMetrics {
        let l = ModelLabels { model: model.into(), version: version.to_string() };
        let retries = self.retries.get_or_create(&l).clone();
        let unavailable = self.unavailable.get_or_create(&l).clone();
        let seconds = self.seconds.get_or_create(&l).clone();
        GatewayModelMetrics { retries, unavailable, seconds }
    }

    pub fn replica(&self, model: &str, version: u64, replica: &str) -> GatewayReplicaMetrics {
        let o = |outcome| ReplicaOutcomeLabels {
            model: model.into(),
            version: version.to_string(),
            replica: replica.into(),
            outcome,
        };
        let [ok, refused, failed] = OUTCOMES.map(|x| self.requests.get_or_create(&o(x)).clone());
        let l = ReplicaLabels { model: model.into(), version: version.to_string(), replica: replica.into() };
        let in_flight = self.in_flight.get_or_create(&l).clone();
        GatewayReplicaMetrics { ok, refused, failed, in_flight }
    }

    /// Drops a replica's series (it left the pool): a gateway that outlives many rollouts does not keep every
    /// replica it ever routed to.
    pub fn forget_replica(&self, model: &str, version: u64, replica: &str) {
        for outcome in OUTCOMES {
            self.requests.remove(&ReplicaOutcomeLabels {
                model: model.into(),
                version: version.to_string(),
                replica: replica.into(),
                outcome,
            });
        }
        self.in_flight.remove(&ReplicaLabels {
            model: model.into(),
            version: version.to_string(),
            replica: replica.into(),
        });
    }

    /// Drops a model version's series (the gateway stopped routing it).
    pub fn forget_model(&self, model: &str, version: u64) {
        let l = ModelLabels { model: model.into(), version: version.to_string() };
        self.retries.remove(&l);
        self.unavailable.remove(&l);
        self.seconds.remove(&l);
    }
}

/// The server's metric registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<OutcomeLabels, Counter>,
    queue: HistFamily,
    compute: HistFamily,
    total: HistFamily,
    batch: HistFamily,
    depth: Family<ModelLabels, Gauge>,
    gateway: GatewaySeries,
    /// Request-microseconds spent in the models (arrival to answer), summed over every request: its growth over a
    /// window divided by the window is the mean number of requests in flight (Little's law), what a replica
    /// reports for autoscaling.
    busy_us: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn latency() -> Histogram {
    // 20 us .. ~5 s
    Histogram::new(exponential_buckets(20e-6, 2.0, 19))
}

fn batch_sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            queue: Family::new_with_constructor(latency),
            compute: Family::new_with_constructor(latency),
            total: Family::new_with_constructor(latency),
            batch: Family::new_with_constructor(batch_sizes),
            depth: Family::default(),
            busy_us: Default::default(),
            gateway: GatewaySeries {
                requests: Family::default(),
                in_flight: Family::default(),
                retries: Family::default(),
                unavailable: Family::default(),
                seconds: Family::new_with_constructor(latency),
            },
        };
        {
            let mut r = m.registry.lock().unwrap();
            r.register("aidos_inference_requests", "Inference requests by outcome", m.requests.clone());
            r.register("aidos_inference_queue_seconds", "Time from arrival to batch dispatch", m.queue.clone());
            r.register("aidos_inference_compute_seconds", "Runtime time per batch", m.compute.clone());
            r.register("aidos_inference_request_seconds", "Time from arrival to answer", m.total.clone());
            r.register("aidos_inference_batch_size", "Rows per executed batch", m.batch.clone());
            r.register("aidos_inference_queue_depth", "Requests waiting", m.depth.clone());
            let g = &m.gateway;
            r.register(
                "aidos_gateway_requests",
                "Requests the gateway sent to a replica, by outcome",
                g.requests.clone(),
            );
            r.register("aidos_gateway_in_flight", "Requests waiting for a replica's answer", g.in_flight.clone());
            r.register("aidos_gateway_retries", "Requests sent to another replica after a failure", g.retries.clone());
            r.register("aidos_gateway_unavailable", "Requests no replica could run", g.unavailable.clone());
            r.register("aidos_gateway_request_seconds", "Time from arrival to a replica's answer", g.seconds.clone());
        }
        m
    }
}

impl Metrics {
    /// Handles for one model version (cheap clones of the shared series).
    pub fn model(&self, model: &str, version: &str) -> ModelMetrics {
        let l = ModelLabels { model: model.into(), version: version.into() };
        let o = |outcome| OutcomeLabels { model: model.into(), version: version.into(), outcome };
        // One statement per series: `get_or_create` returns a read guard, and a second insertion into the same
        // family while a guard from the first is alive (a temporary of the same statement) deadlocks.
        let success = self.requests.get_or_create(&o("success")).clone();
        let failure = self.requests.get_or_create(&o("failure")).clone();
        let rejected = self.requests.get_or_create(&o("rejected")).clone();
        let queue = self.queue.get_or_create(&l).clone();
        let compute = self.compute.get_or_create(&l).clone();
        let total = self.total.get_or_create(&l).clone();
        let batch = self.batch.get_or_create(&l).clone();
        let depth = self.depth.get_or_create(&l).clone();
        ModelMetrics { success, failure, rejected, queue, compute, total, batch, depth, busy_us: self.busy_us.clone() }
    }

    /// Request-seconds spent in every model so far (see the field's docs).
    pub fn busy_seconds(&self) -> f64 {
        self.busy_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6
    }

    /// The gateway's series.
    pub fn gateway(&self) -> GatewaySeries {
        self.gateway.clone()
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry.lock().unwrap()).expect("writing to a String");
        s
    }
}

/// One model version's series.
#[derive(Clone)]
pub struct ModelMetrics {
    pub success: Counter,
    pub failure: Counter,
    pub rejected: Counter,
    pub queue: Histogram,
    pub compute: Histogram,
    pub total: Histogram,
    pub batch: Histogram,
    pub depth: Gauge,
    pub busy_us: std::sync::Arc<std::sync::atomic::AtomicU64>,
}
