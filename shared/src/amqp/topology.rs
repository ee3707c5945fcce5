//! Broker topology: names and arguments of every exchange and queue.
//!
//! RabbitMQ refuses to re-declare a queue with different arguments
//! (`PRECONDITION_FAILED - inequivalent arg`), so both binaries declare
//! through this module and nowhere else.
//!
//! ```text
//! ingest --(mandatory, confirmed)--> [dlr] --receipt--> (dlr.receipts, quorum) --> worker
//!                                                          | delivery limit exceeded
//!                                                          v
//! worker --(parked with headers)--------------------> (dlr.parked, quorum)
//! worker --(transient failure)--> (dlr.receipts.delay.<delay>, quorum) --TTL--> (dlr.receipts)
//! worker --(events)--> [dlr.events, topic] --<outcome>.<provider>.<status>--> your queues
//! ingest --(bad signature copy)--> (dlr.quarantine, bounded in count and bytes, drops oldest)
//! ```
//!
//! The quarantine alone is declared passively first and with its arguments
//! only when it does not exist yet: its bounds grew a byte limit after
//! deployments had created it without one, and a full re-declaration would
//! fail there. An existing quarantine keeps the arguments it was created
//! with; a policy bounds it (README, "Changing queue arguments").
//!
//! With `AMQP_RECEIPT_SHARDS` = N > 1 (see [`super::shards`]) the receipts
//! queue becomes N queues `dlr.receipts.<k>`, each bound with `receipt.<k>`
//! and declared with the same arguments, and retries keep their shard:
//!
//! ```text
//! ingest --receipt.<k>--> [dlr] --receipt.<k>--> (dlr.receipts.<k>) --> worker
//! worker --(retry, routing key receipt.<k'>)--> [dlr.receipts.shard-delay.<delay>, fanout]
//!        --> (dlr.receipts.shard-delay.<delay>) --TTL, dead-lettered to [dlr] with its own key--> (dlr.receipts.<k'>)
//! ```
//!
//! A dead-lettered message keeps its own routing key when the queue sets no
//! dead-letter routing key (<https://www.rabbitmq.com/docs/dlx>), and a
//! fanout exchange ignores the key: so one delay queue per delay serves
//! every shard. `k'` is the shard of the receipt's message id under the
//! worker's own N, so retries follow a re-sharding. The sharded delay
//! queues have their own names because their arguments differ from the
//! single-queue ones (a queue's arguments can never change).

use clap::Args;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use std::time::Duration;

use super::shards::{MAX_SHARDS, shard_of, shard_routing_key};
use crate::telemetry::LogEvery;

/// Routing key of receipts on the intake exchange.
pub const RECEIPT_ROUTING_KEY: &str = "receipt";

/// `AMQP_QUARANTINE_MAX_BYTES` when unset: 100 MiB, the same as the
/// Kubernetes policy, which bounds queues created before the argument existed.
pub const DEFAULT_QUARANTINE_MAX_BYTES: u64 = 100 * 1024 * 1024;

