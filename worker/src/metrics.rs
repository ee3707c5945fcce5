//! Worker metrics. Labels from closed sets only (provider, outcome,
//! handler, result, reason).

use dlr_shared::metrics::{LATENCY_BUCKETS, LONG_LATENCY_BUCKETS, MetricsBuilder, new_registry};
use dlr_shared::{Outcome, Provider, words};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::analytics::ReceiptAnalytics;
use crate::handlers::{CallResult, HandlerKind};
use crate::parking::ParkReason;

/// Every metric the worker exports.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Events taken off the queue, by provider and outcome.
    pub consumed: IntCounterVec,
    /// Handler calls by handler and result (ok, transient, permanent).
    pub handler_results: IntCounterVec,
    /// Handler call latency.
    pub handler_duration: HistogramVec,
    /// Retries scheduled, by the handler that failed.
    pub retries: IntCounterVec,
    /// Messages parked, by reason.
    pub parked: IntCounterVec,
    /// From ingest's receipt to the last handler's success.
    pub end_to_end: Histogram,
    /// From the provider's event time to ingest's receipt.
    pub time_to_dlr: HistogramVec,
    /// 1 while the broker connection is up.
    pub broker_connected: IntGauge,
    /// Events being handled now.
    pub in_flight: IntGauge,
    /// Events the amqp handler published with no queue bound.
    pub unroutable: IntCounter,
    /// Retry or park publishes that failed and were tried again after a
    /// wait (broker blocked or unreachable) instead of nacking the delivery.
    pub settle_waits: IntCounter,
    /// Frames sent to settle deliveries, by kind (ack_multiple, ack, nack):
    /// against events consumed, shows how well acks are coalesced.
    pub settle_frames: IntCounterVec,
    /// Webhook requests by endpoint and result (ok, transient, permanent).
    /// The endpoint label comes from the configuration (a bounded set).
    pub webhook_requests: IntCounterVec,
    /// Webhook request latency by endpoint.
    pub webhook_duration: HistogramVec,
    /// Webhook attempts not made because the endpoint's circuit was open.
    pub webhook_skipped: IntCounterVec,
    /// Each endpoint's circuit state, one series per state set to 1.
    pub webhook_circuit: IntGaugeVec,
    /// 1 while the publishing connection (retries, parking, events) is up.
    pub publisher_connected: IntGauge,
    /// Publish channels closed and replaced, by reason (see amqp::publisher).
    pub publish_channels_replaced: IntCounterVec,
    /// Deliveries whose channel closed while they were being handled: left
    /// to the broker's redelivery, neither settled nor copied.
    pub abandoned: IntCounter,
    /// Readiness probes of ingest pods taken off the receipts queue.
    pub probes_dropped: IntCounter,
    /// Delivery analytics: per-country receipts, delays, error codes,
    /// never-final events (see [`crate::analytics`] for the budget).
    pub analytics: ReceiptAnalytics,
}

