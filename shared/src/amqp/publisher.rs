//! Confirmed publishing: a message counts as stored only when the broker says so.
//!
//! Every publish is `mandatory` and waits for its own publisher confirm, so
//! callers learn about each of the ways a message can fail to reach a queue:
//! no connection, a blocked connection (memory/disk alarm), a nack, an
//! unroutable return (which RabbitMQ confirms with an *ack*, stack.md §1.3),
//! a closed channel, or no confirm in time. Concurrent publishes share one
//! confirm channel and pipeline; lapin resolves each confirm separately.
//!
//! lapin hands the oldest waiting `basic.return` to whichever confirm it
//! completes next (in a multiple-ack, in no particular order), so a return
//! is not necessarily the one of the publish it comes with. A return is
//! therefore trusted only when its `message_id` is the publish's own; any
//! other return makes the outcome doubtful, which is reported as a failure.
//! Publishes for which a return is a normal answer (events nobody is bound
//! for) belong on a publisher of their own, apart from those for which a
//! return means a fault (receipts, retries, parking), so that the normal
//! returns of the one never land on the confirms of the other.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation};
use std::sync::Mutex;
use std::time::Duration;

use super::BrokerConnection;

/// Why a message is not known to be stored. Every variant means "the
/// broker may not hold it": the caller must not report success.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No broker connection right now.
    #[error("broker unavailable")]
    Unavailable,
    /// The broker blocks publishers (resource alarm).
    #[error("broker is blocking publishers: {0}")]
    Blocked(String),
    /// The broker refused the message.
    #[error("broker nacked the message")]
    Nacked,
    /// No queue is bound for the routing key.
    #[error("message returned as unroutable ({code} {text})")]
    Returned {
        /// AMQP reply code (312 NO_ROUTE).
        code: u16,
        /// Broker's text.
        text: String,
    },
    /// The confirm came with another message's return: whether this
    /// message was stored cannot be known, so it counts as not stored.
    #[error("confirm carried the return of another message ({code} {text})")]
    ReturnMismatch {
        /// AMQP reply code of the foreign return.
        code: u16,
        /// Broker's text.
        text: String,
    },
    /// No confirm arrived within the configured time.
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    /// The channel or connection failed during the publish.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
}

impl PublishError {
    /// Low-cardinality label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PublishError::Unavailable => "unavailable",
            PublishError::Blocked(_) => "blocked",
            PublishError::Nacked => "nacked",
            PublishError::Returned { .. } => "returned",
            PublishError::ReturnMismatch { .. } => "return_mismatch",
            PublishError::Timeout(_) => "timeout",
            PublishError::Broker(_) => "channel_error",
        }
    }
}

/// AMQP NOT_FOUND: publishing to an exchange that does not exist.
const NOT_FOUND: u16 = 404;

/// Publishes with confirms on a channel it re-opens whenever needed.
pub struct Publisher {
    broker: BrokerConnection,
    channel: Mutex<Option<Channel>>,
    opening: tokio::sync::Mutex<()>,
    confirm_timeout: Duration,
}

impl Publisher {
    /// A publisher over `broker`; `confirm_timeout` bounds each publish.
    pub fn new(broker: BrokerConnection, confirm_timeout: Duration) -> Self {
        Self { broker, channel: Mutex::new(None), opening: tokio::sync::Mutex::new(()), confirm_timeout }
    }

    /// The underlying connection handle (readiness checks).
    pub fn broker(&self) -> &BrokerConnection {
        &self.broker
    }

    /// Publishes `body` with `mandatory` set and waits for the broker's
    /// confirm. `Ok` means the broker has routed and stored the message.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        match tokio::time::timeout(
            self.confirm_timeout,
            self.publish_inner(exchange, routing_key, body, properties),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(PublishError::Timeout(self.confirm_timeout)),
        }
    }

    async fn publish_inner(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let own_id = properties.message_id().clone();
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        let confirm = channel
            .basic_publish(exchange.into(), routing_key.into(), options, body, properties)
            .await
            .inspect_err(|e| self.discard(&channel, e))?;
        match confirm.await.inspect_err(|e| self.discard(&channel, e))? {
            Confirmation::Ack(None) => Ok(()),
            // The caller decides whether a return means our own topology is
            // missing (then it asks for a re-declaration) or merely that
            // nobody bound a queue for this key.
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                let code = returned.reply_code;
                let text = returned.reply_text.to_string();
                let returned_id = returned.properties.message_id();
                if own_id.is_some() && returned_id.as_ref() != own_id.as_ref() {
                    // Another publish's return: that one may now be counted as
                    // stored by mistake, and this channel's returns are out of
                    // step. Start over on a fresh channel.
                    self.forget(&channel);
                    Err(PublishError::ReturnMismatch { code, text })
                } else {
                    Err(PublishError::Returned { code, text })
                }
            }
            Confirmation::Nack(None) => Err(PublishError::Nacked),
            // Cannot happen on a channel in confirm mode; never treat it as stored.
            Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }

    /// The shared confirm channel, opening a fresh one when the old one died.
    async fn channel(&self) -> Result<Channel, PublishError> {
        if let Some(channel) = self.usable_channel()? {
            return Ok(channel);
        }
        // One task opens the channel; the others wait for it instead of
        // each opening their own.
        let _guard = self.opening.lock().await;
        if let Some(channel) = self.usable_channel()? {
            return Ok(channel);
        }
        let conn = self.broker.current().ok_or(PublishError::Unavailable)?;
        let channel = conn.create_channel().await.inspect_err(|_| self.broker.report_failure())?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        if let Ok(mut slot) = self.channel.lock() {
            *slot = Some(channel.clone());
        }
        Ok(channel)
    }

    fn usable_channel(&self) -> Result<Option<Channel>, PublishError> {
        let conn = self.broker.current().ok_or(PublishError::Unavailable)?;
        if conn.status().blocked() {
            return Err(PublishError::Blocked("connection.blocked".to_owned()));
        }
        let slot = self.channel.lock().map_err(|_| PublishError::Unavailable)?;
        Ok(slot.as_ref().filter(|c| c.status().connected()).cloned())
    }

    /// Forgets a channel after an error: lapin never reopens a channel closed
    /// by a channel-level error, so the next publish opens a new one. A 404
    /// means the exchange was deleted: declared again, as after a return.
    fn discard(&self, failed: &Channel, error: &lapin::Error) {
        self.forget(failed);
        if super::topology::broker_reply_code(error) == Some(NOT_FOUND) {
            self.broker.request_redeclare();
        } else {
            self.broker.report_failure();
        }
    }

    /// Stops using `failed` for new publishes; the next one opens a fresh
    /// channel. Publishes still in flight on it finish on it.
    fn forget(&self, failed: &Channel) {
        if let Ok(mut slot) = self.channel.lock()
            && slot.as_ref().is_some_and(|c| c.id() == failed.id())
        {
            *slot = None;
        }
    }
}
