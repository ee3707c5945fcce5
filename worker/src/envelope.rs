//! A receipt message as the worker moves it between its own queues.
//!
//! When the worker sends a message on (to a delay queue, the parking lot,
//! back to work), the body is the event exactly as ingest published it and
//! the bookkeeping travels in headers: which attempt this is, which
//! handlers already succeeded, and why it was parked. This module owns
//! those headers and the rebuilt properties that carry them.

use dlr_shared::amqp::{PublishError, Publisher, header_str, header_u64};
use lapin::BasicProperties;
use lapin::types::FieldTable;

use crate::handlers::HandlerKind;

/// Attempt number of this delivery (1 on first delivery).
pub const HEADER_ATTEMPT: &str = "x-dlr-attempt";
/// Comma-separated handlers that already succeeded for this event.
pub const HEADER_DONE: &str = "x-dlr-done-handlers";
/// Last error text (truncated).
pub const HEADER_LAST_ERROR: &str = "x-dlr-last-error";
/// Handler that failed last.
pub const HEADER_HANDLER: &str = "x-dlr-handler";
/// Why a message was parked.
pub const HEADER_PARK_REASON: &str = "x-dlr-park-reason";
/// When it was parked (RFC 3339).
pub const HEADER_PARKED_AT: &str = "x-dlr-parked-at";
/// Marks messages replayed by one run, so that a run never takes back what
/// it replayed itself (an event parked again while the downstream still
/// refuses it).
pub const HEADER_REPLAY_RUN: &str = "x-dlr-replay-run";

/// Error texts can be long (HTML error pages); headers should not be.
const MAX_ERROR_LEN: usize = 512;

/// Where a delivery stands: its attempt number and the handlers that need
/// not run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// 1 on first delivery.
    pub attempt: u32,
    /// Handlers that already succeeded for this event.
    pub done: Vec<HandlerKind>,
}

impl Progress {
    /// Reads the bookkeeping headers of a delivery; a message ingest
    /// published has none and is attempt 1 with nothing done.
    pub fn of(properties: &BasicProperties) -> Self {
        let headers = properties.headers().as_ref();
        let attempt =
            header_u64(headers, HEADER_ATTEMPT).and_then(|a| u32::try_from(a).ok()).unwrap_or(1).max(1);
        let done = header_str(headers, HEADER_DONE)
            .map(|list| list.split(',').filter_map(|name| name.trim().parse().ok()).collect())
            .unwrap_or_default();
        Self { attempt, done }
    }
}

/// The header value of a done-handler list.
pub fn done_list(done: &[HandlerKind]) -> String {
    done.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(",")
}

/// An error text short enough for a header.
pub fn truncated(text: &str) -> &str {
    match text.char_indices().nth(MAX_ERROR_LEN) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// Rebuilds the message properties with updated bookkeeping headers.
///
/// Built fresh rather than cloned so that a retry's per-message expiration
/// never follows the message into the parking lot or back to work.
pub fn rebuilt(original: &BasicProperties, update: impl FnOnce(&mut FieldTable)) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in original.headers().as_ref().map(|h| h.inner().iter()).into_iter().flatten() {
        // The broker's dead-letter and delivery history (a retry came back
        // from its delay queue) describes the old message, not the one we publish: kept, it
        // would make a replayed message look like a dead-letter cycle.
        if !is_broker_history_header(name.as_str()) {
            headers.insert(name.clone(), value.clone());
        }
    }
    update(&mut headers);
    let mut properties = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    if let Some(v) = original.content_type() {
        properties = properties.with_content_type(v.clone());
    }
    if let Some(v) = original.message_id() {
        properties = properties.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        properties = properties.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        properties = properties.with_type(v.clone());
    }
    properties
}

/// `x-death`, `x-first-death-*`, `x-last-death-*` (set by the broker when it
/// dead-letters a message) and `x-delivery-count` (its redelivery counter).
fn is_broker_history_header(name: &str) -> bool {
    name == "x-death"
        || name == "x-delivery-count"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

/// Publishes to one of the worker's own queues (a delay queue, the parking
/// lot). They must exist; a return means someone deleted one, so the
/// topology is declared again before the caller's next try.
pub async fn publish_to_own_queue(
    publisher: &Publisher,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    let result = publisher.publish("", queue, body, properties).await;
    if let Err(PublishError::Returned { .. }) = &result {
        publisher.broker().request_redeclare();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlr_shared::amqp::insert_str;
    use lapin::types::AMQPValue;

    #[test]
    fn a_fresh_message_is_attempt_one_with_nothing_done() {
        assert_eq!(Progress::of(&BasicProperties::default()), Progress { attempt: 1, done: vec![] });
    }

    #[test]
    fn progress_reads_back_what_a_retry_wrote() {
        let properties = rebuilt(&BasicProperties::default(), |h| {
            h.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(3));
            insert_str(h, HEADER_DONE, &done_list(&[HandlerKind::Postgres, HandlerKind::Amqp]));
        });
        let progress = Progress::of(&properties);
        assert_eq!(progress.attempt, 3);
        assert_eq!(progress.done, vec![HandlerKind::Postgres, HandlerKind::Amqp]);
    }

    #[test]
    fn broker_history_is_dropped_and_our_headers_kept() {
        let mut headers = FieldTable::default();
        insert_str(&mut headers, "x-first-death-queue", "dlr.retry.1000");
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(4));
        insert_str(&mut headers, "x-provider", "twilio");
        let original = BasicProperties::default().with_headers(headers).with_expiration("900".into());
        let properties = rebuilt(&original, |_| {});
        let kept = properties.headers().as_ref().expect("headers");
        assert!(kept.inner().get("x-first-death-queue").is_none());
        assert!(kept.inner().get("x-delivery-count").is_none());
        assert_eq!(header_str(Some(kept), "x-provider"), Some("twilio"));
        assert!(properties.expiration().is_none(), "a retry's expiration must not follow the message");
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_LEN + 10);
        assert_eq!(truncated(&long).chars().count(), MAX_ERROR_LEN);
        assert_eq!(truncated("short"), "short");
    }
}
