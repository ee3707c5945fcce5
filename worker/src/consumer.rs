//! The consume loop: manual acks, bounded concurrency, reconnects, drain.
//!
//! Concurrency is bounded by the prefetch count: the broker never hands a
//! consumer channel more unacked deliveries than that, and across channels
//! (a delivery of a channel that died may still be finishing when the next
//! channel's deliveries arrive) a semaphore of the same size bounds the
//! deliveries being handled at once. Several worker processes on the same
//! queue share the work as competing consumers.
//!
//! Sharded (`AMQP_RECEIPT_SHARDS` > 1), every worker consumes every shard,
//! each on its own channel with its own loop: a channel error (a queue
//! deleted, a consumer cancelled when its queue's leader moves) stops and
//! resubscribes that shard's consumer only. The prefetch is a per-pod
//! budget split evenly between the shards (quorum queues have no global,
//! per-channel QoS), and one semaphore over all shards bounds the
//! deliveries handled at once.
//!
//! A delivery belongs to the channel it arrived on. When that channel is
//! gone, the broker has already given the message back to the queue (and
//! perhaps to another consumer), so the delivery's task stops where it is:
//! it publishes no retry or park copy and attempts no ack, and the broker's
//! redelivery is the only copy left.

use dlr_shared::ReceiptEvent;
use dlr_shared::amqp::{BrokerConnection, PROBE_MESSAGE_TYPE, PublishError, Publisher, Topology};
use dlr_shared::telemetry::{SPAN_TARGET, TraceHeaders, continued};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::field::Empty;

use crate::acks::{Settler, SettlerTask};
use crate::dispatch::{Decision, Dispatcher};
use crate::envelope::Progress;
use crate::metrics::WorkerMetrics;
use crate::parking::{self, Park, ParkReason};
use crate::requeued::RequeueMemory;
use crate::retry;

/// Everything a delivery's task needs.
pub struct ConsumerContext {
    /// Supervised broker connection.
    pub broker: BrokerConnection,
    /// Confirmed publishing for retries, parking and the amqp handler.
    pub publisher: Arc<Publisher>,
    /// Handlers by outcome.
    pub dispatcher: Arc<Dispatcher>,
    /// Queue names.
    pub topology: Arc<Topology>,
    /// Metrics.
    pub metrics: WorkerMetrics,
    /// Unacked deliveries at once on each shard's channel.
    pub prefetch: u16,
    /// Which shards have a consumer registered (readiness).
    pub consuming: Arc<Consuming>,
    /// One permit per delivery being handled, `prefetch` per shard in all.
    pub slots: Arc<Semaphore>,
    /// How long a delivery waits for the broker to take its retry or park
    /// copy before it is given back to the queue.
    pub settle_patience: Duration,
    /// Handlers already done for deliveries given back to the queue.
    pub requeued: RequeueMemory,
}

/// Whether each receipts queue has this worker's consumer: readiness wants
/// all of them.
#[derive(Debug)]
pub struct Consuming(Vec<AtomicBool>);

impl Consuming {
    /// `shards` consumers, none registered yet.
    pub fn new(shards: usize) -> Self {
        Self((0..shards.max(1)).map(|_| AtomicBool::new(false)).collect())
    }

    /// True while every shard has its consumer.
    pub fn all(&self) -> bool {
        self.0.iter().all(|shard| shard.load(Ordering::SeqCst))
    }

    /// Shards with a consumer right now.
    pub fn count(&self) -> usize {
        self.0.iter().filter(|shard| shard.load(Ordering::SeqCst)).count()
    }

    fn set(&self, shard: usize, consuming: bool) {
        if let Some(flag) = self.0.get(shard) {
            flag.store(consuming, Ordering::SeqCst);
        }
    }
}

/// Prefetch of each shard's channel from the pod's budget
/// (`WORKER_PREFETCH`): an even split, at least 1.
pub fn prefetch_per_shard(budget: u16, shards: u16) -> u16 {
    (budget / shards.max(1)).max(1)
}

/// Consumes every receipts queue until `shutdown`, one loop (and channel)
/// per queue; each drains as [`run_shard`] says.
pub async fn run(ctx: Arc<ConsumerContext>, shutdown: CancellationToken, drain_timeout: Duration) {
    let shards = ctx.topology.receipt_queues().into_iter().enumerate().map(|(index, (queue, _))| {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tokio::spawn(async move { run_shard(ctx, index, queue, shutdown, drain_timeout).await })
    });
    for shard in futures_util::future::join_all(shards).await {
        if let Err(error) = shard {
            tracing::error!(%error, "a shard's consumer task failed");
        }
    }
}

