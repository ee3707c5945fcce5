//! The log handler: one structured line per event (the default route).

use async_trait::async_trait;
use dlr_shared::{Msisdn, ReceiptEvent};

use super::{Handler, HandlerError, HandlerKind};

/// Logs each event at info level. Phone numbers are masked.
pub struct LogHandler;

#[async_trait]
impl Handler for LogHandler {
    fn kind(&self) -> HandlerKind {
        HandlerKind::Log
    }

    async fn handle(&self, event: &ReceiptEvent) -> Result<(), HandlerError> {
        let recipient = event
            .recipient
            .as_deref()
            .map(|r| Msisdn::parse(r).map(|m| m.redacted()).unwrap_or_else(|_| "<non-msisdn>".to_owned()));
        tracing::info!(
            event_id = %event.event_id,
            provider = %event.provider,
            message_id = %event.message_id,
            outcome = %event.outcome,
            status = %event.status,
            error_code = event.error.as_ref().map(|e| e.code.as_str()),
            client_ref = event.client_ref.as_deref(),
            recipient = recipient.as_deref(),
            "receipt"
        );
        Ok(())
    }
}
