//! Publishing a request's receipts: the one place every accepted receipt
//! goes through on its way to the broker.
//!
//! The rule does not change with the count: 200 only when the broker has
//! confirmed every receipt of the request. All of them are published at
//! once and every confirm is awaited; if any is missing the answer is 503
//! and the provider retries the whole request, whose receipts keep their
//! event ids, so the ones already stored are de-duplicated downstream. An
//! authenticated request whose elements are partly malformed is answered
//! 200 with the valid ones stored and a copy in the quarantine: a 4xx
//! would make the provider drop the valid siblings too (Sinch never retries
//! a 4xx).

use crate::providers::{Batch, FieldProblem, ReceiptError};
use dlr_shared::amqp::{Outgoing, PublishError, receipt_properties};
use dlr_shared::event::ReceiptEvent;
use dlr_shared::telemetry::LogEvery;
use dlr_shared::{EventId, Outcome, Provider};
use serde::Serialize;
use std::time::{Duration, Instant};
use tracing::Instrument;

use crate::error::IngestError;
use crate::intake::{Authenticity, WebhookRequest, quarantine, refuse};
use crate::state::AppState;

/// One log line a minute about ignored summary reports: a batch configured
/// for summaries sends one per batch, which must not flood the log; the
/// counter has every one.
static IGNORED_LOG: LogEvery = LogEvery::new(Duration::from_secs(60));

/// The 200 body: the event each receipt became, and what was set aside.
#[derive(Debug, Serialize)]
pub struct Stored {
    status: &'static str,
    pub(crate) receipts: Vec<StoredReceipt>,
    quarantined: usize,
    ignored: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct StoredReceipt {
    pub(crate) event_id: EventId,
    pub(crate) outcome: Outcome,
}

/// Publishes a parsed request's receipts and quarantines its bad elements.
pub(super) async fn store(
    state: &AppState,
    provider: Provider,
    request: &WebhookRequest,
    authenticity: Authenticity,
    parsed: Result<Batch, ReceiptError>,
) -> Result<Stored, IngestError> {
    let mut batch = match parsed {
        Ok(batch) if !(batch.events.is_empty() && batch.ignored == 0 && !batch.rejected.is_empty()) => batch,
        // Nothing usable at all: the same answer as one bad receipt.
        Ok(batch) => return Err(refuse(state, provider, request, authenticity, combined(&batch)).await),
        Err(error) => return Err(refuse(state, provider, request, authenticity, error).await),
    };
    for event in &mut batch.events {
        event.authenticity = Some(authenticity);
    }
    if !batch.rejected.is_empty() {
        // The request is answered 200, so the provider will not send these
        // elements again: the quarantine copy is all that is left of them,
        // whatever the signature mode.
        for problem in &batch.rejected {
            state.metrics.rejected.with_label_values(&[provider.as_str(), problem.error.reason()]).inc();
        }
        let error = IngestError::Receipt(combined(&batch));
        tracing::warn!(provider = %provider, bad = batch.rejected.len(), good = batch.events.len(), %error, "malformed reports quarantined; their siblings are stored");
        quarantine(state, provider, request, &error).await;
    }
    if batch.ignored > 0 {
        state.metrics.reports_ignored.with_label_values(&[provider.as_str()]).inc_by(batch.ignored as u64);
        if IGNORED_LOG.ready() {
            tracing::info!(provider = %provider, "summary delivery report ignored: it names no recipient (configure per_recipient or full reports); logged once a minute, counted in dlr_ingest_reports_ignored_total");
        }
    }
    for event in batch.events.iter().filter(|e| !e.status_recognised) {
        tracing::warn!(provider = %provider, status = %event.status, "unrecognised status word; accepted as pending");
    }
    // Every receipt at once, in order, on one channel: the confirms arrive
    // together, so a batch costs about one round trip, not one per receipt,
    // and its receipts reach the queue in the provider's order.
    publish_all(state, &batch.events).await?;
    for event in &batch.events {
        state.metrics.accepted.with_label_values(&[provider.as_str(), event.outcome.as_str()]).inc();
    }
    Ok(Stored {
        status: "accepted",
        receipts: batch
            .events
            .into_iter()
            .map(|e| StoredReceipt { event_id: e.event_id, outcome: e.outcome })
            .collect(),
        quarantined: batch.rejected.len(),
        ignored: batch.ignored,
    })
}

/// Publishes the events of one request, in order, and waits for every
/// confirm: `Ok` only if every one of them is stored. Traced as one publish
/// span, whose context the messages carry to the worker.
pub(crate) async fn publish_all(state: &AppState, events: &[ReceiptEvent]) -> Result<(), IngestError> {
    let span = dlr_shared::telemetry::spans::receipt_publish(&state.topology.exchange, events);
    let result = publish_confirmed(state, events).instrument(span.clone()).await;
    if result.is_err() {
        dlr_shared::telemetry::spans::failed(&span);
    }
    result
}

async fn publish_confirmed(state: &AppState, events: &[ReceiptEvent]) -> Result<(), IngestError> {
    let bodies: Vec<Vec<u8>> = events.iter().map(ReceiptEvent::to_json).collect();
    let messages: Vec<Outgoing<'_>> = events
        .iter()
        .zip(&bodies)
        .map(|(event, body)| Outgoing {
            exchange: &state.topology.exchange,
            routing_key: state.topology.receipt_routing_key(event.message_id.as_str()),
            body,
            properties: receipt_properties(event),
        })
        .collect();
    let metrics = &state.metrics;
    let in_flight = InFlight::start(&metrics.publishes_in_flight, events.len());
    let started = Instant::now();
    let result = state.publisher.publish_all(&messages).await;
    drop(in_flight);
    match result {
        Ok(()) => {
            metrics.confirm_duration.observe(started.elapsed().as_secs_f64());
            for event in events {
                tracing::debug!(event_id = %event.event_id, provider = %event.provider, outcome = %event.outcome, "receipt stored");
            }
            Ok(())
        }
        Err(error) => {
            if matches!(error, PublishError::Returned { .. }) {
                // Our queue or binding is gone (deleted by hand?): declare it
                // again so that the provider's retry succeeds.
                state.publisher.broker().request_redeclare();
            }
            metrics.publish_failures.with_label_values(&[error.reason()]).inc();
            for event in events {
                tracing::warn!(event_id = %event.event_id, provider = %event.provider, reason = error.reason(), %error, "receipt not stored; answering 503");
            }
            Err(IngestError::Unavailable(error))
        }
    }
}

/// Counts a publish as in flight until it is dropped: a request future can
/// be dropped mid-confirm (client gone, drain timeout), and the gauge must
/// come down then too.
struct InFlight<'a>(&'a prometheus::IntGauge, i64);

impl<'a> InFlight<'a> {
    fn start(gauge: &'a prometheus::IntGauge, publishes: usize) -> Self {
        let publishes = i64::try_from(publishes).unwrap_or(i64::MAX);
        gauge.add(publishes);
        Self(gauge, publishes)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.sub(self.1);
    }
}

/// Every bad element's problems in one error, each field named by where
/// its element is (`results[3].messageId`).
fn combined(batch: &Batch) -> ReceiptError {
    let problems = batch
        .rejected
        .iter()
        .flat_map(|element| match element.error.problems() {
            [] => vec![FieldProblem::new(&element.location, element.error.to_string())],
            problems => problems
                .iter()
                .map(|p| FieldProblem::new(&format!("{}.{}", element.location, p.field), p.problem.clone()))
                .collect(),
        })
        .collect();
    ReceiptError::InvalidFields(problems)
}