/// Consumes `queue` until `shutdown`, reconnecting as needed; then cancels
/// the consumer and waits up to `drain_timeout` for in-flight events to be
/// settled before closing the channel they arrived on.
///
/// The channel must outlive the drain: closing it (or dropping its last
/// handle, which lapin turns into a close) makes the broker requeue every
/// unacked delivery at once, so another worker would handle events this one
/// is still handling, and the late acks here would fail.
async fn run_shard(
    ctx: Arc<ConsumerContext>,
    shard: usize,
    queue: String,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    let tracker = TaskTracker::new();
    let mut draining = None;
    while let Some(conn) = ctx.broker.wait_connected(&shutdown).await {
        let channel_gone = CancellationToken::new();
        match consume(&ctx, shard, &queue, &conn, &tracker, &shutdown, &channel_gone).await {
            Ok(subscription) => {
                draining = Some((subscription, channel_gone));
                break;
            }
            Err(ConsumerStopped::ShutdownWhileSubscribing) => break,
            Err(error) => {
                // The broker requeues this channel's unacked deliveries; their
                // tasks must not publish copies of them or try to ack them.
                channel_gone.cancel();
                ctx.consuming.set(shard, false);
                ctx.broker.report_failure();
                tracing::warn!(%error, %queue, "consumer stopped; resubscribing when the broker is back");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
    ctx.consuming.set(shard, false);
    tracker.close();
    let in_flight = tracker.len();
    if in_flight > 0 {
        tracing::info!(in_flight, %queue, timeout = ?drain_timeout, "draining in-flight events");
    }
    let drained = tokio::time::timeout(drain_timeout, tracker.wait()).await.is_ok();
    if !drained {
        tracing::warn!(
            unsettled = tracker.len(),
            timeout = ?drain_timeout,
            "drain timeout reached; the broker redelivers what is still unsettled"
        );
    }
    let Some(((channel, settler), channel_gone)) = draining else { return };
    // From here on every settled delivery is acked at once, including those
    // that finish while the channel is being closed: acked while it is open,
    // not requeued (and handled twice) by its close.
    settler.release();
    if channel.status().connected() {
        // The broker has read our acks, but for a quorum queue its channel
        // process forwards them to the queue's leader with a bounded number
        // in flight and holds the rest back; closing the channel drops those
        // held back and requeues their messages (seen on RabbitMQ 3.10: 13 to
        // 17 of 50 acks sent in one burst). A round trip on the channel, then
        // a short pause, lets them reach the queue first.
        barrier(&ctx, &channel).await;
        tokio::time::sleep(SETTLE_PAUSE).await;
    }
    settler.finish(BROKER_REPLY_TIMEOUT).await;
    if channel.status().connected() {
        // Acks of deliveries that finished during the pause.
        barrier(&ctx, &channel).await;
        tokio::time::sleep(LAST_SETTLE_PAUSE).await;
        // Bounded: a connection that died unnoticed never answers close-ok.
        match tokio::time::timeout(BROKER_REPLY_TIMEOUT, channel.close(200, "worker drained".into())).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "closing the consumer channel after the drain"),
            Err(_) => tracing::debug!("no close-ok for the consumer channel; the connection closes it"),
        }
    }
    // Deliveries still in flight now belong to the broker again.
    channel_gone.cancel();
}

/// One round trip on `channel`: the broker has read every frame before it.
async fn barrier(ctx: &ConsumerContext, channel: &lapin::Channel) {
    let barrier = channel.basic_qos(ctx.prefetch, BasicQosOptions::default());
    if tokio::time::timeout(BROKER_REPLY_TIMEOUT, barrier).await.is_err() {
        tracing::debug!("no reply to the barrier before closing the consumer channel");
    }
}

/// Why a subscription ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
enum ConsumerStopped {
    /// A broker operation failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker cancelled the consumer or the channel closed.
    #[error("the consumer stream ended")]
    StreamEnded,
    /// The broker did not answer in time while subscribing.
    #[error("no reply from the broker within {BROKER_REPLY_TIMEOUT:?}")]
    NoReply,
    /// Shutdown came before the subscription was set up.
    #[error("shutdown while subscribing")]
    ShutdownWhileSubscribing,
}

/// One subscription on one connection. `Ok` means shutdown was requested:
/// the consumer is cancelled and its channel is handed back, still open,
/// with its settler, so the deliveries in flight can be settled on it.
async fn consume(
    ctx: &Arc<ConsumerContext>,
    shard: usize,
    queue: &str,
    conn: &lapin::Connection,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    channel_gone: &CancellationToken,
) -> Result<(lapin::Channel, SettlerTask), ConsumerStopped> {
    let tag = format!("worker-{}", uuid::Uuid::new_v4());
    // Bounded, and given up on shutdown: on a connection that died without
    // lapin noticing yet, these calls would wait for replies forever.
    let channel = tokio::select! {
        _ = shutdown.cancelled() => return Err(ConsumerStopped::ShutdownWhileSubscribing),
        opened = tokio::time::timeout(BROKER_REPLY_TIMEOUT, conn.create_channel()) => {
            opened.map_err(|_| ConsumerStopped::NoReply)??
        }
    };
    let subscribe = async {
        channel.basic_qos(ctx.prefetch, BasicQosOptions::default()).await?;
        channel
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    };
    let subscribed = tokio::select! {
        _ = shutdown.cancelled() => Err(ConsumerStopped::ShutdownWhileSubscribing),
        subscribed = tokio::time::timeout(BROKER_REPLY_TIMEOUT, subscribe) => match subscribed {
            Ok(Ok(consumer)) => Ok(consumer),
            Ok(Err(error)) => Err(ConsumerStopped::Broker(error)),
            Err(_) => Err(ConsumerStopped::NoReply),
        },
    };
    let mut consumer = match subscribed {
        Ok(consumer) => consumer,
        Err(stopped) => {
            give_up(channel);
            return Err(stopped);
        }
    };
    // On any other return the settler task is left to itself: it ends once
    // the deliveries' tasks are done, its frames failing on the dead channel.
    let (settler, settler_task) = Settler::start(channel.clone(), ctx.metrics.clone());
    ctx.consuming.set(shard, true);
    tracing::info!(%queue, prefetch = ctx.prefetch, "consuming");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                ctx.consuming.set(shard, false);
                stop_deliveries(ctx, &channel, &tag, &mut consumer, tracker, &settler, channel_gone).await;
                return Ok((channel, settler_task));
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => spawn_delivery(ctx, tracker, &settler, channel_gone, delivery),
                Some(Err(error)) => return Err(ConsumerStopped::Broker(error)),
                None => return Err(ConsumerStopped::StreamEnded),
            }
        }
    }
}

