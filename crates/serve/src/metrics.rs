//! Prometheus metrics (`GET /metrics`), per model and version:
//! `aidos_inference_requests_total{model,version,outcome}`, histograms `aidos_inference_queue_seconds`,
//! `aidos_inference_compute_seconds`, `aidos_inference_request_seconds`, `aidos_inference_batch_size`, and the
//! gauge `aidos_inference_queue_depth`.

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

type HistFamily = Family<ModelLabels, Histogram, fn() -> Histogram>;

/// The server's metric registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<OutcomeLabels, Counter>,
    queue: HistFamily,
    compute: HistFamily,
    total: HistFamily,
    batch: HistFamily,
    depth: Family<ModelLabels, Gauge>,
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
        };
        {
            let mut r = m.registry.lock().unwrap();
            r.register("aidos_inference_requests", "Inference requests by outcome", m.requests.clone());
            r.register("aidos_inference_queue_seconds", "Time from arrival to batch dispatch", m.queue.clone());
            r.register("aidos_inference_compute_seconds", "Runtime time per batch", m.compute.clone());
            r.register("aidos_inference_request_seconds", "Time from arrival to answer", m.total.clone());
            r.register("aidos_inference_batch_size", "Rows per executed batch", m.batch.clone());
            r.register("aidos_inference_queue_depth", "Requests waiting", m.depth.clone());
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
        ModelMetrics { success, failure, rejected, queue, compute, total, batch, depth }
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
}
