//! The amqp handler: republishes events to a topic exchange.
//!
//! Routing key `<outcome>.<provider>.<status>` lets downstream teams bind
//! exactly what they need (`delivered.#`, `*.twilio.*`, `failed.*.expired`).
//! The publish is confirmed before the source message is acked.

use async_trait::async_trait;
use dlr_shared::ReceiptEvent;
use dlr_shared::amqp::{PublishError, Publisher, receipt_properties};
use dlr_shared::telemetry::LogEvery;
use prometheus::IntCounter;
use std::sync::Arc;

use super::{Handler, HandlerError, HandlerKind};

/// Republishes to `exchange`.
pub struct AmqpHandler {
    publisher: Arc<Publisher>,
    exchange: String,
    unroutable: IntCounter,
}

impl AmqpHandler {
    /// `unroutable` counts events no queue was bound for.
    pub fn new(publisher: Arc<Publisher>, exchange: String, unroutable: IntCounter) -> Self {
        Self { publisher, exchange, unroutable }
    }
}

/// `<outcome>.<provider>.<status>`, with the status reduced to characters
/// that cannot be mistaken for topic syntax.
pub fn routing_key(event: &ReceiptEvent) -> String {
    let status: String = event
        .status
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .take(64)
        .collect();
    format!("{}.{}.{}", event.outcome, event.provider, status)
}

#[async_trait]
impl Handler for AmqpHandler {
    fn kind(&self) -> HandlerKind {
        HandlerKind::Amqp
    }

    async fn handle(&self, event: &ReceiptEvent) -> Result<(), HandlerError> {
        // Exactly the properties ingest publishes the receipt with, so
        // consumers of either see one format (and the event id as message_id,
        // which also tells this publish's return apart from others').
        let properties = receipt_properties(event);
        match self.publisher.publish(&self.exchange, &routing_key(event), &event.to_json(), properties).await
        {
            Ok(()) => Ok(()),
            // Nobody has bound a queue for this key: that is a downstream
            // configuration matter, not a reason to retry or park the event.
            Err(PublishError::Returned { .. }) => {
                self.unroutable.inc();
                // At message rate this would flood the log; the counter has every one.
                static LOG: LogEvery = LogEvery::new(std::time::Duration::from_secs(60));
                if LOG.ready() {
                    tracing::warn!(exchange = %self.exchange, routing_key = %routing_key(event), "no queue bound for events; dlr_worker_events_unroutable_total counts them (logged once a minute)");
                }
                Ok(())
            }
            Err(error) => Err(HandlerError::transient("publishing the event failed", error)),
        }
    }
}
