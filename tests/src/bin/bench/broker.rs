//! The broker's own ceilings, measured in the same run as ingest and the
//! worker: confirmed publishes to a quorum queue (plain and exactly as ingest
//! publishes receipts) and manual-ack consumption at the worker's prefetch.

use super::*;

/// A fresh durable quorum queue, like the receipts queue.
pub(crate) async fn declare_bench_queue(channel: &lapin::Channel) -> Result<String> {
    let queue = format!("test.bench.{}", uuid::Uuid::new_v4().simple());
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            args,
        )
        .await?;
    Ok(queue)
}

/// What a ceiling run publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// 700-byte bodies with only `delivery_mode` 2, through the default
    /// exchange to a bare quorum queue: the broker's raw persistent rate.
    Plain,
    /// Exactly what ingest publishes: receipt events with ingest's
    /// properties and headers, `mandatory`, through the intake exchange to a
    /// receipts queue declared by `Topology::declare_intake` (dead-letter
    /// arguments included). The broker spends more per message on these.
    Receipt,
}

/// Persistent, confirmed publishes with at most `window` confirms
/// outstanding, from `tasks` tasks sharing one channel (ingest's request
/// handlers share one channel the same way); receipts spread over
/// `shards` receipts queues as ingest spreads them.
pub(crate) async fn publish_ceiling(
    count: usize,
    window: usize,
    tasks: usize,
    shape: Shape,
    shards: u16,
) -> Result<f64> {
    publish_ceiling_prepared(count, window, tasks, shape, shards, async |_: &Topology| Ok(())).await
}

/// [`publish_ceiling`], with `ready` run once the receipts topology is
/// declared and before the clock starts (the shard sweep moves the shards'
/// leaders there and samples the broker's CPU).
pub(crate) async fn publish_ceiling_prepared(
    count: usize,
    window: usize,
    tasks: usize,
    shape: Shape,
    shards: u16,
    ready: impl AsyncFnOnce(&Topology) -> Result<()>,
) -> Result<f64> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let topology = Topology { receipt_shards: shards, ..unique_topology() };
    // (exchange, routing key of the plain queue, mandatory, messages to
    // cycle through, each with its routing key)
    let (exchange, routing_key, mandatory, messages) = match shape {
        Shape::Plain => {
            let queue = declare_bench_queue(&channel).await?;
            let plain = (vec![b'x'; 700], BasicProperties::default().with_delivery_mode(2), queue.clone());
            (String::new(), queue, false, vec![plain])
        }
        Shape::Receipt => {
            topology.declare_intake(&conn).await?;
            let mut messages = Vec::new();
            // Built before the clock starts; distinct ids like real traffic.
            for i in 0..count.min(10_000) {
                let event = sample_event(&format!("C{i:015X}"))?;
                let key = topology.receipt_routing_key(event.message_id.as_str()).to_owned();
                messages.push((event.to_json(), receipt_properties(&event), key));
            }
            (topology.exchange.clone(), RECEIPT_ROUTING_KEY.to_owned(), true, messages)
        }
    };
    ready(&topology).await?;
    let messages = std::sync::Arc::new(messages);
    let per_task_window = (window / tasks).max(1);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let channel = channel.clone();
        let (exchange, messages) = (exchange.clone(), messages.clone());
        set.spawn(async move {
            let mut pending = std::collections::VecDeque::new();
            for i in 0..count / tasks {
                let (body, properties, routing_key) = &messages[(task + i * tasks) % messages.len()];
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions { mandatory, ..Default::default() },
                        body,
                        properties.clone(),
                    )
                    .await?;
                pending.push_back(confirm);
                if pending.len() >= per_task_window
                    && let Some(oldest) = pending.pop_front()
                {
                    expect_stored(oldest.await?)?;
                }
            }
            for confirm in pending {
                expect_stored(confirm.await?)?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined??;
    }
    let rate = (count / tasks * tasks) as f64 / started.elapsed().as_secs_f64();
    match shape {
        Shape::Plain => {
            channel.queue_delete(routing_key.as_str().into(), QueueDeleteOptions::default()).await?;
        }
        Shape::Receipt => TestBroker::connect().await.cleanup(&topology, &[], &[]).await,
    }
    Ok(rate)
}

/// A ceiling counts only messages the broker acked and did not return.
pub(crate) fn expect_stored(confirmation: Confirmation) -> Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        other => bail!("broker did not store a ceiling message: {other:?}"),
    }
}

/// The event ingest would publish for the sample receipt with this id.
pub(crate) fn sample_event(message_id: &str) -> Result<ReceiptEvent> {
    let fields =
        dlr_ingest::providers::decode_urlencoded(vonage_form(message_id, "delivered").as_bytes(), "form")?;
    Ok(dlr_ingest::providers::vonage_sms::parse(&fields, chrono::Utc::now())?)
}

/// Fills `queue` with `count` receipt events through a confirm channel.
pub(crate) async fn fill(queue: &str, count: usize) -> Result<()> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut pending = std::collections::VecDeque::new();
    for i in 0..count {
        let event = sample_event(&format!("F{i:015X}"))?;
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &event.to_json(),
                receipt_properties(&event),
            )
            .await?;
        pending.push_back(confirm);
        if pending.len() >= 1000
            && let Some(oldest) = pending.pop_front()
        {
            oldest.await?;
        }
    }
    for confirm in pending {
        confirm.await?;
    }
    Ok(())
}

/// Raw consume rate with manual acks at the worker's prefetch.
pub(crate) async fn consume_ceiling(count: usize, prefetch: u16) -> Result<f64> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let queue = declare_bench_queue(&channel).await?;
    fill(&queue, count).await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Acks run concurrently, up to the prefetch, as the worker's tasks do.
    let started = Instant::now();
    let mut acks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let Some(delivery) = consumer.next().await else { bail!("consumer ended") };
        let acker = delivery?.acker;
        acks.spawn(async move { acker.ack(BasicAckOptions::default()).await });
        while acks.len() >= usize::from(prefetch) {
            if let Some(joined) = acks.join_next().await {
                joined??;
            }
        }
    }
    while let Some(joined) = acks.join_next().await {
        joined??;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    Ok(rate)
}
