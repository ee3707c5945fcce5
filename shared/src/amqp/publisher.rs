//! Confirmed publishing: a message counts as stored only when the broker says so.
//!
//! Every publish is `mandatory` and waits for its own publisher confirm, so
//! callers learn about each of the ways a message can fail to reach a queue:
//! no connection, a blocked connection (memory/disk alarm), a nack, an
//! unroutable return (which RabbitMQ confirms with an *ack*, see "Publisher
//! Confirms" in <https://www.rabbitmq.com/docs/confirms>), a closed channel,
//! or no confirm in time.
//!
//! # One publish in flight per channel
//!
//! lapin hands the oldest waiting `basic.return` of a channel to whichever
//! confirm it completes next, and completes the confirms of a multiple ack
//! in no particular order. With several publishes in flight on one channel,
//! a return can therefore land on another publish's confirm, and the
//! returned publish's own confirm can come back as a plain ack: a message
//! that reached no queue would be reported as stored, and a stored one as
//! returned (the amqp handler would publish it again: a duplicate).
//!
//! So a channel here never carries more than one publish at a time. The
//! broker sends a message's return before its ack, so the only return a
//! channel can hold when its one confirm arrives is that publish's own: the
//! attribution is exact by construction, for our own queues (where a return
//! means a missing queue or binding and must never count as stored) and for
//! the events exchange (where a return is the normal "nobody is bound").
//! Concurrency comes from a pool of such channels instead of pipelining on
//! one: up to `channels` publishes run at once, each on its own channel.
//!
//! # A channel that misbehaves is replaced, never trusted again
//!
//! A nack, a confirm that does not come in time, a return that is not the
//! publish's own, or a channel error each close the channel and the next
//! publish opens a fresh one. This is what makes a quorum queue's leader
//! change recoverable without a restart: RabbitMQ's channel keeps per-queue
//! state (the queue's leader, whether it rejects publishes) that can stay
//! wrong after a failover, so a channel that nacked once may nack for ever
//! while a new channel on the same connection publishes at once. Closing a
//! channel also releases what lapin keeps for its unanswered confirm (and
//! any returned body), so timeouts during a long stall cost no memory.
//! Re-opening backs off (0, 100 ms, 200 ms ... 2 s) while channels keep
//! failing, so a broker that nacks everything is not flooded with channel
//! opens; a publish that finds no usable channel during the back-off fails
//! at once ([`PublishError::Unavailable`]) rather than waiting, because
//! ingest must answer a fast 503.
//!
//! A batch whose messages stand or fall together (a provider's batch of
//! receipts is answered 200 only if every receipt in it is stored) is
//! pipelined on one channel instead, which keeps its order in the queue:
//! [`Publisher::publish_all`]. There a return anywhere fails the whole
//! batch, so which confirm lapin hands it to does not matter.
//!
//! # One stuck destination cannot take every channel
//!
//! A quorum queue that is electing a leader, or has lost its quorum, sends
//! no nack: its publishes wait for their confirm until they time out
//! (<https://www.rabbitmq.com/docs/quorum-queues>, "Publisher confirms"
//! are sent once a quorum has written the message). With receipts spread
//! over several queues ("shards"), one such queue would hold every channel
//! of the pool within moments, and the healthy shards' publishes would
//! time out too. [`Publisher::with_destination_share`] bounds the channels
//! one routing key may hold at once, so a stuck shard costs 503s for its
//! own receipts only. For the same reason its timeouts do not start the
//! re-open back-off, which every destination shares.
//!
//! A publish whose caller stops waiting (its future dropped, e.g. the HTTP
//! client went away) leaves its channel with an unanswered publish: such a
//! channel is closed too, never handed to the next publish.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation};
use prometheus::IntCounterVec;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::BrokerConnection;

/// Why a message is not known to be stored. Every variant means "the
/// broker may not hold it": the caller must not report success.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No broker connection right now, or no channel that can be trusted yet.
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
    /// The confirm came with another message's return. With one publish per
    /// channel this cannot happen; if it ever does, whether this message was
    /// stored cannot be known, so it counts as not stored.
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

    /// True when the failure says nothing about this process's own path to
    /// the broker: a resource alarm blocks every publisher of the cluster
    /// alike, and a return is an answer about routing, not a failure to store.
    fn is_broker_wide_or_routing(&self) -> bool {
        matches!(self, PublishError::Blocked(_) | PublishError::Returned { .. })
    }
}

