//! The parking lot: where an event goes when retrying cannot help.
//!
//! A parked message keeps its body and gains headers saying why, which
//! handler failed, after how many attempts, and which handlers already
//! succeeded (so that `worker replay-parked` resumes where it stopped).
//! Publish-confirm first, ack second: a crash in between leaves a
//! duplicate, which the handlers absorb, never a loss.

use dlr_shared::amqp::{PublishError, Publisher, Topology, insert_str};
use lapin::message::Delivery;
use lapin::types::AMQPValue;

use crate::envelope::Step;
use crate::envelope::{
    self, HEADER_ATTEMPT, HEADER_DONE, HEADER_HANDLER, HEADER_LAST_ERROR, HEADER_PARK_REASON,
    HEADER_PARKED_AT,
};

/// Why a message went to the parking lot (header and metrics value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum ParkReason {
    /// A handler said retrying cannot help.
    PermanentFailure,
    /// Transient failures outlasted the retry schedule.
    RetriesExhausted,
    /// The message is not a receipt event we can read.
    Unparseable,
}

impl ParkReason {
    /// Header and metrics value.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A message to park, and what its headers will say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Park {
    /// Why.
    pub reason: ParkReason,
    /// The step (handler or webhook endpoint) that failed, if any.
    pub handler: Option<Step>,
    /// Attempts made.
    pub attempts: u32,
    /// Handlers that need not run again after a replay.
    pub done: Vec<Step>,
    /// The last error.
    pub error: String,
}

/// Publishes the message to the parking lot with the reason, handler,
/// attempt count and last error as headers.
pub async fn park(
    publisher: &Publisher,
    topology: &Topology,
    message: &Delivery,
    park: &Park,
) -> Result<(), PublishError> {
    let properties = envelope::rebuilt(&message.properties, |h| {
        insert_str(h, HEADER_PARK_REASON, park.reason.as_str());
        insert_str(h, HEADER_HANDLER, park.handler.map(Step::as_str).unwrap_or("none"));
        h.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(park.attempts)));
        insert_str(h, HEADER_DONE, &envelope::done_list(&park.done));
        insert_str(h, HEADER_LAST_ERROR, envelope::truncated(&park.error));
        insert_str(h, HEADER_PARKED_AT, &chrono::Utc::now().to_rfc3339());
    });
    envelope::publish_to_own_queue(publisher, &topology.parked_queue, &message.data, properties).await
}
