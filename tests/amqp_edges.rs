//! The edges of publishing and consuming on RabbitMQ: returns attributed to
//! their own publish, channels that the broker refuses or that stall
//! replaced, deliveries that outlive their channel, late finishers of a
//! drain, and requeued deliveries that remember what they had done.
//!
//! Faults are made per test, on the test's own queues only: a policy with
//! `max-length: 0` on a queue declared with `x-overflow: reject-publish`
//! makes the broker nack every publish to it (as a refusing quorum queue
//! does), and [`BrokerProxy`] stalls or cuts a connection. Nothing here
//! touches the rest of the broker, so these tests run beside the others.

use dlr_shared::amqp::{Outgoing, PublishError, Publisher};
use dlr_tests::proxy::{BrokerProxy, broker_addr};
use dlr_tests::receiver::{Receiver, Script};
use dlr_tests::{TestApp, TestIngest, eventually, metric_value, vonage_form};
use dlr_worker::metrics::WorkerMetrics;
use dlr_worker::retry::RetryPolicy;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Signs the webhooks (Standard Webhooks form: `whsec_` + base64).
const SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Generous deadline for anything that should happen "soon".
const WITHIN: Duration = Duration::from_secs(30);

/// A RabbitMQ policy on the test's own queues, removed when dropped (also
/// when the test panics), through `rabbitmqctl` as the broker is local.
struct QueuePolicy {
    name: String,
}

impl QueuePolicy {
    /// Applies `definition` (JSON) to the queues whose names match `pattern`.
    fn set(name: &str, pattern: &str, definition: &str) -> Self {
        let output = std::process::Command::new("rabbitmqctl")
            .args([
                "--quiet",
                "set_policy",
                "--apply-to",
                "queues",
                "--priority",
                "100",
                name,
                pattern,
                definition,
            ])
            .output()
            .expect("rabbitmqctl runs (the broker is local)");
        assert!(output.status.success(), "set_policy: {}", String::from_utf8_lossy(&output.stderr));
        Self { name: name.to_owned() }
    }

    /// The broker nacks every publish to the matching queues (they are all
    /// declared with `x-overflow: reject-publish`).
    fn refuse_publishes(name: &str, queue: &str) -> Self {
        Self::set(name, &format!("^{}$", regex_escape(queue)), r#"{"max-length":0}"#)
    }
}

impl Drop for QueuePolicy {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new("rabbitmqctl").args(["--quiet", "clear_policy", &self.name]).output();
    }
}

fn regex_escape(name: &str) -> String {
    name.replace('.', "\\.")
}

/// Posts a Vonage SMS receipt through ingest; the status code.
async fn post(ingest: &TestIngest, message_id: &str, status: &str) -> u16 {
    ingest.post_vonage_form(&vonage_form(message_id, status)).await.status().as_u16()
}

/// Declares a durable quorum queue of the test's own, removed by its cleanup.
async fn declare_quorum_queue(app: &TestApp, queue: &str) {
    app.own_queue(queue);
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    app.broker
        .channel
        .queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await
        .expect("declare a queue of the test's own");
}

