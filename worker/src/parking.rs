//! Moving messages aside and back: retry scheduling, the parking lot, and
//! the replay subcommands.
//!
//! Every move is publish-confirm first, ack second. A crash in between
//! leaves a duplicate (handled by idempotent handlers), never a loss.

use base64::Engine;
use dlr_shared::amqp::{Publisher, Topology, header_str, header_u64, insert_str};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use std::time::Duration;

use crate::dispatch::ParkReason;
use crate::handlers::HandlerKind;
use crate::retry::RetryPolicy;

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

/// Error texts can be long (HTML error pages); headers should not be.
const MAX_ERROR_LEN: usize = 512;

/// Reads the attempt number and done handlers from a delivery's headers.
pub fn progress(properties: &BasicProperties) -> (u32, Vec<HandlerKind>) {
    let headers = properties.headers().as_ref();
    let attempt = header_u64(headers, HEADER_ATTEMPT).and_then(|a| u32::try_from(a).ok()).unwrap_or(1).max(1);
    let done = header_str(headers, HEADER_DONE)
        .map(|list| list.split(',').filter_map(|name| name.trim().parse().ok()).collect())
        .unwrap_or_default();
    (attempt, done)
}

fn done_list(done: &[HandlerKind]) -> String {
    done.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(",")
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(MAX_ERROR_LEN) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// Rebuilds the message properties with updated bookkeeping headers.
///
/// Built fresh rather than cloned so that a retry's per-message expiration
/// never follows the message into the parking lot or back to work.
fn with_headers(original: &BasicProperties, update: impl FnOnce(&mut FieldTable)) -> BasicProperties {
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

/// Where a retried message goes next and why.
#[derive(Debug, Clone, Copy)]
pub struct RetryPlan<'a> {
    /// Attempt number the message will carry.
    pub next_attempt: u32,
    /// Delay queue to use.
    pub delay: Duration,
    /// Handlers that need not run again.
    pub done: &'a [HandlerKind],
    /// The handler that failed.
    pub handler: HandlerKind,
    /// Its error.
    pub error: &'a str,
}

/// Why a message is parked, written into its headers.
#[derive(Debug, Clone, Copy)]
pub struct ParkNote<'a> {
    /// Reason.
    pub reason: ParkReason,
    /// Handler that failed, if any.
    pub handler: Option<HandlerKind>,
    /// Attempts made.
    pub attempts: u32,
    /// Handlers that need not run again after a replay.
    pub done: &'a [HandlerKind],
    /// Last error.
    pub error: &'a str,
}

/// Puts the message into the delay queue for `plan.delay`; it comes back to
/// the receipts queue when its (jittered) expiration passes.
pub async fn schedule_retry(
    publisher: &Publisher,
    topology: &Topology,
    message: &Delivery,
    plan: RetryPlan<'_>,
) -> Result<(), dlr_shared::amqp::PublishError> {
    let properties = with_headers(&message.properties, |h| {
        h.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(plan.next_attempt)));
        insert_str(h, HEADER_DONE, &done_list(plan.done));
        insert_str(h, HEADER_HANDLER, plan.handler.as_str());
        insert_str(h, HEADER_LAST_ERROR, truncate(plan.error));
    })
    .with_expiration(ShortString::from(RetryPolicy::jittered(plan.delay).as_millis().to_string()));
    redeclare_if_returned(
        publisher,
        publisher.publish("", &topology.retry_queue(plan.delay), &message.data, properties).await,
    )
}

/// Our own delay queues and parking lot must exist; a return means someone
/// deleted one, so the topology is declared again before the retry.
fn redeclare_if_returned(
    publisher: &Publisher,
    result: Result<(), dlr_shared::amqp::PublishError>,
) -> Result<(), dlr_shared::amqp::PublishError> {
    if let Err(dlr_shared::amqp::PublishError::Returned { .. }) = &result {
        publisher.broker().request_redeclare();
    }
    result
}