/// Names and limits of the broker objects; part of both binaries' config.
#[derive(Debug, Clone, Args)]
pub struct Topology {
    /// Durable direct exchange that ingest publishes receipts to.
    #[arg(long = "amqp-exchange", env = "AMQP_EXCHANGE", default_value = "dlr")]
    pub exchange: String,
    /// Durable quorum queue holding receipts until a worker has handled them.
    #[arg(long = "amqp-queue", env = "AMQP_QUEUE", default_value = "dlr.receipts")]
    pub queue: String,
    /// Durable quorum queue for receipts no handler could process (the parking lot).
    #[arg(long = "amqp-parked-queue", env = "AMQP_PARKED_QUEUE", default_value = "dlr.parked")]
    pub parked_queue: String,
    /// Bounded queue keeping copies of rejected (bad signature) requests.
    #[arg(long = "amqp-quarantine-queue", env = "AMQP_QUARANTINE_QUEUE", default_value = "dlr.quarantine")]
    pub quarantine_queue: String,
    /// Quarantine length limit; the oldest entries are dropped past it so that
    /// a flood of forged requests cannot fill the broker.
    #[arg(long = "amqp-quarantine-max-length", env = "AMQP_QUARANTINE_MAX_LENGTH", default_value_t = 10_000)]
    pub quarantine_max_length: u32,
    /// Quarantine size limit in bytes of message bodies (`x-max-length-bytes`),
    /// oldest dropped first: what a flood of refused requests can cost the
    /// broker's disk. Applied when the queue is created; an existing one
    /// needs a policy.
    #[arg(long = "amqp-quarantine-max-bytes", env = "AMQP_QUARANTINE_MAX_BYTES", default_value_t = DEFAULT_QUARANTINE_MAX_BYTES, value_parser = clap::value_parser!(u64).range(1..=i64::MAX as u64))]
    pub quarantine_max_bytes: u64,
    /// Redeliveries of one receipt before the broker parks it by itself (a
    /// safety net for messages that crash the worker before it can decide).
    #[arg(long = "amqp-delivery-limit", env = "AMQP_DELIVERY_LIMIT", default_value_t = 20)]
    pub delivery_limit: u32,
    /// Replicas of each quorum queue, placed on that many cluster nodes when
    /// the queue is first declared (`x-quorum-initial-group-size`). Unset,
    /// the broker decides: 3 (RabbitMQ's guidance: an odd count that
    /// survives one node down; 5 survives two) since RabbitMQ 3.12, every
    /// node before, so 3 either way on a 3-node cluster. Unset by default
    /// because RabbitMQ compares it on every re-declaration: queues created
    /// without it would refuse to start a release that sends it.
    #[arg(long = "amqp-quorum-group-size", env = "AMQP_QUORUM_INITIAL_GROUP_SIZE", value_parser = clap::value_parser!(u32).range(1..=i64::from(i32::MAX)))]
    pub quorum_group_size: Option<u32>,
    /// Receipts queues ("shards"). 1 keeps the single queue `AMQP_QUEUE`;
    /// N > 1 uses `<AMQP_QUEUE>.0` ... `<AMQP_QUEUE>.<N-1>`, the shard
    /// picked from the provider's message id. Ingest and worker must agree
    /// except during a re-sharding rollout (DEPLOY.md, "Re-sharding").
    #[arg(long = "amqp-receipt-shards", env = "AMQP_RECEIPT_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_SHARDS)))]
    pub receipt_shards: u16,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            exchange: "dlr".to_owned(),
            queue: "dlr.receipts".to_owned(),
            parked_queue: "dlr.parked".to_owned(),
            quarantine_queue: "dlr.quarantine".to_owned(),
            quarantine_max_length: 10_000,
            quarantine_max_bytes: DEFAULT_QUARANTINE_MAX_BYTES,
            delivery_limit: 20,
            quorum_group_size: None,
            receipt_shards: 1,
        }
    }
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