/// With the amqp handler routing delivered and failed events and a queue
/// bound for `delivered.#` only, every delivered event reaches that queue
/// exactly once, every failed one is counted unroutable exactly once, and
/// nothing is retried: the returns of the unbound events never land on the
/// confirms of the bound ones. (Before publishes had a channel each, about
/// 4 % of the bound events arrived twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_events_are_counted_once_and_bound_ones_arrive_once() {
    const RECEIPTS: usize = 600;
    let app = TestApp::new().await;
    let mut config = app.worker_config();
    config.route_delivered = "amqp".to_owned();
    config.route_failed = "amqp".to_owned();
    config.prefetch = 200;
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let bound = format!("{}.delivered-only", app.topology.exchange);
    declare_quorum_queue(&app, &bound).await;
    app.broker
        .channel
        .queue_bind(
            bound.as_str().into(),
            app.events_exchange.as_str().into(),
            "delivered.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind delivered.#");

    let ingest = Arc::new(ingest);
    let mut posts = Vec::new();
    for worker_task in 0..24 {
        let ingest = ingest.clone();
        posts.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for n in (worker_task..RECEIPTS).step_by(24) {
                let status = if n % 2 == 0 { "delivered" } else { "expired" };
                statuses.push(post(&ingest, &format!("EDGE-{n:05}"), status).await);
            }
            statuses
        }));
    }
    for task in posts {
        assert!(task.await.expect("poster").iter().all(|s| *s == 200), "ingest accepts every receipt");
    }
    let consumed = async || {
        let text = worker.metrics().await;
        let delivered = metric_value(
            &text,
            "dlr_worker_events_consumed_total",
            &[("provider", "vonage-sms"), ("outcome", "delivered")],
        );
        let failed = metric_value(
            &text,
            "dlr_worker_events_consumed_total",
            &[("provider", "vonage-sms"), ("outcome", "failed")],
        );
        delivered + failed >= RECEIPTS as f64 && app.broker.queue_depth(&app.topology.queue).await == 0
    };
    assert!(eventually(WITHIN, consumed).await, "the worker takes every receipt");
    let copies = app.broker.drain(&bound, Duration::from_secs(2)).await;
    let text = worker.metrics().await;
    let unroutable = metric_value(&text, "dlr_worker_events_unroutable_total", &[]);
    let retried = metric_value(&text, "dlr_worker_retries_scheduled_total", &[("handler", "amqp")]);
    let transient = metric_value(
        &text,
        "dlr_worker_handler_results_total",
        &[("handler", "amqp"), ("result", "transient")],
    );
    worker.stop().await;
    Arc::into_inner(ingest).expect("posters are done").stop().await;
    app.cleanup().await;

    let ids: HashSet<String> = copies
        .iter()
        .filter_map(|m| m.delivery.properties.message_id().as_ref().map(|id| id.to_string()))
        .collect();
    assert_eq!(copies.len(), RECEIPTS / 2, "each delivered event exactly once on the bound queue");
    assert_eq!(ids.len(), RECEIPTS / 2, "no event twice");
    assert!(copies.iter().all(|m| m.delivery.routing_key.as_str().starts_with("delivered.")));
    assert_eq!(unroutable, (RECEIPTS / 2) as f64, "each failed event counted unroutable exactly once");
    assert_eq!((retried, transient), (0.0, 0.0), "no amqp publish was retried");
}

/// Publishes to one of our own queues that has gone (deleted behind our
/// back) interleaved with publishes to one that exists, as a worker's
/// retries to a removed delay queue and its parkings do: a returned publish
/// is never reported as stored, and every stored one is reported stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_a_missing_queue_is_never_reported_stored() {
    const PUBLISHES: usize = 2000;
    let app = TestApp::new().await;
    let present = format!("{}.present", app.topology.exchange);
    let missing = format!("{}.missing", app.topology.exchange);
    declare_quorum_queue(&app, &present).await;
    let publisher = Arc::new(publisher(&app, &dlr_tests::amqp_url()).await);

    let mut tasks = Vec::new();
    for n in 0..PUBLISHES {
        let (publisher, present, missing) = (publisher.clone(), present.clone(), missing.clone());
        // One in four to the missing queue, sprinkled among the others.
        let to_missing = n % 4 == 0;
        tasks.push(tokio::spawn(async move {
            let queue = if to_missing { missing } else { present };
            let properties = lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(format!("edge-{n}").as_str().into());
            (to_missing, publisher.publish("", &queue, b"{}", properties).await)
        }));
    }
    let (mut missing_stored, mut missing_returned, mut present_stored) = (0, 0, 0);
    let mut other = Vec::new();
    for task in tasks {
        match task.await.expect("publish task") {
            (true, Ok(())) => missing_stored += 1,
            (true, Err(PublishError::Returned { .. })) => missing_returned += 1,
            (false, Ok(())) => present_stored += 1,
            (_, Err(error)) => other.push(error.to_string()),
        }
    }
    let in_queue = app.broker.drain(&present, Duration::from_millis(500)).await.len();
    app.cleanup().await;

    assert_eq!(missing_stored, 0, "a publish that reached no queue was reported stored");
    assert!(other.is_empty(), "no doubtful outcomes on a healthy broker: {other:?}");
    assert_eq!(missing_returned, PUBLISHES / 4);
    assert_eq!(present_stored, PUBLISHES * 3 / 4);
    assert_eq!(in_queue, PUBLISHES * 3 / 4, "every publish reported stored is in the queue");
}

