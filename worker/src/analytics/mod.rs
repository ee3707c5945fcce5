//! Delivery analytics: where receipts went, and metrics that answer
//! "what is my delivery rate in Brazil on Twilio?" without a database.
//!
//! Cardinality budget: at most 5 000 series per worker pod, whatever the
//! traffic. Every label comes from a closed set: provider (7), country (the
//! ISO 3166-1 codes of the numbering plan, about 250, plus `unknown`),
//! outcome (only the final ones, 2), error code (the first
//! [`ERROR_CODES_PER_PROVIDER`] distinct codes of each provider, then
//! `other`). With every country seen on every provider:
//! receipts 7 x 251 x 2 = 3 514, delay by country 251 x 2 = 502, failures
//! 7 x 51 = 357, delay histogram 7 x 22 = 154, never-final 7: 4 534.

pub mod destination;
pub mod mcc;

use dlr_shared::metrics::{LONG_LATENCY_BUCKETS, MetricsBuilder};
use dlr_shared::{Outcome, Provider, ReceiptEvent};
use prometheus::{CounterVec, HistogramVec, IntCounterVec, Opts, Registry};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

pub use destination::DestinationResolver;

/// Distinct error codes per provider that get their own label value.
pub const ERROR_CODES_PER_PROVIDER: usize = 50;

/// The label of a country no plan knows.
pub const UNKNOWN_COUNTRY: &str = "unknown";

/// The label of error codes past the budget, or not shaped like a code.
pub const OTHER_CODE: &str = "other";

/// The per-country and per-code metrics, and the resolver that fills in
/// each event's destination.
#[derive(Clone)]
pub struct ReceiptAnalytics {
    resolver: Arc<DestinationResolver>,
    /// Final receipts by provider, country and outcome.
    pub final_receipts: IntCounterVec,
    /// Provider's status time to ingest's receipt, final receipts, by provider.
    pub final_delay: HistogramVec,
    /// The same delay summed by country (seconds), with its count.
    pub country_delay_sum: CounterVec,
    /// How many final receipts `country_delay_sum` adds up.
    pub country_delay_count: IntCounterVec,
    /// Failed receipts by provider and (bounded) error code.
    pub failures_by_code: IntCounterVec,
    /// Synthetic `no_final_receipt` events published, by provider.
    pub never_final: IntCounterVec,
    codes: Arc<Mutex<HashMap<Provider, HashSet<String>>>>,
}

impl ReceiptAnalytics {
    /// Registers the metrics on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let b = MetricsBuilder::new(registry);
        let country_delay_sum = CounterVec::new(
            Opts::new(
                "dlr_worker_final_receipt_delay_by_country_seconds_total",
                "Sum of the delays of final receipts (provider's status time to ingest), by country.",
            ),
            &["country"],
        )?;
        registry.register(Box::new(country_delay_sum.clone()))?;
        let analytics = Self {
            resolver: Arc::new(DestinationResolver::default()),
            final_receipts: b.counter_vec(
                "dlr_worker_final_receipts_total",
                "Final receipts by provider, destination country (ISO 3166-1 alpha-2 or unknown) and outcome.",
                &["provider", "country", "outcome"],
            )?,
            final_delay: b.histogram_vec(
                "dlr_worker_final_receipt_delay_seconds",
                "Final receipts: time from the provider's status time to ingest receiving the receipt, by provider.",
                &["provider"],
                LONG_LATENCY_BUCKETS,
            )?,
            country_delay_sum,
            country_delay_count: b.counter_vec(
                "dlr_worker_final_receipt_delay_by_country_count_total",
                "Final receipts counted in dlr_worker_final_receipt_delay_by_country_seconds_total, by country.",
                &["country"],
            )?,
            failures_by_code: b.counter_vec(
                "dlr_worker_failures_by_code_total",
                "Failed receipts by provider and error code (the first 50 codes per provider, then other).",
                &["provider", "code"],
            )?,
            never_final: b.counter_vec(
                "dlr_worker_never_final_total",
                "Synthetic no_final_receipt events published by the never-final sweep, by provider.",
                &["provider"],
            )?,
            codes: Arc::default(),
        };
        for provider in Provider::ALL {
            analytics.never_final.with_label_values(&[provider.as_str()]);
            analytics.final_delay.with_label_values(&[provider.as_str()]);
            analytics.failures_by_code.with_label_values(&[provider.as_str(), OTHER_CODE]);
        }
        Ok(analytics)
    }

    /// Fills in the event's destination (see [`DestinationResolver`]).
    pub fn enrich(&self, event: ReceiptEvent) -> ReceiptEvent {
        self.resolver.enrich(event)
    }

    /// Counts a receipt on its first delivery. Pending receipts are left to
    /// `dlr_worker_events_consumed_total`; synthetic ones to
    /// `dlr_worker_never_final_total`, so a delivery rate counts only what
    /// providers said.
    pub fn observe(&self, event: &ReceiptEvent) {
        if event.outcome == Outcome::Pending || event.synthetic {
            return;
        }
        let provider = event.provider.as_str();
        let country = country_label(event);
        self.final_receipts.with_label_values(&[provider, country, event.outcome.as_str()]).inc();
        if let Some(stamp) = event.provider_timestamp {
            let seconds = ((event.received_at - stamp).num_milliseconds() as f64 / 1000.0).max(0.0);
            self.final_delay.with_label_values(&[provider]).observe(seconds);
            self.country_delay_sum.with_label_values(&[country]).inc_by(seconds);
            self.country_delay_count.with_label_values(&[country]).inc();
        }
        if event.outcome == Outcome::Failed
            && let Some(error) = &event.error
        {
            let code = self.code_label(event.provider, &error.code);
            self.failures_by_code.with_label_values(&[provider, &code]).inc();
        }
    }

    /// The code itself while the provider's budget lasts, else `other`.
    fn code_label(&self, provider: Provider, code: &str) -> String {
        let shaped = !code.is_empty()
            && code.len() <= 16
            && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !shaped {
            return OTHER_CODE.to_owned();
        }
        let Ok(mut codes) = self.codes.lock() else { return OTHER_CODE.to_owned() };
        let seen = codes.entry(provider).or_default();
        if seen.contains(code) || seen.len() < ERROR_CODES_PER_PROVIDER {
            seen.insert(code.to_owned());
            code.to_owned()
        } else {
            OTHER_CODE.to_owned()
        }
    }
}

/// The recipient's country, else the network's, else `unknown`.
pub fn country_label(event: &ReceiptEvent) -> &str {
    event
        .destination
        .as_ref()
        .and_then(|d| d.country.as_deref().or_else(|| d.network.as_ref().and_then(|n| n.country.as_deref())))
        .unwrap_or(UNKNOWN_COUNTRY)
}
