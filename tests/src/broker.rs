//! Direct broker access for assertions: read queues, count, clean up.

use dlr_shared::amqp::Topology;
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::time::Duration;

/// A plain connection for the test's own reads and writes.
pub struct TestBroker {
    connection: Connection,
    /// A channel for ad-hoc operations.
    pub channel: Channel,
}

impl TestBroker {
    /// Connects to `amqp_url()`.
    pub async fn connect() -> Self {
        let connection = Connection::connect(&crate::amqp_url(), ConnectionProperties::default())
            .await
            .expect("the test broker is reachable (is RabbitMQ running on AMQP_URL?)");
        let channel = connection.create_channel().await.expect("channel");
        Self { connection, channel }
    }

    /// A new channel on the test's connection, for an operation that may
    /// fail and so close its channel (a passive declare).
    pub async fn channel_for_probe(&self) -> Result<Channel, lapin::Error> {
        self.connection.create_channel().await
    }

    /// Takes (and acks) the next message of `queue`, if any.
    pub async fn get(&self, queue: &str) -> Option<BasicGetMessage> {
        let message =
            self.channel.basic_get(queue.into(), BasicGetOptions::default()).await.expect("basic.get")?;
        message.delivery.acker.ack(BasicAckOptions::default()).await.expect("ack");
        Some(message)
    }

    /// Takes every message of `queue`, waiting up to `settle` for stragglers.
    pub async fn drain(&self, queue: &str, settle: Duration) -> Vec<BasicGetMessage> {
        let mut messages = Vec::new();
        let deadline = tokio::time::Instant::now() + settle;
        loop {
            match self.get(queue).await {
                Some(m) => messages.push(m),
                None if tokio::time::Instant::now() >= deadline => return messages,
                None => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// Waits until `queue` yields `count` messages (taken) or `within` passes.
    pub async fn take(&self, queue: &str, count: usize, within: Duration) -> Vec<BasicGetMessage> {
        let mut messages = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while messages.len() < count && tokio::time::Instant::now() < deadline {
            match self.get(queue).await {
                Some(m) => messages.push(m),
                None => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
        messages
    }

    /// Publishes raw bytes to a queue through the default exchange (for
    /// putting garbage on a queue by hand).
    pub async fn publish_raw(&self, queue: &str, body: &[u8]) {
        self.channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    /// Declares `<base>.capture` bound with `#` to the topic exchange
    /// `events_exchange` (which must exist), so a test sees every event
    /// the worker republishes; returns the queue's name.
    pub async fn capture(&self, base: &str, events_exchange: &str) -> String {
        let queue = format!("{base}.capture");
        self.channel
            .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default())
            .await
            .expect("declare capture queue");
        self.channel
            .queue_bind(
                queue.as_str().into(),
                events_exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind capture queue");
        queue
    }

    /// Ready messages in `queue` (which must exist).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("the queue exists")
            .message_count()
    }

    /// Deletes a queue (the "behind the service's back" case, and clean-up).
    pub async fn delete_queue(&self, queue: &str) {
        let _ = self.channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
    }

    /// Removes everything a test topology may have created.
    pub async fn cleanup(&self, topology: &Topology, extra_queues: &[String], extra_exchanges: &[String]) {
        let mut queues =
            vec![topology.queue.clone(), topology.parked_queue.clone(), topology.quarantine_queue.clone()];
        if topology.is_sharded() {
            queues.extend(topology.receipt_queues().into_iter().map(|(queue, _)| queue));
        }
        queues.extend_from_slice(extra_queues);
        let mut exchanges = vec![topology.exchange.clone()];
        exchanges.extend_from_slice(extra_exchanges);
        self.delete_all(&queues, &exchanges).await;
    }

    /// Deletes `queues`, then `exchanges`, on a fresh channel (the test's
    /// own may have been closed by a failed operation); errors are ignored.
    pub async fn delete_all(&self, queues: &[String], exchanges: &[String]) {
        let channel = match self.connection.create_channel().await {
            Ok(c) => c,
            Err(_) => return,
        };
        for queue in queues {
            let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        }
        for exchange in exchanges {
            let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
        }
    }
}