/// Publishes the message to the parking lot with the reason, handler,
/// attempt count and last error as headers.
pub async fn park(
    publisher: &Publisher,
    topology: &Topology,
    message: &Delivery,
    note: ParkNote<'_>,
) -> Result<(), dlr_shared::amqp::PublishError> {
    let properties = with_headers(&message.properties, |h| {
        insert_str(h, HEADER_PARK_REASON, note.reason.as_str());
        insert_str(h, HEADER_HANDLER, note.handler.map(HandlerKind::as_str).unwrap_or("none"));
        h.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(note.attempts)));
        insert_str(h, HEADER_DONE, &done_list(note.done));
        insert_str(h, HEADER_LAST_ERROR, truncate(note.error));
        insert_str(h, HEADER_PARKED_AT, &chrono::Utc::now().to_rfc3339());
    });
    redeclare_if_returned(
        publisher,
        publisher.publish("", &topology.parked_queue, &message.data, properties).await,
    )
}

/// Counts of a replay run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    /// Messages looked at.
    pub examined: u64,
    /// Messages moved back.
    pub replayed: u64,
    /// Messages left where they were (filter mismatch, or refused again).
    pub kept: u64,
}

/// Failure of a replay run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Broker operation failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// Publishing a replayed message failed.
    #[error("publish: {0}")]
    Publish(#[from] dlr_shared::amqp::PublishError),
    /// Forwarding to ingest failed.
    #[error("ingest: {0}")]
    Ingest(String),
}

fn matches(properties: &BasicProperties, body: &[u8], filters: &[(String, String)]) -> bool {
    let headers = properties.headers().as_ref();
    let event = dlr_shared::ReceiptEvent::from_json(body).ok();
    filters.iter().all(|(key, wanted)| {
        let actual = match key.as_str() {
            "reason" => header_str(headers, HEADER_PARK_REASON).map(str::to_owned),
            "handler" => header_str(headers, HEADER_HANDLER).map(str::to_owned),
            "provider" => event.as_ref().map(|e| e.provider.as_str().to_owned()),
            "outcome" => event.as_ref().map(|e| e.outcome.as_str().to_owned()),
            _ => None,
        };
        actual.as_deref() == Some(wanted.as_str())
    })
}

/// Header marking messages replayed by one run, so that a run never takes
/// back what it replayed itself (an event parked again while the
/// downstream still refuses it).
pub const HEADER_REPLAY_RUN: &str = "x-dlr-replay-run";

/// Messages in `queue` now: a replay run examines at most these, so it ends
/// even while replayed messages keep coming back.
async fn queue_length(channel: &Channel, queue: &str) -> Result<u64, ReplayError> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    Ok(u64::from(declared.message_count()))
}

/// Moves parked messages matching `filters` back to the receipts queue,
/// with a fresh attempt count and their done-handlers kept. One pass: only
/// messages parked when the run started are examined. Messages that do not
/// match are returned to the parking lot when the run ends.
pub async fn replay_parked(
    channel: &Channel,
    publisher: &Publisher,
    topology: &Topology,
    limit: Option<u64>,
    filters: &[(String, String)],
) -> Result<ReplayReport, ReplayError> {
    let run = uuid::Uuid::new_v4().to_string();
    let parked = queue_length(channel, &topology.parked_queue).await?;
    let mut report = ReplayReport::default();
    let mut skipped = Vec::new();
    while report.examined < parked && limit.is_none_or(|l| report.replayed < l) {
        let Some(message) =
            channel.basic_get(topology.parked_queue.as_str().into(), BasicGetOptions::default()).await?
        else {
            break;
        };
        let delivery = message.delivery;
        if header_str(delivery.properties.headers().as_ref(), HEADER_REPLAY_RUN) == Some(run.as_str()) {
            // Replayed by this run and parked again: the pass is complete.
            skipped.push(delivery);
            break;
        }
        report.examined += 1;
        if !matches(&delivery.properties, &delivery.data, filters) {
            report.kept += 1;
            skipped.push(delivery);
            continue;
        }
        let properties = with_headers(&delivery.properties, |h| {
            h.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(1));
            insert_str(h, HEADER_REPLAY_RUN, &run);
        });
        publisher.publish("", &topology.queue, &delivery.data, properties).await?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        report.replayed += 1;
    }
    // Held unacked until now so that basic.get does not hand them out again.
    keep_all(channel, &topology.parked_queue, skipped).await?;
    Ok(report)
}

