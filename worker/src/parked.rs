//! `worker parked list`: what the parking lot holds, without changing it.
//!
//! The parking lot is a quorum queue, and AMQP 0-9-1 has no way to read a
//! queue without taking messages off it. The ways to put them back differ
//! in what they cost:
//!
//! - **nack with requeue** (or closing the channel with messages unacked):
//!   on RabbitMQ 4.0 to 4.2 every return counts toward the quorum queue's
//!   delivery limit (20 unless set), and the parking lot has nowhere to
//!   dead-letter to, so a message listed twenty times would be dropped;
//!   RabbitMQ 4.3 stopped counting `basic.nack` returns
//!   (<https://github.com/rabbitmq/rabbitmq-server/pull/15387>), older
//!   brokers put a returned message back at the *tail* of a quorum queue
//!   without a delivery limit
//!   (<https://github.com/rabbitmq/rabbitmq-server/issues/9565>). Which of
//!   these applies depends on the broker version: not something a listing
//!   can rely on.
//! - **the management API's "get messages"** does the same requeue.
//! - **a stream** beside the parking lot would be readable without
//!   consuming, but that is a second copy of every parked message and a
//!   topology change.
//!
//! So a listing *cycles* the parking lot: it takes every message that was
//! there when it started with `basic.get`, in order, publishes an exact
//! copy (same body and headers, without the broker's `x-delivery-count`)
//! to the tail with a publisher confirm, and acks the original only once
//! the copy is confirmed. Every message, listed or not, is cycled: after
//! the run the parking lot holds the same messages in the same order, each
//! with a fresh delivery history. No loss: an original is removed only
//! after its copy is safe. No duplicate, except if the process dies between
//! a copy's confirm and its original's ack (the broker then requeues the
//! original); the copy carries the same event id, which handlers
//! de-duplicate on if both are replayed. Messages parked by a worker while
//! the listing runs land between the originals and their copies, so they
//! end up ahead of older ones; the run counts them and says so. Run one
//! listing or replay at a time: two would take each other's messages.

use dlr_shared::ReceiptEvent;
use dlr_shared::amqp::{Topology, header_str, header_u64};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};

use crate::config::ParkedSelection;
use crate::envelope::{
    HEADER_ATTEMPT, HEADER_HANDLER, HEADER_LAST_ERROR, HEADER_PARK_REASON, HEADER_PARKED_AT,
};

/// Messages cycled per round: held unacked meanwhile, so memory is bounded.
const BATCH: usize = 200;

/// Failure of a listing.
#[derive(Debug, thiserror::Error)]
pub enum ParkedError {
    /// A broker operation failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker did not confirm a copy; its original was requeued.
    #[error("the broker refused the copy of a parked message ({0}); the original was put back")]
    NotConfirmed(String),
}

/// One parked message as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedEntry {
    /// Event id (the message id; `-` if it has none).
    pub event_id: String,
    /// Provider, from the body (`-` if unreadable).
    pub provider: String,
    /// Outcome, from the body.
    pub outcome: String,
    /// Why it was parked (`delivery_limit` when the broker dead-lettered it).
    pub reason: String,
    /// The step that failed: a handler, or `http:<endpoint>`.
    pub handler: String,
    /// Attempts made.
    pub attempts: u64,
    /// When it was parked (RFC 3339).
    pub parked_at: String,
    /// The last error.
    pub last_error: String,
}

impl ParkedEntry {
    /// Reads what the worker's park headers and the body say.
    pub fn of(properties: &BasicProperties, body: &[u8]) -> Self {
        let headers = properties.headers().as_ref();
        let text = |name: &str| header_str(headers, name).unwrap_or("-").to_owned();
        let event = ReceiptEvent::from_json(body).ok();
        let reason = match header_str(headers, HEADER_PARK_REASON) {
            Some(reason) => reason.to_owned(),
            // Dead-lettered by the broker after too many redeliveries.
            None if header_str(headers, "x-first-death-reason").is_some() => "delivery_limit".to_owned(),
            None => "-".to_owned(),
        };
        Self {
            event_id: properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .or_else(|| event.as_ref().map(|e| e.event_id.as_str().to_owned()))
                .unwrap_or_else(|| "-".to_owned()),
            provider: event.as_ref().map_or("-", |e| e.provider.as_str()).to_owned(),
            outcome: event.as_ref().map_or("-", |e| e.outcome.as_str()).to_owned(),
            reason,
            handler: text(HEADER_HANDLER),
            attempts: header_u64(headers, HEADER_ATTEMPT).unwrap_or(0),
            parked_at: text(HEADER_PARKED_AT),
            last_error: text(HEADER_LAST_ERROR),
        }
    }