/// A batch published together keeps its order in the queue, and fails as a
/// whole when one of its messages cannot be routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_keeps_its_order_and_fails_as_a_whole() {
    let app = TestApp::new().await;
    let queue = format!("{}.batch", app.topology.exchange);
    declare_quorum_queue(&app, &queue).await;
    let publisher = publisher(&app, &dlr_tests::amqp_url()).await;
    let bodies: Vec<Vec<u8>> = (0..50).map(|n| format!("{{\"n\":{n}}}").into_bytes()).collect();
    let batch: Vec<Outgoing<'_>> = bodies
        .iter()
        .map(|body| Outgoing { exchange: "", routing_key: &queue, body, properties: Default::default() })
        .collect();
    publisher.publish_all(&batch).await.expect("the batch is stored");
    let mut broken = batch.clone();
    let missing = format!("{}.nowhere", app.topology.exchange);
    broken[7].routing_key = &missing;
    let failed = publisher.publish_all(&broken).await;
    let stored = app.broker.drain(&queue, Duration::from_millis(500)).await;
    app.cleanup().await;

    let order: Vec<&[u8]> = stored.iter().take(50).map(|m| m.delivery.data.as_slice()).collect();
    let expected: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    assert_eq!(order, expected, "the batch arrives in order");
    assert!(
        matches!(failed, Err(PublishError::Returned { .. })),
        "one unroutable message fails the batch: {failed:?}"
    );
}

/// A confirm that does not come in time (the broker stalls) closes its
/// channel, so what lapin keeps for the unanswered confirm goes with it; the
/// next publish, once the broker answers again, runs on a fresh channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_confirm_replaces_its_channel() {
    let app = TestApp::new().await;
    let queue = format!("{}.stall", app.topology.exchange);
    declare_quorum_queue(&app, &queue).await;
    let mut proxy = BrokerProxy::reserve(broker_addr()).await;
    proxy.start().await;
    let metrics = WorkerMetrics::new().expect("metrics");
    let replaced = metrics.publish_channels_replaced.clone();
    let (broker, _task, stop) = connect(&app, &proxy.amqp_url(), metrics);
    let publisher =
        Publisher::new(broker, Duration::from_millis(800)).with_replaced_counter(replaced.clone());
    let publish = async |n: u32| {
        let properties =
            lapin::BasicProperties::default().with_message_id(format!("stall-{n}").as_str().into());
        publisher.publish("", &queue, b"{}", properties).await
    };
    assert!(eventually(WITHIN, async || publish(0).await.is_ok()).await, "publishes before the stall");
    proxy.stall(true);
    let stalled = publish(1).await;
    proxy.stall(false);
    let after = eventually(WITHIN, async || publish(2).await.is_ok()).await;
    let timeouts = replaced.with_label_values(&["timeout"]).get();
    stop.cancel();
    proxy.cut().await;
    app.cleanup().await;

    assert!(matches!(stalled, Err(PublishError::Timeout(_))), "{stalled:?}");
    assert_eq!(timeouts, 1, "the stalled channel is replaced");
    assert!(after, "publishing works again on a fresh channel");
}

/// A delivery whose retry copy the broker refuses waits for the broker; if
/// its channel dies meanwhile (connection lost) the broker redelivers the
/// message, and the old delivery must not publish its copy any more once
/// the broker takes publishes again: one retry copy, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_channel_died_publishes_no_copy() {
    let app = TestApp::new().await;
    let receiver = Receiver::start(Script::Always(503)).await;
    let mut proxy = BrokerProxy::reserve(broker_addr()).await;
    proxy.start().await;
    let mut config = refused_retry_config(&app, &receiver);
    config.broker.url = proxy.amqp_url().into();
    config.route_delivered = "http".to_owned();
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let (delay_queue, policy) = refuse_retries(&app, &config).await;

    assert_eq!(post(&ingest, "FORK-1", "delivered").await, 200);
    let waiting =
        async || metric_value(&worker.metrics().await, "dlr_worker_settle_publish_waits_total", &[]) >= 1.0;
    assert!(eventually(WITHIN, waiting).await, "the retry copy is refused and the delivery waits");
    // The connection goes; the broker requeues the delivery and the worker,
    // reconnected, takes it again (a second call, whose retry also waits).
    proxy.cut().await;
    proxy.start().await;
    assert!(eventually(WITHIN, async || receiver.calls().len() >= 2).await, "the message is redelivered");
    drop(policy);
    // The blocker and the redelivery's retry copy; then long enough for the
    // dead channel's copy to show if it were still coming.
    let copied = async || app.broker.queue_depth(&delay_queue).await >= 2;
    assert!(eventually(WITHIN, copied).await, "the retry copy is published once the broker takes it");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let in_delay_queue = app.broker.queue_depth(&delay_queue).await;
    let abandoned = metric_value(&worker.metrics().await, "dlr_worker_deliveries_abandoned_total", &[]);
    worker.stop().await;
    ingest.stop().await;
    proxy.cut().await;
    app.cleanup().await;

    assert_eq!(
        in_delay_queue, 2,
        "the blocker and one retry copy: the dead channel's delivery published nothing"
    );
    assert!(abandoned >= 1.0, "the old delivery was abandoned with its channel");
}

