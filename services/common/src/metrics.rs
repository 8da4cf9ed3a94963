//! Prometheus metrics: one registry per process, HTTP request counters and
//! latency histograms, and whatever counters each service registers.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The process's metric registry plus the shared HTTP metrics.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    shared: std::sync::Mutex<std::collections::HashMap<String, IntCounterVec>>,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("parley".into()), None).expect("valid prefix");
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["method", "route", "status_code"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            &["method", "route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique");
        registry
            .register(Box::new(duration.clone()))
            .expect("unique");
        Self {
            inner: Arc::new(Inner {
                registry,
                shared: Default::default(),
                requests,
                duration,
            }),
        }
    }

    /// Registers a counter vector; names are prefixed with `parley_`.
    pub fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let counter = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.inner
            .registry
            .register(Box::new(counter.clone()))
            .expect("metric registered once");
        counter
    }

    /// Registers a gauge; names are prefixed with `parley_`.
    pub fn gauge(&self, name: &str, help: &str) -> prometheus::IntGauge {
        let gauge = prometheus::IntGauge::new(name, help).expect("valid metric");
        self.inner
            .registry
            .register(Box::new(gauge.clone()))
            .expect("metric registered once");
        gauge
    }

    /// A counter vector that several components may ask for: the first call
    /// registers it, later calls get the same one.
    pub fn shared_counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let mut shared = self.inner.shared.lock().expect("metrics lock poisoned");
        if let Some(counter) = shared.get(name) {
            return counter.clone();
        }
        let counter = self.counter(name, help, labels);
        shared.insert(name.to_owned(), counter.clone());
        counter
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.inner.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("exposition is utf-8")
    }
}

/// Middleware recording request count and latency, by method, route
/// template (from the response: [`crate::http::layers`] keeps it there) and
/// status.
pub async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = crate::http::layers::route_label(&response);
    metrics
        .inner
        .requests
        .with_label_values(&[method.as_str(), route, response.status().as_str()])
        .inc();
    metrics
        .inner
        .duration
        .with_label_values(&[method.as_str(), route])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics` handler.
pub async fn exposition(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics.render(),
    )
}
