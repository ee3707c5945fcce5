//! Everything about the broker that ingest and worker must agree on.
//!
//! - [`topology`]: exchange/queue names and arguments, declared from one place.
//! - [`connection`]: a supervised connection that reconnects on its own, so a
//!   broker restart never needs a process restart.
//! - [`publisher`]: confirmed, mandatory publishes that report every way a
//!   message can fail to reach a queue.

pub mod connection;
pub mod publisher;
pub mod topology;

pub use connection::BrokerConnection;
pub use publisher::{PublishError, Publisher};
pub use topology::Topology;

use lapin::types::{AMQPValue, FieldTable, ShortString};

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