/// Closes the channel of a subscription given up on before its
/// consume-ok arrived. The broker registers the consumer all the same when
/// it gets to the `basic.consume` (a quorum queue still recovering after a
/// restart answers late), and lapin keeps a channel with a pending consume
/// open even when every handle to it is dropped; the broker would then send
/// that consumer up to a prefetch of messages that nothing reads, unacked
/// until the connection closes. The close follows the consume on the
/// channel, so the broker handles it after registering the consumer and
/// requeues whatever it sent there. Not awaited: the broker may be slow to
/// answer, and the next subscription should not wait for it.
fn give_up(channel: lapin::Channel) {
    tokio::spawn(async move {
        let closed =
            tokio::time::timeout(BROKER_REPLY_TIMEOUT, channel.close(200, "subscription given up".into()));
        if let Ok(Err(error)) = closed.await {
            tracing::debug!(%error, "closing the channel of a subscription given up on");
        }
    });
}

/// Pause between the drain and the channel close (see run); deliveries
/// finishing meanwhile are still acked.
const SETTLE_PAUSE: Duration = Duration::from_millis(1000);

/// Pause after the acks of those late deliveries, before the close.
const LAST_SETTLE_PAUSE: Duration = Duration::from_millis(200);

/// How long to wait for the broker's reply to a channel operation.
const BROKER_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for deliveries the broker sent before it saw our cancel.
const CANCEL_SETTLE: Duration = Duration::from_secs(2);

/// Cancels the consumer so no new deliveries come. Deliveries the broker had
/// already sent before it processed the cancel still arrive on the stream;
/// they are handled like any other (they are ours until settled) rather than
/// left unacked until the channel closes.
async fn stop_deliveries(
    ctx: &Arc<ConsumerContext>,
    channel: &lapin::Channel,
    tag: &str,
    consumer: &mut lapin::Consumer,
    tracker: &TaskTracker,
    settler: &Settler,
    channel_gone: &CancellationToken,
) {
    match tokio::time::timeout(
        BROKER_REPLY_TIMEOUT,
        channel.basic_cancel(tag.into(), BasicCancelOptions::default()),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "cancelling the consumer failed");
            return;
        }
        Err(_) => {
            tracing::warn!("no cancel-ok from the broker; draining what was delivered");
            return;
        }
    }
    let deadline = tokio::time::Instant::now() + CANCEL_SETTLE;
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, consumer.next()).await {
        spawn_delivery(ctx, tracker, settler, channel_gone, delivery);
    }
}

