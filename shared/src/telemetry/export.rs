//! The OTLP pipeline: the SDK's batch processor on its own thread, behind
//! an admission count that drops (and counts) spans instead of ever making
//! a receipt wait for a collector.
//!
//! The SDK's `BatchSpanProcessor` already never blocks the caller: a full
//! queue drops the span. But it counts drops only privately and logs the
//! first one, so an operator could not see that traces are incomplete.
//! [`Admission`] therefore keeps its own count of spans handed to the
//! processor and not yet handed to the exporter, bounded by the same
//! `OTEL_BSP_MAX_QUEUE_SIZE`; the processor's queue can then never be the
//! one that overflows, and every span lost is counted here, by reason, in
//! `dlr_trace_spans_dropped_total` (a full queue, or a failed export).

use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use prometheus::IntCounterVec;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use super::LogEvery;
use super::TelemetryError;
use super::config::{OtlpProtocol, TracingConfig};

/// How long the last spans may take to leave at shutdown: a collector that
/// is down must not hold up a deploy.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

/// Why a span never reached the collector (the `reason` label).
const QUEUE_FULL: &str = "queue_full";
const EXPORT_FAILED: &str = "export_failed";

/// `dlr_trace_spans_dropped_total{reason}`: one counter per process, which
/// each binary registers in its own registry ([`spans_dropped`]).
static SPANS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let counter = IntCounterVec::new(
        prometheus::Opts::new(
            "dlr_trace_spans_dropped_total",
            "Finished spans not exported: the export queue was full (queue_full) or the collector did not take them (export_failed).",
        ),
        &["reason"],
    );
    // The name and label are constants that prometheus accepts; a failure
    // here is a programming error that the unit tests catch.
    #[allow(clippy::expect_used)]
    let counter = counter.expect("a valid metric definition");
    for reason in [QUEUE_FULL, EXPORT_FAILED] {
        counter.with_label_values(&[reason]);
    }
    counter
});

/// The dropped-spans counter, for a binary to register (it exists, at 0,
/// with export off too, so dashboards and alerts need no special case).
pub fn spans_dropped() -> IntCounterVec {
    SPANS_DROPPED.clone()
}

/// Flushes and stops the exporter at the end of `main`.
#[must_use = "call shutdown() before the process exits, or the last spans are lost"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    pub(super) fn off() -> Self {
        Self { provider: None }
    }

    /// Exports what is queued, waiting at most a few seconds (on a thread
    /// of its own: the SDK's shutdown blocks).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_FLUSH));
        if let Ok(Err(error)) = flushed.await {
            tracing::warn!(%error, "the last spans were not exported before exit");
        }
    }
}

/// The tracer provider for `config` (which must be exporting), and the
/// guard that shuts it down. Must run inside the Tokio runtime: the gRPC
/// exporter binds its channel to it.
pub(super) fn pipeline(
    config: &TracingConfig,
    default_service: &str,
) -> Result<(SdkTracerProvider, TelemetryGuard), TelemetryError> {
    let exporter = match config.protocol {
        OtlpProtocol::HttpProtobuf => {
            let builder =
                opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary);
            match config.export_timeout {
                Some(timeout) => builder.with_timeout(timeout).build(),
                None => builder.build(),
            }
        }
        OtlpProtocol::Grpc => {
            let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            match config.export_timeout {
                Some(timeout) => builder.with_timeout(timeout).build(),
                None => builder.build(),
            }
        }
    }
    .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
    let limit = config.max_queue_size;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(limit)
        .with_scheduled_delay(config.schedule_delay)
        .with_max_export_batch_size(config.max_export_batch_size.min(limit))
        .build();
    let pending = Arc::new(AtomicUsize::new(0));
    let exporter = Counted { inner: exporter, pending: pending.clone() };
    let processor = Admission { inner: BatchSpanProcessor::new(exporter, batch), pending, limit };
    let resource = Resource::builder_empty()
        .with_attributes(config.resource_attributes())
        .with_service_name(config.service_name(default_service))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(config.sampler())
        .with_resource(resource)
        .build();
    Ok((provider.clone(), TelemetryGuard { provider: Some(provider) }))
}

/// Admits a finished span only while fewer than `limit` are waiting for
/// export; counts the others as dropped.
#[derive(Debug)]
struct Admission<P> {
    inner: P,
    pending: Arc<AtomicUsize>,
    limit: usize,
}

impl<P: SpanProcessor> SpanProcessor for Admission<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let admitted = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.limit).then_some(n + 1))
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            SPANS_DROPPED.with_label_values(&[QUEUE_FULL]).inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Releases admitted spans as they leave for the collector, and counts
/// those it did not take.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        // Saturating: spans admitted before a restart of the count cannot exist,
        // but an underflow would wedge admission for good.
        let _ =
            self.pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(spans)));
        let result = self.inner.export(batch).await;
        if let Err(error) = &result {
            SPANS_DROPPED.with_label_values(&[EXPORT_FAILED]).inc_by(spans as u64);
            static LOG: LogEvery = LogEvery::new(Duration::from_secs(60));
            if LOG.ready() {
                tracing::warn!(%error, spans, "trace export failed; spans dropped (dlr_trace_spans_dropped_total counts them; logged once a minute)");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Tracer, TracerProvider};
    use std::sync::Mutex;
    use std::sync::mpsc;

    /// An exporter that holds every export until told to go on: a
    /// collector that accepts connections and never answers.
    #[derive(Debug)]
    struct Stuck {
        release: Mutex<mpsc::Receiver<()>>,
        exported: Arc<AtomicUsize>,
    }

    impl SpanExporter for Stuck {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if let Ok(release) = self.release.lock() {
                let _ = release.recv();
            }
            self.exported.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn a_stuck_collector_drops_and_counts_spans_and_never_blocks_the_caller() {
        let (go, release) = mpsc::channel();
        let exported = Arc::new(AtomicUsize::new(0));
        let pending = Arc::new(AtomicUsize::new(0));
        let limit = 8;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(limit)
            .with_max_export_batch_size(2)
            .with_scheduled_delay(Duration::from_millis(10))
            .build();
        let exporter = Counted {
            inner: Stuck { release: Mutex::new(release), exported: exported.clone() },
            pending: pending.clone(),
        };
        let processor = Admission { inner: BatchSpanProcessor::new(exporter, batch), pending, limit };
        let provider = SdkTracerProvider::builder().with_span_processor(processor).build();
        let tracer = provider.tracer("test");
        let before = SPANS_DROPPED.with_label_values(&[QUEUE_FULL]).get();
        let started = std::time::Instant::now();
        for _ in 0..100 {
            tracer.in_span("receipt", |_| {});
        }
        assert!(started.elapsed() < Duration::from_secs(1), "ending spans waited for the collector");
        let dropped = SPANS_DROPPED.with_label_values(&[QUEUE_FULL]).get() - before;
        // At most the queue plus the batch in the stuck export are held.
        assert!(dropped >= 100 - (limit as u64) - 2, "only {dropped} of 100 counted as dropped");
        for _ in 0..100 {
            let _ = go.send(());
        }
        let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
        assert_eq!(exported.load(Ordering::SeqCst) as u64 + dropped, 100, "every span exported or counted");
    }
}