    /// One line: greppable `key=value` pairs, the error last and quoted.
    pub fn line(&self) -> String {
        format!(
            "{} event={} provider={} outcome={} reason={} handler={} attempts={} error={:?}",
            self.parked_at,
            self.event_id,
            self.provider,
            self.outcome,
            self.reason,
            self.handler,
            self.attempts,
            self.last_error
        )
    }

    /// Whether the entry is in `selection`.
    pub fn selected(&self, selection: &ParkedSelection) -> bool {
        let filters = selection.filters.iter().all(|(key, wanted)| match key.as_str() {
            "reason" => &self.reason == wanted,
            // `handler=http` covers every endpoint (`http:crm`).
            "handler" => self.handler.split(':').next() == Some(wanted.as_str()),
            "endpoint" => self.handler.split_once(':').map(|(_, endpoint)| endpoint) == Some(wanted.as_str()),
            "provider" => &self.provider == wanted,
            "outcome" => &self.outcome == wanted,
            _ => false,
        });
        if !filters {
            return false;
        }
        if selection.since.is_none() && selection.until.is_none() {
            return true;
        }
        let Ok(parked_at) = chrono::DateTime::parse_from_rfc3339(&self.parked_at) else {
            return false;
        };
        selection.since.is_none_or(|since| parked_at >= since)
            && selection.until.is_none_or(|until| parked_at < until)
    }
}

/// Counts of a listing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ListReport {
    /// Messages cycled (all that were parked when the run started).
    pub examined: u64,
    /// Lines printed.
    pub listed: u64,
    /// Messages parked while the run went on, now ahead of the listed ones.
    pub parked_meanwhile: u64,
}

/// Messages in `queue` now.
pub async fn queue_length(channel: &Channel, queue: &str) -> Result<u64, lapin::Error> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    Ok(u64::from(declared.message_count()))
}

/// Lists the parked messages in `selection`, at most `limit`, calling
/// `print` for each, and leaves the parking lot as it was (see the module
/// documentation). `channel` is put in confirm mode.
pub async fn list(
    channel: &Channel,
    topology: &Topology,
    selection: &ParkedSelection,
    limit: Option<u64>,
    mut print: impl FnMut(&ParkedEntry),
) -> Result<ListReport, ParkedError> {
    let queue = topology.parked_queue.as_str();
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let parked = queue_length(channel, queue).await?;
    let mut report = ListReport::default();
    while report.examined < parked {
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH && report.examined < parked {
            let Some(message) = channel.basic_get(queue.into(), BasicGetOptions::default()).await? else {
                break;
            };
            let delivery = message.delivery;
            report.examined += 1;
            let entry = ParkedEntry::of(&delivery.properties, &delivery.data);
            if limit.is_none_or(|l| report.listed < l) && entry.selected(selection) {
                print(&entry);
                report.listed += 1;
            }
            batch.push(delivery);
        }
        if batch.is_empty() {
            // Someone else took messages off the parking lot meanwhile.
            break;
        }
        cycle(channel, queue, batch).await?;
    }
    let now = queue_length(channel, queue).await?;
    report.parked_meanwhile = now.saturating_sub(parked.max(report.examined));
    Ok(report)
}

/// Publishes a copy of each message to the tail of `queue`, then acks the
/// originals whose copies the broker confirmed; an original whose copy was
/// refused is requeued, and the run stops there.
async fn cycle(channel: &Channel, queue: &str, batch: Vec<Delivery>) -> Result<(), ParkedError> {
    let mut confirms = Vec::with_capacity(batch.len());
    for delivery in &batch {
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    options,
                    &delivery.data,
                    copy_properties(&delivery.properties),
                )
                .await?,
        );
    }
    let mut refused = None;
    for (delivery, confirm) in batch.into_iter().zip(confirms) {
        let confirmation = confirm.await?;
        if refused.is_none() && matches!(confirmation, Confirmation::Ack(None)) {
            delivery.acker.ack(BasicAckOptions::default()).await?;
        } else {
            // A copy not confirmed (or confirmed after an earlier refusal,
            // which would now be out of order): the original stays.
            refused.get_or_insert_with(|| format!("{confirmation:?}"));
            delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
        }
    }
    match refused {
        None => Ok(()),
        Some(what) => Err(ParkedError::NotConfirmed(what)),
    }
}

