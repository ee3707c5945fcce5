//! A receipt message as the worker moves it between its own queues.
//!
//! When the worker sends a message on (to a delay queue, the parking lot,
//! back to work), the body is the event exactly as ingest published it and
//! the bookkeeping travels in headers: which attempt this is, which
//! handlers already succeeded, and why it was parked. This module owns
//! those headers and the rebuilt properties that carry them.
//!
//! A *step* is what the done list records: a handler, or one webhook
//! endpoint of the http handler (`http:<endpoint>`), so that a retry after
//! one endpoint failed never re-sends to another endpoint that succeeded.

use dlr_shared::amqp::{PublishError, Publisher, header_str, header_u64};
use lapin::BasicProperties;
use lapin::types::FieldTable;
use tracing::Instrument;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use crate::handlers::HandlerKind;

/// Attempt number of this delivery (1 on first delivery).
pub const HEADER_ATTEMPT: &str = "x-dlr-attempt";
/// Comma-separated steps that already succeeded for this event (`postgres,http:crm`).
pub const HEADER_DONE: &str = "x-dlr-done-handlers";
/// Last error text (truncated).
pub const HEADER_LAST_ERROR: &str = "x-dlr-last-error";
/// Step that failed last (`postgres`, `http:crm`).
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

/// The name of a configured webhook endpoint, as metrics, logs and headers
/// carry it.
///
/// Interned: names come from the configuration only (a bounded set), and a
/// `&'static str` keeps [`Step`] `Copy` and its label borrow-free, like the
/// handler names it stands beside. A name read back from a header is only
/// recognised if it is configured ([`EndpointName::known`]), so message
/// input never grows the table.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointName {
    name: &'static str,
    /// `http:<name>`, the step's label.
    step: &'static str,
}

/// Every endpoint name configured in this process.
fn endpoint_names() -> &'static Mutex<HashMap<String, EndpointName>> {
    static NAMES: OnceLock<Mutex<HashMap<String, EndpointName>>> = OnceLock::new();
    NAMES.get_or_init(|| Mutex::new(HashMap::new()))
}

impl EndpointName {
    /// Registers a configured name (once per distinct name and process).
    pub fn configured(name: &str) -> Self {
        let mut names = endpoint_names().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *names.entry(name.to_owned()).or_insert_with(|| EndpointName {
            name: Box::leak(name.to_owned().into_boxed_str()),
            step: Box::leak(format!("{}:{name}", HandlerKind::Http.as_str()).into_boxed_str()),
        })
    }

    /// The name, if it was configured in this process.
    pub fn known(name: &str) -> Option<Self> {
        let names = endpoint_names().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        names.get(name).copied()
    }

    /// The name as configured.
    pub fn as_str(self) -> &'static str {
        self.name
    }
}

impl fmt::Debug for EndpointName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl fmt::Display for EndpointName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// One unit of work for an event that succeeds or fails on its own: a
/// handler, or one endpoint of the http handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// A whole handler. `Handler(Http)` in a done list (written before
    /// endpoints existed) means every endpoint is done.
    Handler(HandlerKind),
    /// One webhook endpoint.
    Endpoint(EndpointName),
}

impl Step {
    /// The header, log and metrics word: `postgres`, `http:crm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Handler(kind) => kind.as_str(),
            Step::Endpoint(name) => name.step,
        }
    }

    /// The handler this step belongs to.
    pub fn handler(self) -> HandlerKind {
        match self {
            Step::Handler(kind) => kind,
            Step::Endpoint(_) => HandlerKind::Http,
        }
    }

    /// Reads a word back; `None` for unknown handlers and for endpoints
    /// no longer configured (nothing can be sent to them anyway).
    pub fn parse(word: &str) -> Option<Self> {
        let word = word.trim();
        match word.split_once(':') {
            Some((handler, endpoint)) if handler == HandlerKind::Http.as_str() => {
                EndpointName::known(endpoint).map(Step::Endpoint)
            }
            Some(_) => None,
            None => word.parse().ok().map(Step::Handler),
        }
    }
}

impl From<HandlerKind> for Step {
    fn from(kind: HandlerKind) -> Self {
        Step::Handler(kind)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a delivery stands: its attempt number and the steps that need
/// not run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// 1 on first delivery.
    pub attempt: u32,
    /// Steps that already succeeded for this event.
    pub done: Vec<Step>,
}

impl Progress {
    /// Reads the bookkeeping headers of a delivery; a message ingest
    /// published has none and is attempt 1 with nothing done.
    pub fn of(properties: &BasicProperties) -> Self {
        let headers = properties.headers().as_ref();
        let attempt =
            header_u64(headers, HEADER_ATTEMPT).and_then(|a| u32::try_from(a).ok()).unwrap_or(1).max(1);
        let done = header_str(headers, HEADER_DONE)
            .map(|list| list.split(',').filter_map(Step::parse).collect())
            .unwrap_or_default();
        Self { attempt, done }
    }
}

/// The header value of a done list.
pub fn done_list(done: &[Step]) -> String {
    done.iter().map(|step| step.as_str()).collect::<Vec<_>>().join(",")
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
///
/// Traced as a producer span whose context replaces the message's: the
/// next attempt (or a replay from the parking lot) is then its child, in
/// the same trace as every attempt before it.
pub async fn publish_to_own_queue(
    publisher: &Publisher,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    publish_to_own(publisher, "", queue, body, properties).await
}

/// [`publish_to_own_queue`] through an exchange of ours (a sharded delay
/// queue's fanout exchange): a return means the exchange's binding is gone.
pub async fn publish_to_own(
    publisher: &Publisher,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    let span = dlr_shared::telemetry::spans::publish(routing_key);
    let properties = span.in_scope(|| with_current_trace(properties));
    let result = publisher.publish(exchange, routing_key, body, properties).instrument(span.clone()).await;
    if let Err(PublishError::Returned { .. }) = &result {
        publisher.broker().request_redeclare();
    }
    if result.is_err() {
        dlr_shared::telemetry::spans::failed(&span);
    }
    result
}

/// `properties` carrying the current trace context (unchanged without one).
fn with_current_trace(properties: BasicProperties) -> BasicProperties {
    let Some(trace) = dlr_shared::telemetry::context::current() else { return properties };
    let mut headers = properties.headers().clone().unwrap_or_default();
    trace.insert_into_amqp(&mut headers);
    properties.with_headers(headers)
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
            let crm = Step::Endpoint(EndpointName::configured("crm-envelope-test"));
            insert_str(
                h,
                HEADER_DONE,
                &done_list(&[HandlerKind::Postgres.into(), crm, HandlerKind::Amqp.into()]),
            );
        });
        let progress = Progress::of(&properties);
        assert_eq!(progress.attempt, 3);
        let crm = Step::Endpoint(EndpointName::configured("crm-envelope-test"));
        assert_eq!(progress.done, vec![HandlerKind::Postgres.into(), crm, HandlerKind::Amqp.into()]);
    }

    #[test]
    fn endpoints_no_longer_configured_are_dropped_from_the_done_list() {
        let mut headers = FieldTable::default();
        insert_str(&mut headers, HEADER_DONE, "log,http:never-configured-here,http");
        let progress = Progress::of(&BasicProperties::default().with_headers(headers));
        assert_eq!(progress.done, vec![HandlerKind::Log.into(), HandlerKind::Http.into()]);
        assert_eq!(Step::Endpoint(EndpointName::configured("a")).as_str(), "http:a");
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
