//! Never-final messages: a message still `pending` in the status store
//! after its provider's window gets one synthetic receipt (outcome failed,
//! status `no_final_receipt`, `synthetic: true`), published into the normal
//! intake path so that every handler of the failed route sees it like any
//! receipt.
//!
//! One per message: the event id is derived from the provider and message
//! id only, and the row is marked (`swept_at`) once the broker confirmed
//! the publish. A crash between the two publishes the same event again,
//! which every handler ignores (idempotent on the event id). Only one
//! worker sweeps at a time (see [`crate::maintenance`]), in batches, oldest
//! first; a restart resumes with the rows not marked yet.
//!
//! What it cannot see: a message that never got any receipt has no row,
//! so it is unknown here. Senders cover that from their own send log.

use chrono::{DateTime, Utc};
use dlr_shared::amqp::{Publisher, Topology, receipt_properties};
use dlr_shared::event::{NO_FINAL_RECEIPT, SCHEMA_VERSION};
use dlr_shared::{Destination, EventId, MessageId, Outcome, Provider, ReceiptEvent, words};
use serde_json::{Map, Value};
use sqlx::PgConnection;
use std::collections::HashMap;
use std::time::Duration;

use crate::analytics::ReceiptAnalytics;

/// How long each provider's messages may stay pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeverFinalWindows {
    /// For providers without their own window.
    pub default: Duration,
    /// Per-provider windows.
    pub per_provider: HashMap<Provider, Duration>,
}

impl NeverFinalWindows {
    /// The window of `provider`.
    pub fn of(&self, provider: Provider) -> Duration {
        self.per_provider.get(&provider).copied().unwrap_or(self.default)
    }
}

/// Why a sweep stopped early; the next round starts again.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The status store failed.
    #[error("status store: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker did not take a synthetic receipt.
    #[error("publishing a synthetic receipt: {0}")]
    Publish(#[from] dlr_shared::amqp::PublishError),
}

/// A pending row past its window.
#[derive(sqlx::FromRow)]
struct Overdue {
    provider: String,
    message_id: String,
    status: String,
    client_ref: Option<String>,
    received_at: DateTime<Utc>,
    country: Option<String>,
    network: Option<String>,
    recipient: Option<String>,
}

/// Pending rows past their provider's window, not swept yet, oldest first.
/// The recipient comes from the current event in the history (if the
/// history still has it), looked up within 7 days of the row's time: the
/// history keeps a copy of an event within 7 days of its first (the status
/// store's duplicate check), so the lookup reads one or two monthly
/// partitions instead of every one.
const OVERDUE: &str = "
SELECT m.provider, m.message_id, m.status, m.client_ref, m.received_at, m.country, m.network,
       (SELECT r.event->>'recipient' FROM receipt_events r
         WHERE r.event_id = m.event_id
           AND r.received_at BETWEEN m.received_at - interval '7 days' AND m.received_at + interval '7 days'
         LIMIT 1) AS recipient
  FROM message_status m
  JOIN UNNEST($1::text[], $2::float8[]) AS w(provider, seconds) ON w.provider = m.provider
 WHERE m.outcome = 'pending' AND m.swept_at IS NULL
   AND m.received_at < now() - w.seconds * INTERVAL '1 second'
 ORDER BY m.received_at
 LIMIT $3";

/// Marks rows whose synthetic receipt the broker confirmed.
const MARK_SWEPT: &str = "
UPDATE message_status m SET swept_at = now()
  FROM UNNEST($1::text[], $2::text[]) AS s(provider, message_id)
 WHERE m.provider = s.provider AND m.message_id = s.message_id";

/// Publishes synthetic receipts for overdue messages, `batch_size` at a
/// time, at most `max_batches` batches; returns how many it published.
/// `connection` must hold the sweep lock.
pub async fn sweep(
    connection: &mut PgConnection,
    publisher: &Publisher,
    topology: &Topology,
    windows: &NeverFinalWindows,
    batch_size: u32,
    max_batches: u32,
    analytics: &ReceiptAnalytics,
) -> Result<u64, SweepError> {
    let providers: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
    let seconds: Vec<f64> = Provider::ALL.iter().map(|&p| windows.of(p).as_secs_f64()).collect();
    let mut published = 0;
    for _ in 0..max_batches {
        let rows: Vec<Overdue> = sqlx::query_as(OVERDUE)
            .bind(&providers)
            .bind(&seconds)
            .bind(i64::from(batch_size))
            .fetch_all(&mut *connection)
            .await?;
        let mut swept = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        let mut failure = None;
        for row in &rows {
            // A row this code cannot turn into an event (a provider or id
            // written by a newer version) is marked so it is not retried.
            if let Some(event) = synthetic_receipt(row, windows, Utc::now()) {
                let (body, properties) = (event.to_json(), receipt_properties(&event));
                let routing_key = topology.receipt_routing_key(event.message_id.as_str());
                let sent = publisher.publish(&topology.exchange, routing_key, &body, properties).await;
                if let Err(error) = sent {
                    failure = Some(error);
                    break;
                }
                analytics.never_final.with_label_values(&[event.provider.as_str()]).inc();
                published += 1;
            } else {
                tracing::warn!(provider = %row.provider, message_id = %row.message_id, "pending row not sweepable; marked");
            }
            swept.0.push(row.provider.as_str());
            swept.1.push(row.message_id.as_str());
        }
        // What the broker confirmed is marked even when a later publish
        // failed, so that the next round does not publish it again.
        if !swept.0.is_empty() {
            sqlx::query(MARK_SWEPT).bind(&swept.0).bind(&swept.1).execute(&mut *connection).await?;
        }
        if let Some(error) = failure {
            return Err(error.into());
        }
        if rows.len() < batch_size as usize {
            break;
        }
    }
    Ok(published)
}

/// The synthetic receipt of an overdue row; `None` when the row does not
/// make a valid event.
fn synthetic_receipt(row: &Overdue, windows: &NeverFinalWindows, now: DateTime<Utc>) -> Option<ReceiptEvent> {
    let provider: Provider = words::parse(&row.provider)?;
    let message_id = MessageId::parse(&row.message_id).ok()?;
    let window = windows.of(provider);
    let mut raw = Map::new();
    raw.insert("last_status".to_owned(), Value::String(row.status.clone()));
    raw.insert("last_status_received_at".to_owned(), Value::String(row.received_at.to_rfc3339()));
    raw.insert("window_seconds".to_owned(), Value::from(window.as_secs()));
    let network = row.network.as_deref().and_then(crate::analytics::destination::network);
    let destination = (row.country.is_some() || network.is_some())
        .then(|| Destination { country: row.country.clone(), network });
    Some(ReceiptEvent {
        schema_version: SCHEMA_VERSION,
        event_id: EventId::derive(provider, &[NO_FINAL_RECEIPT, message_id.as_str()]),
        provider,
        message_id,
        outcome: Outcome::Failed,
        status: NO_FINAL_RECEIPT.to_owned(),
        status_recognised: true,
        error: None,
        client_ref: row.client_ref.clone(),
        recipient: row.recipient.clone(),
        sender: None,
        channel: None,
        price: None,
        network_code: row.network.clone(),
        account: None,
        provider_timestamp: None,
        carrier_timestamp: None,
        received_at: now,
        raw,
        synthetic: true,
        destination,
        // Made here, not received: there is no request to authenticate.
        authenticity: None,
    })
}