/// Registers a delivery with the channel's settler, then handles it in its
/// own task. The order matters: the settler must know a delivery before
/// any later one can be acked with `multiple`.
fn spawn_delivery(
    ctx: &Arc<ConsumerContext>,
    tracker: &TaskTracker,
    settler: &Settler,
    channel_gone: &CancellationToken,
    delivery: Delivery,
) {
    settler.delivered(delivery.delivery_tag);
    let (ctx, settler, channel_gone) = (ctx.clone(), settler.clone(), channel_gone.clone());
    tracker.spawn(async move { handle_delivery(&ctx, delivery, &settler, &channel_gone).await });
}

/// Handles one delivery and settles it: ack after success, retry
/// scheduling or parking; nack with requeue if even that cannot be done.
/// The settler writes the frame (see [`crate::acks`]). Stops wherever it is
/// once the delivery's channel is gone.
async fn handle_delivery(
    ctx: &ConsumerContext,
    delivery: Delivery,
    settler: &Settler,
    channel_gone: &CancellationToken,
) {
    let work = async {
        // Never closed: the semaphore lives as long as the context.
        let Ok(_slot) = ctx.slots.acquire().await else { return };
        ctx.metrics.in_flight.inc();
        let settlement = settle(ctx, &delivery).await;
        ctx.metrics.in_flight.dec();
        match settlement {
            Settlement::Ack => settler.ack(delivery.delivery_tag),
            Settlement::Requeue(progress) => {
                if let Some(id) = delivery.properties.message_id() {
                    ctx.requeued.remember(id.as_str(), progress);
                }
                settler.requeue(delivery.delivery_tag);
            }
        }
    };
    tokio::select! {
        biased;
        () = channel_gone.cancelled() => {
            ctx.metrics.abandoned.inc();
            tracing::debug!(delivery_tag = delivery.delivery_tag, "delivery's channel is gone; the broker redelivers it");
        }
        () = work => {}
    }
}

/// What becomes of a delivery once it has been handled.
enum Settlement {
    /// Done, retried or parked: the delivery may be acked.
    Ack,
    /// Give it back to the queue; `Progress` is what its redelivery should
    /// not do again (the message itself still carries its old headers).
    Requeue(Progress),
}

/// Handles the event and decides what becomes of its delivery.
async fn settle(ctx: &ConsumerContext, delivery: &Delivery) -> Settlement {
    if delivery.properties.kind().as_ref().is_some_and(|kind| kind.as_str() == PROBE_MESSAGE_TYPE) {
        // An ingest pod checking that it can store receipts again.
        ctx.metrics.probes_dropped.inc();
        return Settlement::Ack;
    }
    // The delivery continues the trace its message names: ingest's publish
    // on a first attempt, the previous attempt's retry publish after that.
    let incoming = TraceHeaders::from_amqp(delivery.properties.headers().as_ref());
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "process",
        otel.name = Empty,
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %ctx.topology.queue,
        messaging.message.redelivered = delivery.redelivered,
        dlr.attempt = Empty,
        dlr.event_id = Empty,
        dlr.provider = Empty,
        dlr.outcome = Empty,
        dlr.settlement = Empty,
    );
    if !span.is_disabled() {
        span.record("otel.name", format!("process {}", ctx.topology.queue));
    }
    let settlement = continued(span.clone(), incoming, settle_event(ctx, delivery)).await;
    if !span.is_disabled() {
        let word = match &settlement {
            Settlement::Ack => "ack",
            Settlement::Requeue(_) => "requeue",
        };
        span.record("dlr.settlement", word);
    }
    settlement
}