/// A delivery whose retry copy could not be published for the whole settle
/// patience is requeued; its redelivery must not run the handlers that had
/// already succeeded (here the amqp copy) again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeued_delivery_keeps_its_done_handlers() {
    let app = TestApp::new().await;
    let receiver = Receiver::start(Script::Always(503)).await;
    let mut config = refused_retry_config(&app, &receiver);
    config.route_delivered = "amqp,http".to_owned();
    config.settle_patience = Duration::from_millis(1500);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let capture = app.capture().await;
    let (_, policy) = refuse_retries(&app, &config).await;

    assert_eq!(post(&ingest, "REQUEUE-1", "delivered").await, 200);
    // Three rounds: handled, retry refused for the patience, requeued.
    let rounds = async || {
        receiver.calls().len() >= 3
            && metric_value(&worker.metrics().await, "dlr_worker_settle_frames_total", &[("kind", "nack")])
                >= 2.0
    };
    assert!(eventually(WITHIN, rounds).await, "the delivery is requeued and redelivered");
    let copies = app.broker.drain(&capture, Duration::from_millis(500)).await.len();
    worker.stop().await;
    drop(policy);
    ingest.stop().await;
    app.cleanup().await;

    assert_eq!(copies, 1, "the amqp copy is published once, not once per requeue");
}

/// A worker whose http handler posts to `receiver` and whose one retry
/// waits a minute in its delay queue (long enough for a blocker message to
/// stay there for the whole test).
fn refused_retry_config(app: &TestApp, receiver: &Receiver) -> dlr_worker::Config {
    let mut config = app.worker_config();
    config.http_url = Some(receiver.url("/hook").parse().expect("url"));
    config.http_secret = Some(SECRET.to_owned().into());
    config.max_attempts = 2;
    config.retry_initial_delay = Duration::from_secs(60);
    config.retry_max_delay = Duration::from_secs(60);
    app.own_worker_names(&config);
    config
}

/// Makes the broker nack every retry copy: one blocker message in the delay
/// queue, then a `max-length: 0` policy (a quorum queue refuses a publish
/// once it holds more than its limit; the delay queues are declared with
/// `x-overflow: reject-publish`). Returns the delay queue and the policy.
async fn refuse_retries(app: &TestApp, config: &dlr_worker::Config) -> (String, QueuePolicy) {
    let delay_queue = app.topology.retry_queue(config.retry_initial_delay);
    app.broker.publish_raw(&delay_queue, b"blocker").await;
    let policy = QueuePolicy::refuse_publishes(&format!("{}.refuse", app.topology.exchange), &delay_queue);
    (delay_queue, policy)
}

/// A delivery still being handled when the drain times out, but finished
/// before the channel closes, is acked, not requeued to be handled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_finishing_during_the_close_is_acked() {
    let app = TestApp::new().await;
    let receiver = Receiver::start(Script::SlowOk(1500)).await;
    let mut config = app.worker_config();
    config.route_delivered = "http".to_owned();
    config.http_url = Some(receiver.url("/hook").parse().expect("url"));
    config.http_secret = Some(SECRET.to_owned().into());
    config.drain_timeout = Duration::from_secs(1);
    config.http_timeout = Duration::from_secs(5);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config, WITHIN).await;

    assert_eq!(post(&ingest, "LATE-1", "delivered").await, 200);
    assert!(eventually(WITHIN, async || receiver.calls().len() == 1).await, "the call has started");
    // Drain: 1 s, then the close, during which the call (1.5 s) finishes.
    worker.stop().await;
    let left = app.broker.queue_depth(&app.topology.queue).await;
    ingest.stop().await;
    app.cleanup().await;

    assert_eq!(receiver.calls().len(), 1);
    assert_eq!(left, 0, "the late delivery was acked before its channel closed");
}

