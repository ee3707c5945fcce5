//! Prometheus plumbing shared by both binaries.
//!
//! Each binary owns a [`Registry`] (no global default registry, so tests can
//! run two apps side by side) and defines its own metrics; this module only
//! holds the constructors that keep names, help texts and buckets consistent.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Buckets for broker confirms and handler calls: 1 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets for end-to-end and time-to-DLR: 5 ms to 3 days (DLRs can lag by
/// days), fine below a second, where an end-to-end objective such as
/// "99 % within 50 ms" has to be read off a bucket bound.
pub const LONG_LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
    86400.0, 259200.0,
];

/// Creates a registry with process metrics (CPU, RSS, open fds) and the
/// process's dropped-spans counter (`dlr_trace_spans_dropped_total`, see
/// [`crate::telemetry`]) registered.
pub fn new_registry() -> Registry {
    let registry = Registry::new();
    // Registration fails only on a duplicate name, impossible on a fresh registry.
    let _ = registry.register(Box::new(crate::telemetry::spans_dropped()));
    #[cfg(target_os = "linux")]
    {
        // Registration fails only on a duplicate name, impossible on a fresh registry.
        let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
    }
    registry
}

/// Renders the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> (String, Vec<u8>) {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    // Encoding into a Vec only fails on invalid metric data, which the
    // constructors below cannot create.
    let _ = encoder.encode(&registry.gather(), &mut buffer);
    (encoder.format_type().to_owned(), buffer)
}

/// Builds and registers metrics. Registration errors (duplicate names) are
/// programming errors surfaced at start-up, never at request time.
pub struct MetricsBuilder<'a> {
    registry: &'a Registry,
}

impl<'a> MetricsBuilder<'a> {
    /// A builder registering into `registry`.
    pub fn new(registry: &'a Registry) -> Self {
        Self { registry }
    }

    /// A counter vector.
    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    /// A plain counter.
    pub fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        let metric = IntCounter::with_opts(Opts::new(name, help))?;
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    /// A gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        let metric = IntGauge::with_opts(Opts::new(name, help))?;
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    /// A histogram with the given buckets.
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Result<Histogram, prometheus::Error> {
        let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    /// A histogram vector with the given buckets.
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<HistogramVec, prometheus::Error> {
        let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?;
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }
}