/// AMQP NOT_FOUND: publishing to an exchange that does not exist.
const NOT_FOUND: u16 = 404;

/// Channels in the pool unless the caller says otherwise.
pub const DEFAULT_CHANNELS: usize = 32;

/// Back-off between channel re-opens while channels keep failing.
const REOPEN_STEP: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(2);

/// How long a discarded channel's close may wait for close-ok.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes with confirms over a pool of channels, one publish per channel
/// at a time (see the module documentation for why).
pub struct Publisher {
    broker: BrokerConnection,
    confirm_timeout: Duration,
    /// One permit per channel that may exist at once.
    slots: Semaphore,
    /// How many: the permits `slots` was made with.
    channels: usize,
    /// Channels whose last publish was confirmed cleanly, ready for the next.
    idle: Mutex<Vec<Channel>>,
    health: Mutex<Health>,
    replaced: Option<IntCounterVec>,
    /// Publishes one routing key may have in flight at once, if bounded.
    destination_share: Option<usize>,
    /// One semaphore of `destination_share` permits per routing key seen.
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// What the publisher has seen lately: drives the re-open back-off and
/// lets readiness tell "this process cannot store messages" from a blip.
#[derive(Debug, Default)]
struct Health {
    /// Channels discarded in a row without a clean confirm in between.
    distrusted_in_a_row: u32,
    /// No channel is opened before this instant.
    reopen_not_before: Option<Instant>,
    /// First failure since the last success (broker-wide and routing
    /// answers excluded).
    failing_since: Option<Instant>,
}

impl Publisher {
    /// A publisher over `broker` with [`DEFAULT_CHANNELS`] channels;
    /// `confirm_timeout` bounds each publish, waiting for a channel included.
    pub fn new(broker: BrokerConnection, confirm_timeout: Duration) -> Self {
        Self {
            broker,
            confirm_timeout,
            slots: Semaphore::new(DEFAULT_CHANNELS),
            channels: DEFAULT_CHANNELS,
            idle: Mutex::new(Vec::new()),
            health: Mutex::new(Health::default()),
            replaced: None,
            destination_share: None,
            destinations: Mutex::new(HashMap::new()),
        }
    }

    /// Lets publishes with one routing key hold at most `share` channels
    /// at once (see the module documentation). For publishers with a small,
    /// fixed set of routing keys (ingest's shards): one semaphore is kept
    /// per key ever used.
    pub fn with_destination_share(mut self, share: usize) -> Self {
        self.destination_share = Some(share.clamp(1, Semaphore::MAX_PERMITS));
        self
    }

    /// Sets how many publishes (and so channels) may be in flight at once.
    pub fn with_channels(mut self, channels: usize) -> Self {
        self.channels = channels.clamp(1, Semaphore::MAX_PERMITS);
        self.slots = Semaphore::new(self.channels);
        self
    }

    /// Counts replaced channels by reason (a `reason` label).
    pub fn with_replaced_counter(mut self, counter: IntCounterVec) -> Self {
        self.replaced = Some(counter);
        self
    }

    /// The underlying connection handle (readiness checks).
    pub fn broker(&self) -> &BrokerConnection {
        &self.broker
    }

    /// How long every publish has been failing, if the last one failed:
    /// `None` after a success or before any publish. Blocked (resource
    /// alarm) and returned publishes do not count.
    pub fn failing_for(&self, now: Instant) -> Option<Duration> {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.failing_since.map(|since| now.saturating_duration_since(since))
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
        self.publish_all(&[Outgoing { exchange, routing_key, body, properties }]).await
    }