/// A queue that refused publishes for a while (over its length limit, or a
/// quorum queue without a leader during an election) and then takes them
/// again: ingest answers 200 again at once, without a restart. A channel
/// that was refused once can stay refused (RabbitMQ's channel keeps the
/// queue's "rejecting" state), so the refused channel must be replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_recovers_from_a_refusing_queue_without_a_restart() {
    let app = TestApp::new().await;
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    assert_eq!(post(&ingest, "BEFORE-1", "delivered").await, 200);
    let policy =
        QueuePolicy::refuse_publishes(&format!("{}.refuse", app.topology.exchange), &app.topology.queue);
    assert!(
        eventually(WITHIN, async || post(&ingest, "REFUSED-1", "delivered").await == 503).await,
        "refused"
    );
    for n in 0..20 {
        assert_eq!(
            post(&ingest, &format!("REFUSED-{n}"), "delivered").await,
            503,
            "refused while over the limit"
        );
    }
    drop(policy);
    let started = tokio::time::Instant::now();
    let recovered =
        eventually(Duration::from_secs(10), async || post(&ingest, "AFTER-1", "delivered").await == 200)
            .await;
    let took = started.elapsed();
    let replaced = metric_value(
        &ingest.metrics().await,
        "dlr_ingest_publish_channels_replaced_total",
        &[("reason", "nacked")],
    );
    ingest.stop().await;
    app.cleanup().await;

    assert!(recovered, "ingest stores receipts again within 10 s of the queue taking them ({took:?})");
    assert!(replaced >= 1.0, "the refused channels were replaced");
}

/// Connected, but every publish refused for longer than the grace: ingest
/// leaves the Service (`/readyz` 503) instead of answering 503 to every
/// receipt while it looks ready, and comes back by itself (its probe is
/// stored) as soon as the broker takes publishes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_that_stores_nothing_is_unready_and_recovers_by_itself() {
    let app = TestApp::new().await;
    let mut config = app.ingest_config();
    config.readiness_broker_grace = Duration::from_secs(2);
    let ingest = app.start_ingest(config, WITHIN).await;
    let policy =
        QueuePolicy::refuse_publishes(&format!("{}.refuse", app.topology.exchange), &app.topology.queue);

    assert!(eventually(WITHIN, async || post(&ingest, "REFUSED-1", "delivered").await == 503).await);
    let refused_since = tokio::time::Instant::now();
    let unready = eventually(WITHIN, async || {
        let _ = post(&ingest, "REFUSED-2", "delivered").await;
        ingest.ready_status().await == 503
    })
    .await;
    let became_unready_after = refused_since.elapsed();
    drop(policy);
    let ready_again = eventually(WITHIN, async || ingest.ready_status().await == 200).await;
    let stored = post(&ingest, "STORED-1", "delivered").await;
    ingest.stop().await;
    app.cleanup().await;

    assert!(unready, "an ingest whose publishes all fail leaves the Service");
    assert!(became_unready_after >= Duration::from_secs(1), "not before the grace: {became_unready_after:?}");
    assert!(ready_again, "ready again once a probe is stored, with no receipt to learn from");
    assert_eq!(stored, 200);
}

/// A publisher on its own supervised connection to `url`.
async fn publisher(app: &TestApp, url: &str) -> Publisher {
    let metrics = WorkerMetrics::new().expect("metrics");
    let (broker, _task, _stop) = connect(app, url, metrics);
    assert!(broker.wait_connected(&CancellationToken::new()).await.is_some(), "connects");
    Publisher::new(broker, Duration::from_secs(10))
}

fn connect(
    app: &TestApp,
    url: &str,
    metrics: WorkerMetrics,
) -> (dlr_shared::amqp::BrokerConnection, tokio::task::JoinHandle<()>, CancellationToken) {
    let mut config = app.worker_config();
    config.broker.url = url.to_owned().into();
    app.own_worker_names(&config);
    let retry = RetryPolicy::new(config.max_attempts, config.retry_initial_delay, config.retry_max_delay);
    for delay in retry.delays() {
        app.own_queue(&app.topology.retry_queue(delay));
    }
    let stop = CancellationToken::new();
    let (broker, task) = dlr_worker::startup::start_broker(
        &config,
        config.broker.addresses().expect("AMQP_URL parses"),
        Arc::new(app.topology.clone()),
        retry.delays(),
        dlr_worker::startup::ConnectionPurpose::Publish,
        metrics.publisher_connected,
        stop.clone(),
    );
    (broker, task, stop)
}