impl WorkerMetrics {
    /// Registers everything and pre-creates the expected series.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = new_registry();
        let b = MetricsBuilder::new(&registry);
        let metrics = Self {
            consumed: b.counter_vec(
                "dlr_worker_events_consumed_total",
                "Events taken off the receipts queue, by provider and outcome.",
                &["provider", "outcome"],
            )?,
            handler_results: b.counter_vec(
                "dlr_worker_handler_results_total",
                "Handler calls by handler and result (ok, transient, permanent).",
                &["handler", "result"],
            )?,
            handler_duration: b.histogram_vec(
                "dlr_worker_handler_duration_seconds",
                "Handler call latency by handler.",
                &["handler"],
                LATENCY_BUCKETS,
            )?,
            retries: b.counter_vec(
                "dlr_worker_retries_scheduled_total",
                "Retries scheduled through the delay queues, by failing handler.",
                &["handler"],
            )?,
            parked: b.counter_vec(
                "dlr_worker_parked_total",
                "Messages moved to the parking lot, by reason.",
                &["reason"],
            )?,
            end_to_end: b.histogram(
                "dlr_worker_end_to_end_latency_seconds",
                "Time from ingest receiving a receipt to its handlers completing.",
                LONG_LATENCY_BUCKETS,
            )?,
            time_to_dlr: b.histogram_vec(
                "dlr_worker_time_to_dlr_seconds",
                "Time from the provider's event timestamp to ingest receiving the receipt.",
                &["provider"],
                LONG_LATENCY_BUCKETS,
            )?,
            broker_connected: b
                .gauge("dlr_worker_broker_connected", "1 while the broker connection is up.")?,
            in_flight: b.gauge("dlr_worker_events_in_flight", "Events being handled now.")?,
            unroutable: b.counter(
                "dlr_worker_events_unroutable_total",
                "Events the amqp handler published while no queue was bound for their routing key.",
            )?,
            settle_waits: b.counter(
                "dlr_worker_settle_publish_waits_total",
                "Retry or park publishes the broker could not take, tried again after a wait instead of requeueing.",
            )?,
            settle_frames: b.counter_vec(
                "dlr_worker_settle_frames_total",
                "Frames sent to the broker to settle deliveries: ack_multiple (covers a run of deliveries), ack, nack (requeue).",
                &["kind"],
            )?,
            webhook_requests: b.counter_vec(
                "dlr_worker_webhook_requests_total",
                "Webhook requests by endpoint and result (ok, transient, permanent).",
                &["endpoint", "result"],
            )?,
            webhook_duration: b.histogram_vec(
                "dlr_worker_webhook_request_duration_seconds",
                "Webhook request latency by endpoint, from sending to the answer.",
                &["endpoint"],
                LATENCY_BUCKETS,
            )?,
            webhook_skipped: b.counter_vec(
                "dlr_worker_webhook_requests_skipped_total",
                "Webhook attempts not made because the endpoint's circuit was open; the event's next retry was scheduled instead.",
                &["endpoint"],
            )?,
            webhook_circuit: {
                let gauge = IntGaugeVec::new(
                    Opts::new(
                        "dlr_worker_webhook_circuit_state",
                        "Circuit breaker state of each webhook endpoint: 1 on the series of the current state (closed, open, half_open).",
                    ),
                    &["endpoint", "state"],
                )?;
                registry.register(Box::new(gauge.clone()))?;
                gauge
            },
            publisher_connected: b.gauge(
                "dlr_worker_publisher_connected",
                "1 while the publishing connection (retries, parking, amqp handler) is up.",
            )?,
            publish_channels_replaced: b.counter_vec(
                "dlr_worker_publish_channels_replaced_total",
                "Publish channels closed after a nack, a confirm timeout, a channel error or an abandoned publish, by reason.",
                &["reason"],
            )?,
            abandoned: b.counter(
                "dlr_worker_deliveries_abandoned_total",
                "Deliveries whose channel closed while they were handled: left to the broker's redelivery.",
            )?,
            probes_dropped: b.counter(
                "dlr_worker_probes_dropped_total",
                "Readiness probes of ingest pods (no receipt in them) taken off the receipts queue and dropped.",
            )?,
            analytics: ReceiptAnalytics::new(&registry)?,
            registry,
        };
        for reason in ["nacked", "timeout", "channel_error", "return_mismatch", "abandoned"] {
            metrics.publish_channels_replaced.with_label_values(&[reason]);
        }
        for kind in ["ack_multiple", "ack", "nack"] {
            metrics.settle_frames.with_label_values(&[kind]);
        }
        for provider in Provider::ALL {
            for outcome in Outcome::ALL {
                metrics.consumed.with_label_values(&[provider.as_str(), outcome.as_str()]);
            }
            metrics.time_to_dlr.with_label_values(&[provider.as_str()]);
        }
        for kind in HandlerKind::ALL {
            metrics.handler_duration.with_label_values(&[kind.as_str()]);
            for result in words::names::<CallResult>() {
                metrics.handler_results.with_label_values(&[kind.as_str(), result]);
            }
            metrics.retries.with_label_values(&[kind.as_str()]);
        }
        for reason in words::names::<ParkReason>() {
            metrics.parked.with_label_values(&[reason]);
        }
        Ok(metrics)
    }
}
