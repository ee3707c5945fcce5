//! Spans both binaries open the same way. Every span here is on
//! [`SPAN_TARGET`]: built only while exporting.

use tracing::Span;
use tracing::field::Empty;

use super::SPAN_TARGET;
use crate::event::ReceiptEvent;

/// A publish to the broker, confirm wait included (OpenTelemetry's
/// messaging conventions: a producer span named `send <destination>`).
pub fn publish(destination: &str) -> Span {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "publish",
        otel.name = Empty,
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.destination.name = destination,
        messaging.batch.message_count = Empty,
        dlr.event_id = Empty,
        dlr.provider = Empty,
        dlr.outcome = Empty,
    );
    if !span.is_disabled() {
        span.record("otel.name", format!("send {destination}"));
    }
    span
}

/// [`publish`] of receipt events: their ids, provider and outcome go on
/// it, and on the current span when that declares them (ingest's request
/// span).
pub fn receipt_publish(exchange: &str, events: &[ReceiptEvent]) -> Span {
    let span = publish(exchange);
    if span.is_disabled() {
        return span;
    }
    span.record("messaging.batch.message_count", events.len());
    let (ids, provider, outcome) = describe(events);
    let parent = Span::current();
    for span in [&span, &parent] {
        span.record("dlr.event_id", ids.as_str());
        if let Some(provider) = provider {
            span.record("dlr.provider", provider);
        }
        if let Some(outcome) = outcome {
            span.record("dlr.outcome", outcome);
        }
    }
    span
}

/// One step of handling a request inside its span (`decode`, `verify`):
/// an internal span, so a trace shows where a receipt's time went before
/// its publish.
pub fn step(name: &'static str) -> Span {
    tracing::info_span!(target: SPAN_TARGET, "step", otel.name = name, otel.kind = "internal", otel.status_code = Empty)
}

/// Marks `span` as failed (OpenTelemetry's `ERROR` status).
pub fn failed(span: &Span) {
    span.record("otel.status_code", "ERROR");
}

/// The events' ids (comma-separated), and their provider and outcome when
/// all share one.
fn describe(events: &[ReceiptEvent]) -> (String, Option<&'static str>, Option<&'static str>) {
    let ids = events.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>().join(",");
    let provider = events
        .first()
        .map(|e| e.provider.as_str())
        .filter(|p| events.iter().all(|e| e.provider.as_str() == *p));
    let outcome = events
        .first()
        .map(|e| e.outcome.as_str())
        .filter(|o| events.iter().all(|e| e.outcome.as_str() == *o));
    (ids, provider, outcome)
}
