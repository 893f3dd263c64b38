//! Live request rate and latency of a deployment for the dashboard: the leader does not keep them, the replicas
//! do (`/metrics` on their HTTP front, Prometheus text). `GET /v1/deployments/{name}/metrics` scrapes every ready
//! replica once and answers the cumulative counters; the reader takes two answers apart to get rates and
//! latency quantiles over the interval between them (the server stays stateless).
//!
//! Limits: one scrape per replica, [`SCRAPE_TIMEOUT`] each, all at once; at most [`MAX_SCRAPE_BYTES`] read. A
//! replica that does not answer in time is reported with its error, not left out.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

/// How long one replica's scrape may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes of one replica's metrics read.
pub const MAX_SCRAPE_BYTES: usize = 1 << 20;

/// One replica's serving counters, cumulative since it started.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaCounters {
    pub job_id: String,
    /// Requests answered, by outcome (`success`, `failure`, `rejected`).
    pub success: f64,
    pub failure: f64,
    pub rejected: f64,
    /// Request latency: the histogram's sum (seconds), count, and cumulative buckets as `[upper bound, count]`
    /// (the last bound is infinity, written as `null`).
    pub seconds_sum: f64,
    pub seconds_count: f64,
    pub buckets: Vec<(Option<f64>, f64)>,
    /// Why the scrape failed ("" when it worked).
    pub error: String,
}

/// The counters of `aidos_inference_*` in a replica's metrics text (every model version it serves, summed). Pure.
pub fn parse(job_id: &str, text: &str) -> ReplicaCounters {
    let mut c = ReplicaCounters { job_id: job_id.to_string(), ..Default::default() };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = series.split_once('{').map_or((series, ""), |(n, l)| (n, l.trim_end_matches('}')));
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.trim_matches('"')))
        };
        match name {
            "aidos_inference_requests_total" => match label("outcome") {
                Some("success") => c.success += value,
                Some("failure") => c.failure += value,
                Some("rejected") => c.rejected += value,
                _ => {}
            },
            "aidos_inference_request_seconds_sum" => c.seconds_sum += value,
            "aidos_inference_request_seconds_count" => c.seconds_count += value,
            "aidos_inference_request_seconds_bucket" => {
                let le = label("le").and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
                match c.buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some(b) => b.1 += value,
                    None => c.buckets.push((le, value)),
                }
            }
            _ => {}
        }
    }
    c.buckets.sort_by(|a, b| a.0.unwrap_or(f64::INFINITY).total_cmp(&b.0.unwrap_or(f64::INFINITY)));
    c
}

/// Scrapes the replicas `(job id, host:port)` concurrently.
pub async fn scrape_all(replicas: Vec<(String, String)>) -> Vec<ReplicaCounters> {
    // One pool for the node's life: a page polls every 2 s, and its replicas' connections are kept alive between.
    static CLIENT: std::sync::OnceLock<Client<HttpConnector, Empty<bytes::Bytes>>> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| Client::builder(TokioExecutor::new()).build_http());
    let scrapes = replicas.into_iter().map(|(job, addr)| async move {
        match tokio::time::timeout(SCRAPE_TIMEOUT, scrape(client, &addr)).await {
            Ok(Ok(text)) => parse(&job, &text),
            Ok(Err(e)) => ReplicaCounters { job_id: job, error: e, ..Default::default() },
            Err(_) => ReplicaCounters {
                job_id: job,
                error: format!("no answer from {addr} in {SCRAPE_TIMEOUT:?}"),
                ..Default::default()
            },
        }
    });
    futures::future::join_all(scrapes).await
}

async fn scrape(client: &Client<HttpConnector, Empty<bytes::Bytes>>, addr: &str) -> Result<String, String> {
    let uri: hyper::Uri = format!("http://{addr}/metrics").parse().map_err(|e| format!("{addr}: {e}"))?;
    let resp = client.get(uri).await.map_err(|e| format!("{addr}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{addr}: HTTP {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_SCRAPE_BYTES).collect().await.map_err(|e| format!("{addr}: {e}"))?;
    String::from_utf8(body.to_bytes().to_vec()).map_err(|_| format!("{addr}: metrics are not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_of_every_version_are_summed_and_buckets_ordered() {
        let text = r#"# HELP aidos_inference_requests Inference requests by outcome
aidos_inference_requests_total{model="m",version="1",outcome="success"} 10
aidos_inference_requests_total{model="m",version="2",outcome="success"} 5
aidos_inference_requests_total{model="m",version="1",outcome="rejected"} 2
aidos_inference_request_seconds_sum{model="m",version="1"} 0.5
aidos_inference_request_seconds_count{model="m",version="1"} 12
aidos_inference_request_seconds_bucket{le="+Inf",model="m",version="1"} 12
aidos_inference_request_seconds_bucket{le="0.001",model="m",version="1"} 7
aidos_inference_request_seconds_bucket{le="0.001",model="m",version="2"} 1
aidos_gateway_requests_total{model="m"} 99
garbage line
"#;
        let c = parse("job-1", text);
        assert_eq!((c.success, c.rejected, c.failure), (15.0, 2.0, 0.0));
        assert_eq!((c.seconds_sum, c.seconds_count), (0.5, 12.0));
        assert_eq!(c.buckets, vec![(Some(0.001), 8.0), (None, 12.0)]);
        assert_eq!(c.error, "");
    }
}
