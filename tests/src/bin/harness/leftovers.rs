//! What a run leaves in the broker: what is parked or unconsumed at the
//! end (for the report), and deleting the run's queues and exchanges.

use super::*;

/// What is left in the broker once the sinks have everything.
pub struct Parked {
    pub parked: u32,
    pub receipts_left: u32,
    pub reasons: Vec<String>,
}

impl Parked {
    pub fn line(&self) -> String {
        let mut line = format!(
            "broker at the end: {} parked, {} ready in the receipts queue (unacked deliveries are not counted)",
            self.parked, self.receipts_left
        );
        if !self.reasons.is_empty() {
            line.push_str(&format!(" (parked: {})", self.reasons.join("; ")));
        }
        line
    }
}

async fn broker_channel(run_id: &str) -> Result<(lapin::Connection, lapin::Channel)> {
    let properties =
        lapin::ConnectionProperties::default().with_connection_name(format!("harness-{run_id}").into());
    // AMQP_URL may list a cluster's nodes: the first that answers will do.
    let mut failure = None;
    for url in dlr_tests::amqp_urls().split(',') {
        match lapin::Connection::connect(url.trim(), properties.clone()).await {
            Ok(connection) => {
                let channel = connection.create_channel().await.context("opening a channel")?;
                return Ok((connection, channel));
            }
            Err(error) => failure = Some(error),
        }
    }
    Err(failure.map_or_else(|| anyhow!("AMQP_URL is empty"), anyhow::Error::from))
        .context("connecting to RabbitMQ")
}

async fn message_count(channel: &lapin::Channel, queue: &str) -> Result<u32> {
    let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let queue = channel
        .queue_declare(queue.into(), options, lapin::types::FieldTable::default())
        .await
        .with_context(|| format!("inspecting {queue}"))?;
    Ok(queue.message_count())
}

/// Counts parked and unconsumed messages and reads why the first few were parked.
pub async fn parked_summary(run_id: &str, topology: &Topology) -> Result<Parked> {
    let (connection, channel) = broker_channel(run_id).await?;
    let parked = message_count(&channel, &topology.parked_queue).await?;
    // The single receipts queue, and the shards if the run ended sharded.
    let mut receipts_left = message_count(&channel, &topology.queue).await?;
    if topology.is_sharded() {
        for (queue, _) in topology.receipt_queues() {
            receipts_left += message_count(&channel, &queue).await?;
        }
    }
    let mut reasons = Vec::new();
    for _ in 0..parked.min(5) {
        let options = lapin::options::BasicGetOptions { no_ack: false };
        let Some(message) = channel.basic_get(topology.parked_queue.as_str().into(), options).await? else {
            break;
        };
        let headers = message.delivery.properties.headers().as_ref();
        let field = |name| dlr_shared::amqp::header_str(headers, name).unwrap_or("?").to_owned();
        let body: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap_or_default();
        reasons.push(format!(
            "{} {} handler={} error={}",
            body["message_id"].as_str().unwrap_or("?"),
            field("x-dlr-park-reason"),
            field("x-dlr-handler"),
            field("x-dlr-last-error"),
        ));
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(Parked { parked, receipts_left, reasons })
}

/// Deletes the run's queues and exchanges (unless kept for inspection).
pub async fn cleanup_broker(
    run_id: &str,
    topology: &Topology,
    events_exchange: &str,
    keep: bool,
) -> Result<()> {
    if keep {
        return Ok(());
    }
    let (connection, channel) = broker_channel(run_id).await?;
    let retry = dlr_worker::retry::RetryPolicy::new(
        WORKER_MAX_ATTEMPTS,
        Duration::from_millis(WORKER_RETRY_INITIAL_DELAY_MS),
        Duration::from_millis(WORKER_RETRY_MAX_DELAY_MS),
    );
    // The run starts unsharded and may end sharded (shard-leader-kill):
    // both sets of receipts and delay queues, and the delays' fanout
    // exchanges of the sharded one.
    let unsharded = Topology { receipt_shards: 1, ..topology.clone() };
    let mut queues =
        vec![topology.queue.clone(), topology.parked_queue.clone(), topology.quarantine_queue.clone()];
    queues.extend(retry.delays().into_iter().map(|d| unsharded.retry_queue(d)));
    let mut exchanges = vec![topology.exchange.clone(), events_exchange.to_owned()];
    if topology.is_sharded() {
        queues.extend(topology.receipt_queues().into_iter().map(|(queue, _)| queue));
        let delays: Vec<String> = retry.delays().into_iter().map(|d| topology.retry_queue(d)).collect();
        queues.extend(delays.iter().cloned());
        exchanges.extend(delays);
    }
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), lapin::options::QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting {queue}"))?;
    }
    for exchange in exchanges {
        channel
            .exchange_delete(exchange.as_str().into(), lapin::options::ExchangeDeleteOptions::default())
            .await
            .with_context(|| format!("deleting {exchange}"))?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}