    /// Publishes every message, in order, on one channel and waits for all
    /// their confirms. `Ok` means the broker has routed and stored every one
    /// of them; on an error any of them may or may not be stored (the caller
    /// treats the batch as not stored, and its retry as a duplicate).
    pub async fn publish_all(&self, messages: &[Outgoing<'_>]) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let result = self.publish_within(messages).await;
        self.record(&result);
        result
    }

    async fn publish_within(&self, messages: &[Outgoing<'_>]) -> Result<(), PublishError> {
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        let timeout = PublishError::Timeout(self.confirm_timeout);
        let _shares = match tokio::time::timeout_at(deadline, self.destination_shares(messages)).await {
            Ok(shares) => shares,
            Err(_) => return Err(timeout),
        };
        // Closed never: the semaphore lives as long as the publisher.
        let _slot = match tokio::time::timeout_at(deadline, self.slots.acquire()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(PublishError::Unavailable),
            Err(_) => return Err(timeout),
        };
        let mut lease = match tokio::time::timeout_at(deadline, self.checkout()).await {
            Ok(lease) => lease?,
            Err(_) => return Err(timeout),
        };
        match tokio::time::timeout_at(deadline, lease.publish(messages)).await {
            Ok(Ok(Published::Stored)) => {
                self.check_in(&mut lease);
                Ok(())
            }
            Ok(Ok(Published::Returned { code, text })) => {
                // The return was this publish's own: the channel holds nothing
                // else and is as good as before.
                self.check_in(&mut lease);
                Err(PublishError::Returned { code, text })
            }
            Ok(Err(error)) => {
                self.distrust(&mut lease, &error);
                Err(error)
            }
            Err(_) => {
                self.distrust(&mut lease, &timeout);
                Err(timeout)
            }
        }
    }

    /// Waits for a share of every routing key among `messages` (none when
    /// shares are not bounded). Taken in sorted order, so two batches
    /// waiting for each other's keys cannot deadlock.
    async fn destination_shares(&self, messages: &[Outgoing<'_>]) -> Vec<OwnedSemaphorePermit> {
        let Some(share) = self.destination_share else { return Vec::new() };
        let mut keys: Vec<&str> = messages.iter().map(|m| m.routing_key).collect();
        keys.sort_unstable();
        keys.dedup();
        let semaphores: Vec<Arc<Semaphore>> = {
            let mut destinations = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
            keys.iter()
                .map(|key| {
                    destinations
                        .entry((*key).to_owned())
                        .or_insert_with(|| Arc::new(Semaphore::new(share)))
                        .clone()
                })
                .collect()
        };
        let mut permits = Vec::with_capacity(semaphores.len());
        for semaphore in semaphores {
            // Never closed: the semaphores live as long as the publisher.
            if let Ok(permit) = semaphore.acquire_owned().await {
                permits.push(permit);
            }
        }
        permits
    }

    /// An idle channel of the live connection, or a new one.
    async fn checkout(&self) -> Result<Lease<'_>, PublishError> {
        let conn = self.broker.current().ok_or(PublishError::Unavailable)?;
        if conn.status().blocked() {
            return Err(PublishError::Blocked("connection.blocked".to_owned()));
        }
        loop {
            let candidate = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match candidate {
                Some(channel) if channel.status().connected() => {
                    return Ok(Lease { publisher: self, channel: Some(channel) });
                }
                // A channel of a connection that has gone: drop it.
                Some(_) => continue,
                None => break,
            }
        }
        if let Some(not_before) = self.health.lock().unwrap_or_else(|p| p.into_inner()).reopen_not_before
            && Instant::now() < not_before
        {
            return Err(PublishError::Unavailable);
        }
        let channel = conn.create_channel().await.inspect_err(|_| self.broker.report_failure())?;
        if let Err(error) = channel.confirm_select(ConfirmSelectOptions::default()).await {
            close_in_background(channel);
            return Err(error.into());
        }
        Ok(Lease { publisher: self, channel: Some(channel) })
    }

    /// Puts a channel whose publish ended cleanly back into the pool.
    fn check_in(&self, lease: &mut Lease<'_>) {
        if let Some(channel) = lease.channel.take()
            && channel.status().connected()
        {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(channel);
        }
    }

    /// Closes a channel that failed a publish and backs off re-opening.
    fn distrust(&self, lease: &mut Lease<'_>, error: &PublishError) {
        let Some(channel) = lease.channel.take() else { return };
        if let Some(counter) = &self.replaced {
            counter.with_label_values(&[error.reason()]).inc();
        }
        if let PublishError::Broker(lapin_error) = error {
            if super::topology::broker_reply_code(lapin_error) == Some(NOT_FOUND) {
                // The exchange was deleted: declare it again.
                self.broker.request_redeclare();
            } else {
                self.broker.report_failure();
            }
        }
        if !self.isolates(error) {
            let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
            let delay = REOPEN_STEP.saturating_mul(health.distrusted_in_a_row).min(REOPEN_MAX);
            health.distrusted_in_a_row = health.distrusted_in_a_row.saturating_add(1);
            health.reopen_not_before = Some(Instant::now() + delay);
        }
        tracing::debug!(channel = channel.id(), reason = error.reason(), "publish channel replaced");
        close_in_background(channel);
    }

    /// True for a timeout while destinations share the channels: one
    /// stalled destination (a shard electing a leader) times out its own
    /// publishes only, and must not hold back the channel re-opens of the
    /// others. Its re-opens need no back-off: each of its channels can time
    /// out at most once per confirm timeout.
    fn isolates(&self, error: &PublishError) -> bool {
        matches!(error, PublishError::Timeout(_)) && self.destination_share.is_some_and(|s| s < self.channels)
    }

    fn record(&self, result: &Result<(), PublishError>) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                health.failing_since = None;
                health.distrusted_in_a_row = 0;
                health.reopen_not_before = None;
            }
            Err(error) if error.is_broker_wide_or_routing() => {}
            Err(_) => {
                health.failing_since.get_or_insert_with(Instant::now);
            }
        }
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// Exchange (`""`: the default exchange, routing key = queue name).
    pub exchange: &'a str,
    /// Routing key.
    pub routing_key: &'a str,
    /// Body.
    pub body: &'a [u8],
    /// Properties, message id included.
    pub properties: BasicProperties,
}

/// What the broker said about one publish (or a batch).
enum Published {
    Stored,
    Returned { code: u16, text: String },
}

/// A channel lent to one publish. Dropped without being checked in (the
/// publish was abandoned half-way), the channel may still owe a confirm, so
/// it is closed rather than reused.
struct Lease<'a> {
    publisher: &'a Publisher,
    channel: Option<Channel>,
}