/// [`settle`] for a receipt message, inside its delivery span.
async fn settle_event(ctx: &ConsumerContext, delivery: &Delivery) -> Settlement {
    let mut progress = Progress::of(&delivery.properties);
    if delivery.redelivered
        && let Some(id) = delivery.properties.message_id()
        && let Some(earlier) = ctx.requeued.take(id.as_str())
    {
        progress = crate::requeued::merged(progress, earlier);
    }
    let Progress { attempt, done } = progress;
    let event = match ReceiptEvent::from_json(&delivery.data) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(%error, "unparseable message; parking it");
            let park_note = Park {
                reason: ParkReason::Unparseable,
                handler: None,
                attempts: attempt,
                done: Vec::new(),
                error: error.to_string(),
            };
            return park(ctx, delivery, &park_note).await;
        }
    };
    let span = tracing::Span::current();
    span.record("dlr.attempt", attempt);
    span.record("dlr.event_id", event.event_id.as_str());
    span.record("dlr.provider", event.provider.as_str());
    span.record("dlr.outcome", event.outcome.as_str());
    let requeue_keeping = |done: Vec<_>| Settlement::Requeue(Progress { attempt, done });
    let event = ctx.metrics.analytics.enrich(event);
    if attempt == 1 && done.is_empty() {
        ctx.metrics.analytics.observe(&event);
        ctx.metrics.consumed.with_label_values(&[event.provider.as_str(), event.outcome.as_str()]).inc();
        if let Some(sent) = event.provider_timestamp {
            let seconds = (event.received_at - sent).num_milliseconds() as f64 / 1000.0;
            ctx.metrics.time_to_dlr.with_label_values(&[event.provider.as_str()]).observe(seconds.max(0.0));
        }
    }
    match ctx.dispatcher.dispatch(&event, attempt, done).await {
        Decision::Done => {
            let seconds = (chrono::Utc::now() - event.received_at).num_milliseconds() as f64 / 1000.0;
            ctx.metrics.end_to_end.observe(seconds.max(0.0));
            Settlement::Ack
        }
        Decision::Retry(retry) => {
            let scheduled = patiently(ctx, "scheduling a retry", || {
                retry::schedule(&ctx.publisher, &ctx.topology, delivery, event.message_id.as_str(), &retry)
            })
            .await;
            match scheduled {
                Ok(()) => {
                    ctx.metrics.retries.with_label_values(&[retry.handler.as_str()]).inc();
                    tracing::info!(
                        event_id = %event.event_id,
                        handler = %retry.handler,
                        next_attempt = retry.next_attempt,
                        delay = ?retry.delay,
                        "retry scheduled"
                    );
                    Settlement::Ack
                }
                Err(publish_error) => {
                    tracing::warn!(%publish_error, "could not schedule a retry; requeueing");
                    requeue_keeping(retry.done)
                }
            }
        }
        Decision::Park(park_note) => park(ctx, delivery, &park_note).await,
    }
}

/// Runs a retry or park publish until it succeeds, waiting (with backoff)
/// while the broker cannot take it, for up to the configured patience
/// (`WORKER_SETTLE_PATIENCE_MS`).
///
/// Nacking with requeue at once would be the wrong answer to a broker that
/// blocks publishers (memory or disk alarm) or has no connection: the
/// message comes straight back, runs its earlier handlers again, and burns
/// through the delivery limit in seconds until the broker dead-letters it
/// without our reasons. Waiting here holds the delivery's prefetch slot, so
/// with every slot waiting the broker stops delivering: consumption pauses
/// for the alarm's duration and resumes by itself.
async fn patiently<'a, F, Fut>(ctx: &ConsumerContext, what: &str, mut publish: F) -> Result<(), PublishError>
where
    F: FnMut() -> Fut + 'a,
    Fut: Future<Output = Result<(), PublishError>> + 'a,
{
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        let error = match publish().await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(failures, waited = ?started.elapsed(), "{what} succeeded after the broker recovered");
                }
                return Ok(());
            }
            Err(error) => error,
        };
        failures += 1;
        if started.elapsed() + backoff > ctx.settle_patience {
            return Err(error);
        }
        if failures == 1 {
            tracing::warn!(%error, "{what} failed; waiting for the broker before trying again");
        }
        ctx.metrics.settle_waits.inc();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn park(ctx: &ConsumerContext, delivery: &Delivery, note: &Park) -> Settlement {
    match patiently(ctx, "parking", || parking::park(&ctx.publisher, &ctx.topology, delivery, note)).await {
        Ok(()) => {
            ctx.metrics.parked.with_label_values(&[note.reason.as_str()]).inc();
            tracing::warn!(
                reason = note.reason.as_str(),
                handler = note.handler.map(|h| h.as_str()),
                attempts = note.attempts,
                "message parked"
            );
            Settlement::Ack
        }
        Err(publish_error) => {
            tracing::warn!(%publish_error, "could not park a message; requeueing");
            Settlement::Requeue(Progress { attempt: note.attempts, done: note.done.clone() })
        }
    }
}
