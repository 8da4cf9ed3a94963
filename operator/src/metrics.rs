//! Prometheus metrics of the operator, served at `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The operator's metrics and their registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by outcome (`ok`, or the error's reason).
    pub reconciles: IntCounterVec,
    /// Reconcile duration in seconds.
    pub duration: HistogramVec,
    /// 1 while this replica holds the leader lease (always 1 without election).
    pub leader: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new_custom(Some("parley_operator".into()), None)
            .expect("a valid metric prefix");
        let reconciles = IntCounterVec::new(
            Opts::new("reconciles_total", "Reconciles by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Reconcile duration")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &[],
        )
        .expect("valid metric");
        let leader =
            IntGauge::new("leader", "1 while this replica reconciles").expect("valid metric");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Metrics {
            registry,
            reconciles,
            duration,
            leader,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("metrics encode");
        String::from_utf8(buffer).expect("metrics are UTF-8")
    }
}