impl Topology {
    /// Arguments every quorum queue of ours starts from: the type and, if
    /// configured, how many nodes hold a replica.
    fn quorum_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        if let Some(size) = self.quorum_group_size {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongInt(i32::try_from(size).unwrap_or(i32::MAX)),
            );
        }
        args
    }

    /// Name of the delay queue that holds retries for `delay`.
    ///
    /// The delay is part of the name because a queue's TTL can never change:
    /// new retry settings get new queues instead of a declaration error.
    /// Sharded, the delay queues are others (`.shard-delay.`): they
    /// dead-letter through the intake exchange instead of straight into
    /// the one receipts queue.
    pub fn retry_queue(&self, delay: Duration) -> String {
        let kind = if self.is_sharded() { "shard-delay" } else { "delay" };
        format!("{}.{kind}.{}ms", self.queue, delay.as_millis())
    }

    /// True with more than one receipts queue.
    pub fn is_sharded(&self) -> bool {
        self.receipt_shards > 1
    }

    /// Every receipts queue with the routing key that binds it to the
    /// intake exchange: `[(AMQP_QUEUE, "receipt")]` unsharded.
    pub fn receipt_queues(&self) -> Vec<(String, &'static str)> {
        if !self.is_sharded() {
            return vec![(self.queue.clone(), RECEIPT_ROUTING_KEY)];
        }
        (0..self.receipt_shards).map(|k| (self.shard_queue(k), shard_routing_key(k))).collect()
    }

    /// Name of shard `shard`'s receipts queue (`<AMQP_QUEUE>.<shard>`).
    pub fn shard_queue(&self, shard: u16) -> String {
        format!("{}.{shard}", self.queue)
    }

    /// Routing key (on [`Topology::exchange`]) of a receipt of the
    /// provider's `message_id`: its shard's key, or `receipt` unsharded.
    pub fn receipt_routing_key(&self, message_id: &str) -> &'static str {
        if self.is_sharded() {
            shard_routing_key(shard_of(message_id, self.receipt_shards))
        } else {
            RECEIPT_ROUTING_KEY
        }
    }

    /// How many of a publisher's `channels` one shard's publishes may hold
    /// at once: an even split, so that a shard whose queue stalls (leader
    /// election, lost quorum) leaves the others their channels. All of
    /// them unsharded.
    pub fn channels_per_shard(&self, channels: usize) -> usize {
        channels.div_ceil(usize::from(self.receipt_shards.max(1))).max(1)
    }

    /// Where a retry for `delay` is published, as (exchange, routing key):
    /// straight into the delay queue unsharded; sharded, into the delay's
    /// fanout exchange with the receipt's shard key, which the message
    /// keeps when it is dead-lettered back to the intake exchange.
    pub fn retry_destination(&self, delay: Duration, message_id: &str) -> (String, String) {
        if self.is_sharded() {
            (self.retry_queue(delay), self.receipt_routing_key(message_id).to_owned())
        } else {
            (String::new(), self.retry_queue(delay))
        }
    }

    /// Declares what ingest needs and the worker consumes: the intake
    /// exchange, the receipts queue with its dead-letter safety net, the
    /// parking lot and the quarantine. Idempotent. Takes the connection
    /// because probing for the quarantine costs a channel when it is absent.
    pub async fn declare_intake(&self, connection: &Connection) -> Result<(), lapin::Error> {
        let channel = connection.create_channel().await?;
        self.declare_intake_queues(&channel).await?;
        channel.close(200, "topology declared".into()).await?;
        self.declare_quarantine(connection).await
    }

    async fn declare_intake_queues(&self, channel: &Channel) -> Result<(), lapin::Error> {
        channel
            .exchange_declare(
                ShortString::from(self.exchange.as_str()),
                ExchangeKind::Direct,
                ExchangeDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .inspect_err(|error| report_inequivalent("exchange", &self.exchange, error))?;
        self.declare_durable(channel, &self.parked_queue, self.quorum_args()).await?;

        let mut receipts = self.quorum_args();
        // Poison messages (that crash every worker) end in the parking lot
        // instead of looping forever; RabbitMQ 4 would otherwise drop them
        // after 20 deliveries. at-least-once dead-lettering needs reject-publish.
        receipts.insert("x-dead-letter-exchange".into(), long_string(""));
        receipts.insert("x-dead-letter-routing-key".into(), long_string(&self.parked_queue));
        receipts.insert("x-dead-letter-strategy".into(), long_string("at-least-once"));
        receipts.insert("x-overflow".into(), long_string("reject-publish"));
        receipts.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(i32::try_from(self.delivery_limit).unwrap_or(i32::MAX)),
        );
        for (queue, routing_key) in self.receipt_queues() {
            self.declare_durable(channel, &queue, receipts.clone()).await?;
            channel
                .queue_bind(
                    ShortString::from(queue.as_str()),
                    ShortString::from(self.exchange.as_str()),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// The quarantine's arguments when it is created: bounded in count and
    /// bytes, oldest dropped first.
    pub fn quarantine_args(&self) -> FieldTable {
        let mut quarantine = self.quorum_args();
        quarantine.insert(
            "x-max-length".into(),
            AMQPValue::LongInt(i32::try_from(self.quarantine_max_length).unwrap_or(i32::MAX)),
        );
        quarantine.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(self.quarantine_max_bytes).unwrap_or(i64::MAX)),
        );
        quarantine.insert("x-overflow".into(), long_string("drop-head"));
        quarantine
    }

    /// Declares the quarantine with [`Self::quarantine_args`] only if it
    /// does not exist. A passive declaration of an absent queue closes its
    /// channel (NOT_FOUND), so the probe has a channel of its own.
    async fn declare_quarantine(&self, connection: &Connection) -> Result<(), lapin::Error> {
        let name = self.quarantine_queue.as_str();
        let probe = connection.create_channel().await?;
        let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        match probe.queue_declare(name.into(), passive, FieldTable::default()).await {
            Ok(_) => {
                static LOG: LogEvery = LogEvery::new(Duration::from_secs(3600));
                if LOG.ready() {
                    tracing::info!(queue = %name, "quarantine exists: it keeps the bounds it was created with (a policy bounds a queue created without AMQP_QUARANTINE_MAX_BYTES)");
                }
                return probe.close(200, "quarantine exists".into()).await;
            }
            Err(error) if broker_reply_code(&error) == Some(NOT_FOUND) => {}
            Err(error) => return Err(error),
        }
        let channel = connection.create_channel().await?;
        self.declare_durable(&channel, name, self.quarantine_args()).await?;
        channel.close(200, "quarantine declared".into()).await
    }

    /// Declares the worker's own objects: the events topic exchange and one
    /// delay queue per retry delay, whose expired messages dead-letter back
    /// into the receipts queue through the default exchange (sharded:
    /// through the intake exchange, into the shard their routing key names).
    pub async fn declare_worker(
        &self,
        connection: &Connection,
        events_exchange: &str,
        retry_delays: &[Duration],
    ) -> Result<(), lapin::Error> {
        self.declare_intake(connection).await?;
        let channel = connection.create_channel().await?;
        self.declare_worker_objects(&channel, events_exchange, retry_delays).await?;
        channel.close(200, "topology declared".into()).await
    }

    async fn declare_worker_objects(
        &self,
        channel: &Channel,
        events_exchange: &str,
        retry_delays: &[Duration],
    ) -> Result<(), lapin::Error> {
        channel
            .exchange_declare(
                ShortString::from(events_exchange),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .inspect_err(|error| report_inequivalent("exchange", events_exchange, error))?;
        for delay in retry_delays {
            // Quorum with at-least-once dead-lettering: classic queues
            // dead-letter at most once, and after a broker restart they
            // expire their backlog before the quorum receipts queue has a
            // leader, which drops the messages (found by the reliability
            // harness). The name changed with the type (`.delay.` instead
            // of `.retry.`) because a queue's type cannot change in place.
            let mut args = self.quorum_args();
            args.insert("x-dead-letter-strategy".into(), long_string("at-least-once"));
            args.insert("x-overflow".into(), long_string("reject-publish"));
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
            );
            let name = self.retry_queue(*delay);
            if self.is_sharded() {
                // No dead-letter routing key: the message keeps its own
                // (its shard's) and the intake exchange routes it home.
                args.insert("x-dead-letter-exchange".into(), long_string(&self.exchange));
                self.declare_durable(channel, &name, args).await?;
                channel
                    .exchange_declare(
                        ShortString::from(name.as_str()),
                        ExchangeKind::Fanout,
                        ExchangeDeclareOptions { durable: true, ..Default::default() },
                        FieldTable::default(),
                    )
                    .await
                    .inspect_err(|error| report_inequivalent("exchange", &name, error))?;
                channel
                    .queue_bind(
                        ShortString::from(name.as_str()),
                        ShortString::from(name.as_str()),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            } else {
                args.insert("x-dead-letter-exchange".into(), long_string(""));
                args.insert("x-dead-letter-routing-key".into(), long_string(&self.queue));
                self.declare_durable(channel, &name, args).await?;
            }
        }
        Ok(())
    }

    async fn declare_durable(
        &self,
        channel: &Channel,
        name: &str,
        args: FieldTable,
    ) -> Result<(), lapin::Error> {
        channel
            .queue_declare(
                ShortString::from(name),
                QueueDeclareOptions { durable: true, ..Default::default() },
                args,
            )
            .await
            .map(|_| ())
            .inspect_err(|error| report_inequivalent("queue", name, error))
    }
}

/// The broker's reply code, if `error` is one the broker sent.
pub fn broker_reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// PRECONDITION_FAILED: the object exists with other arguments.
const PRECONDITION_FAILED: u16 = 406;

/// NOT_FOUND: a passive declaration named a queue that does not exist.
const NOT_FOUND: u16 = 404;

/// A queue or exchange that exists with other arguments is a configuration
/// problem no retry can fix, so it gets its own message: which object, the
/// broker's text (it names the argument and both values) and what to do.
/// Logged once a minute while the connection supervisor keeps retrying.
fn report_inequivalent(object: &str, name: &str, error: &lapin::Error) {
    static LOG: LogEvery = LogEvery::new(Duration::from_secs(60));
    if broker_reply_code(error) == Some(PRECONDITION_FAILED) && LOG.ready() {
        tracing::error!(
            %object,
            %name,
            %error,
            "{object} {name} exists with other arguments than this process declares (the broker's message names the \
             argument and both values); this process stays unready until they agree. Set the same \
             AMQP_DELIVERY_LIMIT / AMQP_QUARANTINE_MAX_LENGTH / AMQP_QUARANTINE_MAX_BYTES in ingest and worker, or migrate the {object} \
             (README, \"Changing queue arguments\")"
        );
    }
}
