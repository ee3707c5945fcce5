//! Everything about the broker that ingest and worker must agree on.
//!
//! - [`topology`]: exchange/queue names and arguments, declared from one place.
//! - [`connection`]: a supervised connection that reconnects on its own, so a
//!   broker restart never needs a process restart.
//! - [`shards`]: which of N receipts queues a receipt goes to.
//! - [`publisher`]: confirmed, mandatory publishes that report every way a
//!   message can fail to reach a queue.

pub mod connection;
pub mod publisher;
pub mod shards;
pub mod topology;

pub use connection::BrokerConnection;
pub use publisher::{Outgoing, PublishError, Publisher};
pub use topology::Topology;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::event::ReceiptEvent;

/// How a receipt event travels on the broker: persistent, JSON, with the
/// deterministic event id as `message_id` (so a provider's retry carries the
/// same id) and provider/outcome headers for routing and inspection without
/// parsing the body. Ingest publishes with exactly these properties.
///
/// The trace context of the caller goes along as W3C `traceparent` and
/// `tracestate` headers (see [`crate::telemetry::context`]), so the
/// consumer's work joins the publisher's trace.
pub fn receipt_properties(event: &ReceiptEvent) -> BasicProperties {
    let mut headers = FieldTable::default();
    insert_str(&mut headers, "x-provider", event.provider.as_str());
    insert_str(&mut headers, "x-outcome", event.outcome.as_str());
    insert_str(&mut headers, "x-authenticity", event.authenticity.map_or("unknown", |a| a.as_str()));
    if let Some(trace) = crate::telemetry::context::current() {
        trace.insert_into_amqp(&mut headers);
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(event.event_id.as_str().into())
        .with_timestamp(u64::try_from(event.received_at.timestamp()).unwrap_or(0))
        .with_type("receipt.v1".into())
        .with_headers(headers)
}

/// `type` of a readiness probe: a message ingest publishes to the receipts
/// queue, once a second and only while its own publishes keep failing, to
/// learn when it can store receipts again. It carries no receipt; the
/// worker acks and drops it.
pub const PROBE_MESSAGE_TYPE: &str = "probe.v1";

/// Properties of a readiness probe (see [`PROBE_MESSAGE_TYPE`]): transient,
/// with its own message id so that its return can be told apart.
pub fn probe_properties() -> BasicProperties {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    BasicProperties::default()
        .with_delivery_mode(1)
        .with_content_type("application/json".into())
        .with_message_id(format!("probe-{}-{started}-{n}", std::process::id()).as_str().into())
        .with_type(PROBE_MESSAGE_TYPE.into())
}

/// Reads a string header (either AMQP string type) from message headers.
pub fn header_str<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a str> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Reads an integer header written by us or by the broker.
pub fn header_u64(headers: Option<&FieldTable>, name: &str) -> Option<u64> {
    match headers?.inner().get(name)? {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

/// Builds a string header value.
pub fn string_value(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Inserts a string header.
pub fn insert_str(table: &mut FieldTable, name: &str, value: &str) {
    table.insert(ShortString::from(name), string_value(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_properties_carry_id_persistence_and_routing_headers() {
        let event = ReceiptEvent::from_json(
            br#"{"schema_version":1,"event_id":"0b9f6e0c3a3f4e1d8c2b7a6f5e4d3c2b","provider":"vonage-sms",
                "message_id":"02000000FEA5EE9B","outcome":"failed","status":"expired","status_recognised":true,
                "received_at":"2026-11-30T10:00:00Z","raw":{}}"#,
        )
        .expect("a valid event");
        let properties = receipt_properties(&event);
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert_eq!(properties.content_type().as_ref().map(|c| c.as_str()), Some("application/json"));
        assert_eq!(properties.message_id().as_ref().map(|m| m.as_str()), Some(event.event_id.as_str()));
        assert_eq!(header_str(properties.headers().as_ref(), "x-provider"), Some("vonage-sms"));
        assert_eq!(header_str(properties.headers().as_ref(), "x-outcome"), Some("failed"));
    }
}