/// The message's properties for its copy: everything, but the broker's
/// delivery counter, which would otherwise follow the copy.
fn copy_properties(original: &BasicProperties) -> BasicProperties {
    let mut properties = original.clone();
    if let Some(headers) = original.headers() {
        let mut kept = FieldTable::default();
        for (name, value) in headers.inner().iter().filter(|(name, _)| name.as_str() != "x-delivery-count") {
            kept.insert(name.clone(), value.clone());
        }
        properties = properties.with_headers(kept);
    }
    properties
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlr_shared::amqp::insert_str;
    use lapin::types::AMQPValue;

    fn parked(handler: &str, parked_at: &str) -> (BasicProperties, Vec<u8>) {
        let mut headers = FieldTable::default();
        insert_str(&mut headers, HEADER_PARK_REASON, "retries_exhausted");
        insert_str(&mut headers, HEADER_HANDLER, handler);
        insert_str(&mut headers, HEADER_PARKED_AT, parked_at);
        insert_str(&mut headers, HEADER_LAST_ERROR, "endpoint crm: receiver answered 503");
        headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(19));
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        let body = br#"{"schema_version":1,"event_id":"0b9f6e0c3a3f4e1d8c2b7a6f5e4d3c2b","provider":"twilio",
            "message_id":"SM1","outcome":"failed","status":"failed","status_recognised":true,
            "received_at":"2026-11-30T10:00:00Z","raw":{}}"#;
        (BasicProperties::default().with_headers(headers).with_message_id("0b9f".into()), body.to_vec())
    }

    fn selection(filters: &[(&str, &str)], since: Option<&str>, until: Option<&str>) -> ParkedSelection {
        let at =
            |t: &str| chrono::DateTime::parse_from_rfc3339(t).map(|d| d.with_timezone(&chrono::Utc)).ok();
        ParkedSelection {
            filters: filters.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            since: since.and_then(at),
            until: until.and_then(at),
        }
    }

    #[test]
    fn an_entry_reads_the_park_headers_and_the_body() {
        let (properties, body) = parked("http:crm", "2026-12-07T10:00:00+00:00");
        let entry = ParkedEntry::of(&properties, &body);
        assert_eq!(
            entry.line(),
            "2026-12-07T10:00:00+00:00 event=0b9f provider=twilio outcome=failed reason=retries_exhausted \
             handler=http:crm attempts=19 error=\"endpoint crm: receiver answered 503\""
        );
    }

    #[test]
    fn selection_by_handler_endpoint_and_time() {
        let (properties, body) = parked("http:crm", "2026-12-07T10:00:00+00:00");
        let entry = ParkedEntry::of(&properties, &body);
        assert!(entry.selected(&selection(&[("handler", "http")], None, None)));
        assert!(entry.selected(&selection(&[("endpoint", "crm"), ("provider", "twilio")], None, None)));
        assert!(!entry.selected(&selection(&[("endpoint", "billing")], None, None)));
        assert!(!entry.selected(&selection(&[("handler", "postgres")], None, None)));
        assert!(entry.selected(&selection(&[], Some("2026-12-07T10:00:00Z"), Some("2026-12-07T10:00:01Z"))));
        assert!(!entry.selected(&selection(&[], Some("2026-12-07T10:00:01Z"), None)));
        assert!(!entry.selected(&selection(&[], None, Some("2026-12-07T10:00:00Z"))));
    }

    #[test]
    fn a_copy_keeps_everything_but_the_delivery_count() {
        let (properties, _) = parked("postgres", "x");
        let copy = copy_properties(&properties);
        let headers = copy.headers().as_ref();
        assert!(headers.is_some_and(|h| h.inner().get("x-delivery-count").is_none()));
        assert_eq!(header_str(headers, HEADER_HANDLER), Some("postgres"));
        assert_eq!(copy.message_id(), properties.message_id());
    }
}