/// Request header of a quarantine replay (ingest's `intake::REPLAY_HEADER`).
const REPLAY_HEADER: &str = "x-dlr-replay";

/// Re-sends quarantined requests to ingest. Ingest verifies them again with
/// its current secrets; accepted ones (2xx) leave the quarantine, the rest
/// stay there.
pub async fn replay_quarantine(
    channel: &Channel,
    topology: &Topology,
    ingest_url: &url::Url,
    limit: Option<u64>,
) -> Result<ReplayReport, ReplayError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| ReplayError::Ingest(e.to_string()))?;
    // Requests still refused are quarantined again by ingest as new
    // messages; examining only what was there at the start ends the run.
    let quarantined = queue_length(channel, &topology.quarantine_queue).await?;
    let mut report = ReplayReport::default();
    let mut kept = Vec::new();
    while report.examined < quarantined && limit.is_none_or(|l| report.examined < l) {
        let Some(message) =
            channel.basic_get(topology.quarantine_queue.as_str().into(), BasicGetOptions::default()).await?
        else {
            break;
        };
        let delivery = message.delivery;
        report.examined += 1;
        match resend(&client, ingest_url, &delivery.data).await {
            Ok(()) => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
                report.replayed += 1;
            }
            Err(reason) => {
                tracing::warn!(%reason, "quarantined request still refused; kept");
                report.kept += 1;
                kept.push(delivery);
            }
        }
    }
    keep_all(channel, &topology.quarantine_queue, kept).await?;
    Ok(report)
}

/// Puts messages a replay run keeps back into `queue` as fresh copies and
/// acks the originals.
///
/// Not a nack with requeue: on RabbitMQ 4 a requeue counts toward a quorum
/// queue's delivery limit (20 unless set), and the parking lot and the
/// quarantine have nowhere to dead-letter to, so a message kept by twenty
/// replay runs would be dropped. A copy starts with no delivery history.
/// If the copy is not confirmed, the original is requeued after all.
async fn keep_all(channel: &Channel, queue: &str, kept: Vec<Delivery>) -> Result<(), ReplayError> {
    if kept.is_empty() {
        return Ok(());
    }
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    for delivery in kept {
        let properties = with_headers(&delivery.properties, |_| {});
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        // One publish at a time: a return can only be this message's own.
        let confirmation = channel
            .basic_publish("".into(), queue.into(), options, &delivery.data, properties)
            .await?
            .await?;
        if matches!(confirmation, Confirmation::Ack(None)) {
            delivery.acker.ack(BasicAckOptions::default()).await?;
        } else {
            delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
        }
    }
    Ok(())
}

async fn resend(client: &reqwest::Client, ingest_url: &url::Url, copy: &[u8]) -> Result<(), String> {
    let copy: serde_json::Value =
        serde_json::from_slice(copy).map_err(|e| format!("unreadable copy: {e}"))?;
    let request = &copy["request"];
    let path = request["path"].as_str().ok_or("copy has no path")?;
    let mut url = ingest_url.join(path).map_err(|e| e.to_string())?;
    url.set_query(request["query"].as_str());
    let method = reqwest::Method::from_bytes(request["method"].as_str().unwrap_or("POST").as_bytes())
        .map_err(|e| e.to_string())?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(request["body_base64"].as_str().unwrap_or(""))
        .map_err(|e| e.to_string())?;
    // Marks the request as a replay, so that ingest does not quarantine it a
    // second time when it is still refused: this run keeps the original.
    let mut builder = client.request(method, url).body(body).header(REPLAY_HEADER, "1");
    if let Some(headers) = request["headers"].as_object() {
        for (name, value) in headers {
            if let Some(value) = value.as_str() {
                builder = builder.header(name.as_str(), value);
            }
        }
    }
    let response = builder.send().await.map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("ingest answered {}", response.status()))
    }
}
