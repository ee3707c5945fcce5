//! Ingest's metrics. Labels come from small closed sets only (route
//! templates, status codes, provider, outcome, reason), never from ids or
//! phone numbers, so series counts stay bounded.

use dlr_shared::Outcome;
use dlr_shared::metrics::{LATENCY_BUCKETS, MetricsBuilder, new_registry};

use crate::providers::REGISTRY;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};

/// Reasons a request is refused with a 4xx (`IngestError::reason`).
const REJECT_REASONS: [&str; 9] = [
    "invalid_fields",
    "replay_seal",
    "malformed_body",
    "not_a_receipt",
    "signature",
    "unsupported_media_type",
    "payload_too_large",
    "empty",
    "unreadable_body",
];
/// Reasons a signature check fails (`SignatureError::reason`).
const SIGNATURE_REASONS: [&str; 10] = [
    "missing",
    "malformed",
    "mismatch",
    "stale",
    "future",
    "payload_hash",
    "algorithm",
    "issuer",
    "replayed",
    "unknown_account",
];
/// Reasons a request is copied to the quarantine.
const QUARANTINE_REASONS: [&str; 4] = ["signature", "invalid_fields", "not_a_receipt", "malformed_body"];

/// Every metric ingest exports, registered in its own registry.
#[derive(Clone)]
pub struct IngestMetrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Requests by route template and HTTP status code.
    pub http_requests: IntCounterVec,
    /// Request latency by route template.
    pub http_duration: HistogramVec,
    /// Receipts confirmed by the broker, by provider and outcome.
    pub accepted: IntCounterVec,
    /// Receipts refused with a 4xx, by provider and reason.
    pub rejected: IntCounterVec,
    /// Time from publish to broker confirm.
    pub confirm_duration: Histogram,
    /// Publishes that did not end in a confirm, by reason.
    pub publish_failures: IntCounterVec,
    /// 1 while a broker connection is up.
    pub broker_connected: IntGauge,
    /// Publishes awaiting their confirm.
    pub publishes_in_flight: IntGauge,
    /// Publish channels closed and replaced, by reason (see amqp::publisher).
    pub publish_channels_replaced: IntCounterVec,
    /// Signature checks that failed, by provider and reason (all modes).
    pub signature_failures: IntCounterVec,
    /// Signature checks that passed, by provider and which secret matched
    /// (`current`: the first listed, `previous`: a later one), so an operator
    /// sees when a rotated-out secret is no longer used.
    pub signature_verified: IntCounterVec,
    /// Requests copied to the quarantine queue.
    pub quarantined: IntCounterVec,
    /// Requests refused with 429 because the concurrency limit was reached.
    pub load_shed: IntCounter,
    /// Reports that name no receipt (Sinch summaries), answered 200.
    pub reports_ignored: IntCounterVec,
}

impl IngestMetrics {
    /// Registers every metric and pre-creates the expected label sets so
    /// that dashboards and alerts see zeros instead of missing series.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = new_registry();
        let b = MetricsBuilder::new(&registry);
        let metrics = Self {
            http_requests: b.counter_vec(
                "dlr_ingest_http_requests_total",
                "HTTP requests by route template and status code.",
                &["route", "status"],
            )?,
            http_duration: b.histogram_vec(
                "dlr_ingest_http_request_duration_seconds",
                "HTTP request latency by route template.",
                &["route"],
                LATENCY_BUCKETS,
            )?,
            accepted: b.counter_vec(
                "dlr_ingest_receipts_accepted_total",
                "Receipts confirmed by the broker, by provider and outcome.",
                &["provider", "outcome"],
            )?,
            rejected: b.counter_vec(
                "dlr_ingest_receipts_rejected_total",
                "Receipts refused with a client error, by provider and reason.",
                &["provider", "reason"],
            )?,
            confirm_duration: b.histogram(
                "dlr_ingest_publish_confirm_duration_seconds",
                "Time from publishing a receipt to the broker's confirm.",
                LATENCY_BUCKETS,
            )?,
            publish_failures: b.counter_vec(
                "dlr_ingest_publish_failures_total",
                "Publishes not confirmed by the broker (answered 503), by reason.",
                &["reason"],
            )?,
            broker_connected: b
                .gauge("dlr_ingest_broker_connected", "1 while the broker connection is up.")?,
            publishes_in_flight: b
                .gauge("dlr_ingest_publishes_in_flight", "Publishes waiting for their broker confirm.")?,
            publish_channels_replaced: b.counter_vec(
                "dlr_ingest_publish_channels_replaced_total",
                "Publish channels closed after a nack, a confirm timeout, a channel error or an abandoned publish, by reason.",
                &["reason"],
            )?,
            signature_failures: b.counter_vec(
                "dlr_ingest_signature_failures_total",
                "Failed signature checks by provider and reason (log-only mode included).",
                &["provider", "reason"],
            )?,
            signature_verified: b.counter_vec(
                "dlr_ingest_signature_verified_total",
                "Passed signature checks by provider and the secret that matched (current or previous).",
                &["provider", "entry"],
            )?,
            quarantined: b.counter_vec(
                "dlr_ingest_quarantined_total",
                "Rejected requests copied to the quarantine queue, by provider and reason.",
                &["provider", "reason"],
            )?,
            load_shed: b.counter(
                "dlr_ingest_load_shed_total",
                "Requests answered 429 because the concurrency limit was reached.",
            )?,
            reports_ignored: b.counter_vec(
                "dlr_ingest_reports_ignored_total",
                "Reports answered 200 that carry no receipt (Sinch summary reports), by provider.",
                &["provider"],
            )?,
            registry,
        };
        for entry in REGISTRY {
            let p = entry.provider().as_str();
            for outcome in Outcome::ALL {
                metrics.accepted.with_label_values(&[p, outcome.as_str()]);
            }
            for reason in REJECT_REASONS {
                metrics.rejected.with_label_values(&[p, reason]);
            }
            for reason in SIGNATURE_REASONS {
                metrics.signature_failures.with_label_values(&[p, reason]);
            }
            for entry in ["current", "previous"] {
                metrics.signature_verified.with_label_values(&[p, entry]);
            }
            for reason in QUARANTINE_REASONS {
                metrics.quarantined.with_label_values(&[p, reason]);
            }
            if entry.route().answer == crate::providers::Answer::Receipts {
                metrics.reports_ignored.with_label_values(&[p]);
            }
            metrics.http_duration.with_label_values(&[entry.route().path]);
        }
        for reason in ["unavailable", "blocked", "nacked", "returned", "timeout", "channel_error"] {
            metrics.publish_failures.with_label_values(&[reason]);
        }
        for reason in ["nacked", "timeout", "channel_error", "return_mismatch", "abandoned"] {
            metrics.publish_channels_replaced.with_label_values(&[reason]);
        }
        Ok(metrics)
    }
}
