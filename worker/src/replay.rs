//! The operator's replay commands: `worker replay-parked` and
//! `worker replay-quarantine`.
//!
//! Both take messages off a queue with `basic.get`, one pass over what was
//! there when the run started, and move each on or keep it. Every move is
//! publish-confirm first, ack second: a crash in between leaves a
//! duplicate (handled by idempotent handlers), never a loss.

use crate::config::ParkedSelection;
use crate::parked::{ParkedEntry, queue_length};
use dlr_shared::ReceiptEvent;
use dlr_shared::amqp::{Publisher, Topology, header_str, insert_str};
use dlr_shared::quarantine::{QuarantinedRequest, REPLAY_HEADER, REPLAY_SEAL_HEADER};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::AMQPValue;
use lapin::{Channel, Confirmation};
use std::time::Duration;

use crate::envelope::{self, HEADER_ATTEMPT, HEADER_REPLAY_RUN};

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
    let selection = ParkedSelection { filters: filters.to_vec(), ..Default::default() };
    replay_parked_selected(channel, publisher, topology, limit, &selection).await
}

/// [`replay_parked`] with the time window of `--since` and `--until` too.
pub async fn replay_parked_selected(
    channel: &Channel,
    publisher: &Publisher,
    topology: &Topology,
    limit: Option<u64>,
    selection: &ParkedSelection,
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
        if !ParkedEntry::of(&delivery.properties, &delivery.data).selected(selection) {
            report.kept += 1;
            skipped.push(delivery);
            continue;
        }
        let properties = envelope::rebuilt(&delivery.properties, |h| {
            h.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(1));
            insert_str(h, HEADER_REPLAY_RUN, &run);
        });
        if topology.is_sharded() {
            // Back to the shard of the receipt's message id (of the AMQP
            // message id when the body is not a receipt: any shard will do).
            let message_id = ReceiptEvent::from_json(&delivery.data)
                .map(|event| event.message_id.as_str().to_owned())
                .ok()
                .or_else(|| delivery.properties.message_id().as_ref().map(|id| id.to_string()))
                .unwrap_or_default();
            let routing_key = topology.receipt_routing_key(&message_id);
            publisher.publish(&topology.exchange, routing_key, &delivery.data, properties).await?;
        } else {
            publisher.publish("", &topology.queue, &delivery.data, properties).await?;
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
        report.replayed += 1;
    }
    // Held unacked until now so that basic.get does not hand them out again.
    keep_all(channel, &topology.parked_queue, skipped).await?;
    Ok(report)
}

/// Re-sends quarantined requests to ingest. Ingest verifies them again with
/// its current secrets (as of their first receipt when the copy is sealed);
/// accepted ones (2xx) leave the quarantine, the rest stay there.
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
        let properties = envelope::rebuilt(&delivery.properties, |_| {});
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
    let copy = QuarantinedRequest::from_json(copy).map_err(|e| format!("unreadable copy: {e}"))?;
    let request = copy.request;
    let mut url = ingest_url.join(&request.path).map_err(|e| e.to_string())?;
    url.set_query(request.query.as_deref());
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|e| e.to_string())?;
    // Marks the request as a replay, so that ingest does not quarantine it a
    // second time when it is still refused: this run keeps the original.
    let mut builder = client.request(method, url).body(request.body).header(REPLAY_HEADER, "1");
    // Ingest's seal, verbatim: with it ingest verifies the request as of its
    // first receipt (a signature older than the freshness window passes)
    // and restores a Basic credential. The worker needs no key for this.
    if let Some(seal) = &request.seal {
        builder = builder.header(REPLAY_SEAL_HEADER, seal.as_str());
    }
    for (name, value) in &request.headers {
        if let Some(value) = value {
            builder = builder.header(name.as_str(), value.as_str());
        }
    }
    let response = builder.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    // Ingest's answer names the reason (`mismatch`, `stale`, `replay_seal`, ...).
    let reason = response
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|body| body.get("reason").and_then(serde_json::Value::as_str).map(str::to_owned));
    Err(match reason {
        Some(reason) => format!("ingest answered {status} ({reason})"),
        None => format!("ingest answered {status}"),
    })
}