impl Lease<'_> {
    /// Sends every message, then waits for every confirm.
    async fn publish(&self, messages: &[Outgoing<'_>]) -> Result<Published, PublishError> {
        let Some(channel) = &self.channel else { return Err(PublishError::Unavailable) };
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let confirm = channel
                .basic_publish(
                    message.exchange.into(),
                    message.routing_key.into(),
                    options,
                    message.body,
                    message.properties.clone(),
                )
                .await?;
            confirms.push(confirm);
        }
        let mut returned = None;
        for (message, confirm) in messages.iter().zip(confirms) {
            match confirm.await? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(back)) => {
                    let code = back.reply_code;
                    let text = back.reply_text.to_string();
                    // Alone on its channel, a publish can only receive its own
                    // return; in a batch any return fails the whole batch.
                    let own_id = message.properties.message_id();
                    if messages.len() == 1 && own_id.is_some() && back.properties.message_id() != own_id {
                        return Err(PublishError::ReturnMismatch { code, text });
                    }
                    returned.get_or_insert(Published::Returned { code, text });
                }
                Confirmation::Nack(_) => return Err(PublishError::Nacked),
                // Cannot happen on a channel in confirm mode; never treat it as stored.
                Confirmation::NotRequested => return Err(PublishError::Nacked),
            }
        }
        Ok(returned.unwrap_or(Published::Stored))
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(channel) = self.channel.take() {
            tracing::debug!(
                channel = channel.id(),
                "publish abandoned before its confirm; closing its channel"
            );
            if let Some(counter) = &self.publisher.replaced {
                counter.with_label_values(&["abandoned"]).inc();
            }
            close_in_background(channel);
        }
    }
}

/// Closes `channel` without making the caller wait for close-ok.
fn close_in_background(channel: Channel) {
    if !channel.status().connected() {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "replaced by a fresh channel".into()))
                    .await;
        });
    }
}
