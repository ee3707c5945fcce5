//! Black-box tests of `worker` against the real RabbitMQ and PostgreSQL and
//! a local HTTP receiver.
//!
//! Receipts enter through `ingest`, as in production. The tests look only at
//! what leaves the worker: HTTP calls, events republished to the topic
//! exchange, database rows, the parking lot, probes and metrics. Waiting is
//! always "poll until a condition holds or a deadline passes"; no test
//! asserts how fast anything is. The one duration asserted is a configured
//! bound: a SIGTERM'd worker exits within `WORKER_DRAIN_TIMEOUT_SECONDS`.
//!
//! Run with `cargo test -p dlr-tests --test integration worker:: -- --test-threads=4`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use dlr_shared::ReceiptEvent;
use dlr_shared::amqp::{Publisher, header_str, header_u64};
use dlr_tests::proxy::{BrokerProxy, broker_addr};
use dlr_tests::receiver::{Received, Receiver, Script};
use dlr_tests::{
    TestApp, TestBroker, TestIngest, TestWorker, eventually, metric_value, retry_queues, vonage_form,
    worker_config,
};
use dlr_worker::metrics::WorkerMetrics;
use dlr_worker::replay::{self, ReplayReport};
use dlr_worker::retry::RetryPolicy;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use lapin::message::BasicGetMessage;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use sha2::Sha256;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous deadline for anything that should happen "soon".
const WITHIN: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// What ingest answered for one receipt.
struct Accepted {
    event_id: String,
    outcome: String,
}

/// Posts a Vonage SMS receipt through ingest and returns its event id.
async fn post_receipt(ingest: &TestIngest, message_id: &str, status: &str) -> Accepted {
    let response = ingest.post_vonage_form(&vonage_form(message_id, status)).await;
    assert_eq!(response.status().as_u16(), 200, "ingest accepts {message_id}/{status}");
    let body: serde_json::Value = response.json().await.expect("ingest answers JSON");
    assert_eq!(body["status"], "accepted");
    Accepted {
        event_id: body["event_id"].as_str().expect("event_id").to_owned(),
        outcome: body["outcome"].as_str().expect("outcome").to_owned(),
    }
}

/// A webhook secret in the Standard Webhooks format.
fn new_secret() -> String {
    format!("whsec_{}", STANDARD.encode(uuid::Uuid::new_v4().as_bytes()))
}

fn url(text: &str) -> url::Url {
    text.parse().expect("valid URL")
}

/// Worker config whose outcomes all go to `route`, posting to `http_url`.
fn http_config(app: &TestApp, route: &str, http_url: &str) -> dlr_worker::Config {
    let mut config = app.worker_config();
    config.route_delivered = route.to_owned();
    config.route_failed = route.to_owned();
    config.route_pending = route.to_owned();
    config.http_url = Some(url(http_url));
    config.http_secret = Some(new_secret().into());
    config
}

/// One sample of a worker metric (summed over matching label sets).
async fn worker_metric(worker: &TestWorker, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&worker.metrics().await, name, labels)
}

/// `dlr_worker_handler_results_total{handler, result}`.
async fn handler_results(worker: &TestWorker, handler: &str, result: &str) -> f64 {
    worker_metric(worker, "dlr_worker_handler_results_total", &[("handler", handler), ("result", result)])
        .await
}

/// True when nothing is left for the worker to do: the receipts queue and
/// every delay queue are empty and no event is being handled, twice in a
/// row, so a message moving from a delay queue back is not missed.
async fn idle(worker: &TestWorker, broker: &TestBroker, config: &dlr_worker::Config) -> bool {
    for round in 0..2 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let mut queues = retry_queues(config);
        queues.push(config.broker.topology.queue.clone());
        for queue in &queues {
            if broker.queue_depth(queue).await > 0 {
                return false;
            }
        }
        if worker_metric(worker, "dlr_worker_events_in_flight", &[]).await > 0.0 {
            return false;
        }
    }
    true
}

fn header<'a>(call: &'a Received, name: &str) -> &'a str {
    call.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("header {name} is present"))
}

/// Standard Webhooks signature, computed here from the spec rather than
/// with the worker's code: base64 HMAC-SHA256 over `id.timestamp.body`,
/// keyed with the base64 part of `whsec_...`.
fn expected_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").expect("whsec_ secret")).expect("base64 key");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// True when one of the space-separated signatures of `call` is valid for `secret`.
fn signature_valid(call: &Received, secret: &str) -> bool {
    let expected =
        expected_signature(secret, header(call, "webhook-id"), header(call, "webhook-timestamp"), &call.body);
    header(call, "webhook-signature").split(' ').any(|s| s == expected)
}

/// Checks the webhook headers of `call` and returns the event it carries.
fn verified_event(call: &Received, secret: &str) -> ReceiptEvent {
    assert_eq!(header(call, "content-type"), "application/json");
    let timestamp: i64 =
        header(call, "webhook-timestamp").parse().expect("webhook-timestamp is Unix seconds");
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 300, "webhook-timestamp is current");
    assert!(signature_valid(call, secret), "webhook-signature verifies with the configured secret");
    assert!(!signature_valid(call, &new_secret()), "the signature depends on the secret");
    let event = ReceiptEvent::from_json(&call.body).expect("the body is a receipt event");
    assert_eq!(header(call, "webhook-id"), event.event_id.as_str(), "webhook-id is the event id");
    event
}

/// The parking-lot headers of a parked message.
#[derive(Debug)]
struct ParkedHeaders {
    reason: String,
    handler: String,
    attempt: u64,
    last_error: String,
    done: String,
}

fn parked_headers(message: &BasicGetMessage) -> ParkedHeaders {
    let headers = message.delivery.properties.headers().as_ref();
    let text = |name: &str| header_str(headers, name).unwrap_or_else(|| panic!("{name} is set")).to_owned();
    let parked_at = text("x-dlr-parked-at");
    let parked_at = chrono::DateTime::parse_from_rfc3339(&parked_at).expect("x-dlr-parked-at is RFC 3339");
    assert!((chrono::Utc::now() - parked_at.to_utc()).num_seconds().abs() < 300, "x-dlr-parked-at is now");
    ParkedHeaders {
        reason: text("x-dlr-park-reason"),
        handler: text("x-dlr-handler"),
        attempt: header_u64(headers, "x-dlr-attempt").expect("x-dlr-attempt is set"),
        last_error: text("x-dlr-last-error"),
        done: header_str(headers, "x-dlr-done-handlers").unwrap_or_default().to_owned(),
    }
}

/// What `worker replay-parked` does after parsing its arguments: its own
/// supervised connection, a channel for basic.get and a confirming publisher.
/// `None` when the run has not finished within `within`.
async fn replay_parked(
    config: &dlr_worker::Config,
    limit: Option<u64>,
    filters: &[(&str, &str)],
    within: Duration,
) -> Option<ReplayReport> {
    let retry = RetryPolicy::new(config.max_attempts, config.retry_initial_delay, config.retry_max_delay);
    let topology = Arc::new(config.broker.topology.clone());
    let metrics = WorkerMetrics::new().expect("metrics");
    let addresses = config.broker.addresses().expect("AMQP_URL parses");
    let stop = CancellationToken::new();
    let (broker, task) = dlr_worker::startup::start_broker(
        config,
        addresses,
        topology.clone(),
        retry.delays(),
        dlr_worker::startup::ConnectionPurpose::Publish,
        metrics.publisher_connected,
        stop.clone(),
    );
    let connection = tokio::time::timeout(WITHIN, broker.wait_connected(&CancellationToken::new()))
        .await
        .ok()
        .flatten()
        .expect("replay connects to the broker");
    let channel = connection.create_channel().await.expect("channel");
    let publisher = Publisher::new(broker, Duration::from_secs(10));
    let filters: Vec<(String, String)> =
        filters.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let report =
        tokio::time::timeout(within, replay::replay_parked(&channel, &publisher, &topology, limit, &filters))
            .await
            .ok()
            .map(|result| result.expect("replay-parked succeeds"));
    stop.cancel();
    let _ = task.await;
    report
}

/// An HTTP endpoint that accepts connections and never answers, like a
/// stuck downstream: requests to it hang until the client gives up.
async fn black_hole() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect("count query")
}

// ---------------------------------------------------------------------------
// Routing and the handlers' output
// ---------------------------------------------------------------------------

/// Delivered, failed and pending receipts reach the handlers their outcome
/// is routed to: each is republished with `<outcome>.<provider>.<status>`,
/// and delivered and failed ones are posted, signed, to their own URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outcome_reaches_its_handlers() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let delivered_receiver = Receiver::start(Script::Ok).await;
    let failed_receiver = Receiver::start(Script::Ok).await;
    let secret = new_secret();
    let mut config = app.worker_config();
    config.route_delivered = "amqp,http".to_owned();
    config.route_failed = "amqp,http".to_owned();
    config.route_pending = "amqp".to_owned();
    config.http_url_delivered = Some(url(&delivered_receiver.url("/hooks/delivered")));
    config.http_url_failed = Some(url(&failed_receiver.url("/hooks/failed")));
    config.http_secret = Some(secret.clone().into());
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let capture = app.capture().await;

    let delivered = post_receipt(&ingest, "ROUTE-D", "delivered").await;
    let failed = post_receipt(&ingest, "ROUTE-F", "expired").await;
    let pending = post_receipt(&ingest, "ROUTE-P", "accepted").await;
    assert_eq!(
        [delivered.outcome.as_str(), failed.outcome.as_str(), pending.outcome.as_str()],
        ["delivered", "failed", "pending"]
    );

    // amqp: one confirmed, persistent copy per event, keyed by outcome.provider.status.
    let copies = broker.take(&capture, 3, WITHIN).await;
    let by_key: BTreeMap<String, &BasicGetMessage> =
        copies.iter().map(|m| (m.delivery.routing_key.as_str().to_owned(), m)).collect();
    let expected = [
        ("delivered.vonage-sms.delivered", &delivered.event_id, "ROUTE-D"),
        ("failed.vonage-sms.expired", &failed.event_id, "ROUTE-F"),
        ("pending.vonage-sms.accepted", &pending.event_id, "ROUTE-P"),
    ];
    assert_eq!(by_key.keys().map(String::as_str).collect::<Vec<_>>(), expected.map(|e| e.0).to_vec());
    for (key, event_id, message_id) in expected {
        let copy = by_key[key];
        let event = ReceiptEvent::from_json(&copy.delivery.data).expect("republished body is an event");
        assert_eq!(event.event_id.as_str(), event_id, "{key}");
        assert_eq!(event.message_id.as_str(), message_id, "{key}");
        let properties = &copy.delivery.properties;
        assert_eq!(properties.delivery_mode(), &Some(2), "{key} is persistent");
        assert_eq!(properties.message_id().as_ref().map(|m| m.as_str()), Some(event_id.as_str()));
        assert_eq!(properties.content_type().as_ref().map(|m| m.as_str()), Some("application/json"));
    }

    // http: each routed outcome posted once, to its own URL, signed.
    assert!(
        eventually(WITHIN, async || delivered_receiver.calls().len() == 1
            && failed_receiver.calls().len() == 1)
        .await,
        "delivered and failed events are posted"
    );
    for (receiver, accepted, outcome, status) in [
        (&delivered_receiver, &delivered, dlr_shared::Outcome::Delivered, "delivered"),
        (&failed_receiver, &failed, dlr_shared::Outcome::Failed, "expired"),
    ] {
        let event = verified_event(&receiver.calls()[0], &secret);
        assert_eq!(event.event_id.as_str(), accepted.event_id);
        assert_eq!(event.outcome, outcome);
        assert_eq!(event.status, status);
    }
    // Pending is routed to amqp only: its copy above was its last handler, so
    // no late call can arrive after these counts.
    assert!(eventually(WITHIN, async || handler_results(&worker, "http", "ok").await == 2.0).await);
    assert_eq!(handler_results(&worker, "amqp", "ok").await, 3.0);
    assert_eq!(delivered_receiver.calls().len() + failed_receiver.calls().len(), 2, "pending is not posted");
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert_eq!(broker.queue_depth(&topology.parked_queue).await, 0);

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------
// Retries and the parking lot
// ---------------------------------------------------------------------------

/// A receiver that fails the first two calls sees three calls for the event,
/// all with the same webhook-id, and exactly one succeeds; nothing is parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_until_the_receiver_accepts() {
    const FAILURES: usize = 2;
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::FailFirst(FAILURES)).await;
    let config = http_config(&app, "http", &receiver.url("/hook"));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    let accepted = post_receipt(&ingest, "RETRY-1", "delivered").await;

    assert!(
        eventually(WITHIN, async || handler_results(&worker, "http", "ok").await == 1.0).await,
        "the event gets through after {FAILURES} failures"
    );
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    let calls = receiver.calls();
    assert_eq!(calls.len(), FAILURES + 1, "failed calls, then one success, then nothing");
    for call in &calls {
        assert_eq!(header(call, "webhook-id"), accepted.event_id);
    }
    assert_eq!(handler_results(&worker, "http", "transient").await, FAILURES as f64);
    assert_eq!(
        worker_metric(&worker, "dlr_worker_retries_scheduled_total", &[("handler", "http")]).await,
        FAILURES as f64
    );
    assert_eq!(broker.queue_depth(&topology.parked_queue).await, 0, "nothing parked");

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// A receiver that always answers 500 is called `max_attempts` times, then
/// the event is parked with reason `retries_exhausted` and the documented headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_receiver_gets_the_event_parked_after_the_last_attempt() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::Always(500)).await;
    let config = http_config(&app, "http", &receiver.url("/hook"));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    let accepted = post_receipt(&ingest, "EXHAUST-1", "failed").await;

    let parked = broker.take(&topology.parked_queue, 1, WITHIN).await;
    assert_eq!(parked.len(), 1, "the event is parked");
    let message = &parked[0];
    let headers = parked_headers(message);
    assert_eq!(headers.reason, "retries_exhausted");
    assert_eq!(headers.handler, "http");
    assert_eq!(headers.attempt, u64::from(config.max_attempts));
    assert!(headers.last_error.contains("500"), "last error names the status: {headers:?}");
    let event = ReceiptEvent::from_json(&message.delivery.data).expect("the parked body is the event");
    assert_eq!(event.event_id.as_str(), accepted.event_id);
    let properties = &message.delivery.properties;
    assert_eq!(properties.message_id().as_ref().map(|m| m.as_str()), Some(accepted.event_id.as_str()));
    assert_eq!(properties.delivery_mode(), &Some(2), "parked persistently");
    assert_eq!(
        properties.expiration(),
        &None,
        "a retry's expiration does not follow it into the parking lot"
    );

    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert_eq!(
        receiver.calls().len(),
        config.max_attempts as usize,
        "one call per attempt, none after parking"
    );
    assert_eq!(
        worker_metric(&worker, "dlr_worker_parked_total", &[("reason", "retries_exhausted")]).await,
        1.0
    );

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// A 400 cannot get better by retrying: parked after the first call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_gets_the_event_parked_at_once() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::Always(400)).await;
    let config = http_config(&app, "http", &receiver.url("/hook"));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    let accepted = post_receipt(&ingest, "REFUSED-1", "delivered").await;

    let parked = broker.take(&topology.parked_queue, 1, WITHIN).await;
    assert_eq!(parked.len(), 1, "the event is parked");
    let headers = parked_headers(&parked[0]);
    assert_eq!(headers.reason, "permanent_failure");
    assert_eq!(headers.handler, "http");
    assert_eq!(headers.attempt, 1);
    assert!(headers.last_error.contains("400"), "last error names the status: {headers:?}");
    let event = ReceiptEvent::from_json(&parked[0].delivery.data).expect("the parked body is the event");
    assert_eq!(event.event_id.as_str(), accepted.event_id);

    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert_eq!(receiver.calls().len(), 1, "no retry");
    assert_eq!(worker_metric(&worker, "dlr_worker_retries_scheduled_total", &[]).await, 0.0);

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// `WORKER_HTTP_MAX_IN_FLIGHT` caps the webhook calls a worker makes at
/// once, whatever its prefetch: 24 events waiting in the queue and a slow
/// receiver see at most (and, here, exactly) 3 calls at a time, and every
/// event still arrives. Without the cap, 20 of the 24 were called at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_calls_in_flight_stay_under_their_cap() {
    const EVENTS: usize = 24;
    let app = TestApp::new().await;
    let receiver = Receiver::start(Script::SlowOk(200)).await;
    let mut config = http_config(&app, "http", &receiver.url("/hook"));
    config.http_max_in_flight = std::num::NonZeroUsize::new(3);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    // Queued before the worker starts, so its prefetch takes them all at once.
    for n in 0..EVENTS {
        post_receipt(&ingest, &format!("CAPPED-{n}"), "delivered").await;
    }
    let worker = app.start_worker(config.clone(), WITHIN).await;

    assert!(
        eventually(WITHIN, async || handler_results(&worker, "http", "ok").await == EVENTS as f64).await,
        "every event reaches the receiver"
    );
    assert_eq!(receiver.calls().len(), EVENTS, "one call each");
    assert_eq!(receiver.max_in_flight(), 3, "calls at once");

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// Acks are coalesced (one `ack multiple` for a run of finished
/// deliveries), and none is lost doing it: a burst of events is handled
/// once each with fewer ack frames than events, and after the worker stops
/// nothing comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_acked_with_fewer_frames_than_events_and_none_comes_back() {
    const EVENTS: usize = 120;
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let mut config = app.worker_config();
    config.route_delivered = "log".into();
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    // Queued before the worker starts, so they arrive as one burst.
    for n in 0..EVENTS {
        post_receipt(&ingest, &format!("BURST-{n}"), "delivered").await;
    }
    let worker = app.start_worker(config.clone(), WITHIN).await;
    assert!(
        eventually(WITHIN, async || handler_results(&worker, "log", "ok").await == EVENTS as f64).await,
        "every event is handled"
    );
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    let frames = eventually(WITHIN, async || {
        worker_metric(&worker, "dlr_worker_settle_frames_total", &[]).await > 0.0
            && broker.queue_depth(&topology.queue).await == 0
    })
    .await;
    assert!(frames, "acks were sent");
    let metrics = worker.metrics().await;
    let multiple = metric_value(&metrics, "dlr_worker_settle_frames_total", &[("kind", "ack_multiple")]);
    let single = metric_value(&metrics, "dlr_worker_settle_frames_total", &[("kind", "ack")]);
    assert!(multiple >= 1.0, "at least one ack covers a run of deliveries");
    assert!(multiple + single < EVENTS as f64, "{multiple} + {single} ack frames for {EVENTS} events");
    assert_eq!(metric_value(&metrics, "dlr_worker_settle_frames_total", &[("kind", "nack")]), 0.0);

    // Had any delivery stayed unacked, the channel's close would put it
    // back in the queue.
    worker.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broker.queue_depth(&topology.queue).await, 0, "nothing unacked was left behind");
    ingest.stop().await;
    app.cleanup().await;
}

/// Events finished behind a stuck one are acked on their own after a
/// short hold instead of waiting for it: otherwise they would keep their
/// prefetch slots and, with all slots taken, the broker would stop
/// delivering until the stuck call ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stuck_event_does_not_hold_back_the_acks_of_the_others() {
    const EVENTS: usize = 20;
    const STUCK_MS: u64 = 6_000;
    let app = TestApp::new().await;
    let receiver = Receiver::start(Script::SlowFirst(STUCK_MS)).await;
    let mut config = http_config(&app, "http", &receiver.url("/hook"));
    config.prefetch = 4;
    config.http_timeout = Duration::from_secs(20);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    for n in 0..EVENTS {
        post_receipt(&ingest, &format!("STUCK-{n}"), "delivered").await;
    }
    let worker = app.start_worker(config.clone(), WITHIN).await;

    // With prefetch 4, at most 3 others could finish while the stuck call
    // holds back their acks; here all of them finish while it is held.
    let others_done = eventually(Duration::from_millis(STUCK_MS / 2), async || {
        handler_results(&worker, "http", "ok").await == (EVENTS - 1) as f64
    })
    .await;
    assert!(
        others_done,
        "{} of {} other events handled while one call was stuck",
        handler_results(&worker, "http", "ok").await,
        EVENTS - 1
    );
    assert_eq!(receiver.calls().len(), EVENTS, "every event was delivered to the receiver once");
    assert!(
        eventually(WITHIN, async || handler_results(&worker, "http", "ok").await == EVENTS as f64).await,
        "the stuck call finishes too"
    );
    assert!(eventually(WITHIN, async || idle(&worker, &app.broker, &config).await).await);

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// With `WORKER_HANDLER_ORDER=concurrent`, a receiver that refuses the
/// event does not hold back the handler listed after it: the amqp copy is
/// published on the first attempt, the park records it as done, and a replay
/// once the receiver accepts runs http only. (In sequential order nothing
/// after the refused http call runs: the first assertion fails.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handlers_keep_each_others_successes() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::Always(400)).await;
    let mut config = http_config(&app, "http,amqp", &receiver.url("/hook"));
    config.handler_order = dlr_worker::config::HandlerOrder::Concurrent;
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let capture = app.capture().await;

    let accepted = post_receipt(&ingest, "CONCURRENT-1", "delivered").await;

    let copies = broker.take(&capture, 1, WITHIN).await;
    assert_eq!(copies.len(), 1, "amqp ran although http, listed first, was refused");
    // Left in the parking lot for the replay below, which proves that the
    // park recorded amqp as done: the replay runs http only.
    assert!(
        eventually(WITHIN, async || broker.queue_depth(&topology.parked_queue).await == 1).await,
        "the refused event is parked"
    );
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert_eq!(handler_results(&worker, "http", "permanent").await, 1.0);

    receiver.set_script(Script::Ok);
    let report = replay_parked(&config, None, &[], WITHIN).await.expect("replay finishes");
    assert_eq!(report.replayed, 1);
    assert!(eventually(WITHIN, async || handler_results(&worker, "http", "ok").await == 1.0).await);
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    let calls = receiver.calls();
    assert_eq!(calls.len(), 2, "one refused call, one after the replay");
    assert_eq!(header(&calls[1], "webhook-id"), accepted.event_id);
    assert_eq!(handler_results(&worker, "amqp", "ok").await, 1.0, "amqp is not run again");
    assert!(broker.take(&capture, 1, Duration::from_millis(500)).await.is_empty(), "no second copy");

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// A message that is not an event is parked as `unparseable`, and the
/// worker goes on with the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_parked_as_unparseable_and_work_goes_on() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let config = app.worker_config();
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    broker.publish_raw(&topology.queue, b"not json").await;

    let parked = broker.take(&topology.parked_queue, 1, WITHIN).await;
    assert_eq!(parked.len(), 1, "the garbage is parked");
    assert_eq!(parked[0].delivery.data, b"not json", "parked as it was");
    let headers = parked_headers(&parked[0]);
    assert_eq!(headers.reason, "unparseable");
    assert_eq!(headers.handler, "none");
    assert_eq!(headers.attempt, 1);
    assert!(!headers.last_error.is_empty());

    post_receipt(&ingest, "AFTER-GARBAGE", "delivered").await;
    assert!(
        eventually(WITHIN, async || handler_results(&worker, "log", "ok").await == 1.0).await,
        "a valid receipt after the garbage is handled"
    );
    assert!(worker.wait_ready(WITHIN).await, "still consuming");
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert_eq!(broker.queue_depth(&topology.parked_queue).await, 0, "only the garbage was parked");
    assert_eq!(worker_metric(&worker, "dlr_worker_parked_total", &[("reason", "unparseable")]).await, 1.0);

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// Parked events come back with `replay-parked` (honouring its filter and
/// limit) and are handled once the receiver has recovered; handlers that
/// had already succeeded (amqp) are not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_events_are_handled_once_the_receiver_recovers() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::Always(503)).await;
    let config = http_config(&app, "amqp,http", &receiver.url("/hook"));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let capture = app.capture().await;

    let delivered = post_receipt(&ingest, "REPLAY-D", "delivered").await;
    let failed = post_receipt(&ingest, "REPLAY-F", "rejected").await;
    let attempts = config.max_attempts as usize;
    assert!(
        eventually(WITHIN, async || broker.queue_depth(&topology.parked_queue).await == 2).await,
        "both events are parked while the receiver is down"
    );
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert_eq!(receiver.calls().len(), 2 * attempts);

    // The receiver is back; replay only the delivered one first.
    receiver.set_script(Script::Ok);
    let filters = [("outcome", "delivered"), ("reason", "retries_exhausted")];
    let report = replay_parked(&config, Some(1), &filters, WITHIN).await.expect("replay-parked finishes");
    assert_eq!(report.replayed, 1, "{report:?}");
    assert!(eventually(WITHIN, async || handler_results(&worker, "http", "ok").await == 1.0).await);
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    let calls = receiver.calls();
    assert_eq!(calls.len(), 2 * attempts + 1, "one more call, for the replayed event");
    assert_eq!(header(&calls[2 * attempts], "webhook-id"), delivered.event_id);

    // The other one stayed parked, untouched.
    let still_parked = broker.take(&topology.parked_queue, 1, WITHIN).await;
    assert_eq!(still_parked.len(), 1);
    let event = ReceiptEvent::from_json(&still_parked[0].delivery.data).expect("event");
    assert_eq!(event.event_id.as_str(), failed.event_id);
    let headers = parked_headers(&still_parked[0]);
    assert_eq!((headers.reason.as_str(), headers.done.as_str()), ("retries_exhausted", "amqp"));
    assert_eq!(broker.queue_depth(&topology.parked_queue).await, 0);

    // amqp succeeded before the outage and was not repeated by the replay.
    let copies = broker.drain(&capture, Duration::from_millis(200)).await;
    let mut copied: Vec<String> = copies
        .iter()
        .map(|m| ReceiptEvent::from_json(&m.delivery.data).expect("event").event_id.as_str().to_owned())
        .collect();
    copied.sort();
    let mut expected = vec![delivered.event_id.clone(), failed.event_id.clone()];
    expected.sort();
    assert_eq!(copied, expected, "one republished copy per event");

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// `replay-parked` without a limit while the receiver still refuses: every
/// replayed event is parked again at once, and the run must still end after
/// one pass over what was parked when it started, not chase its own tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_without_limit_makes_one_pass_while_the_receiver_still_refuses() {
    const PARKED: usize = 40;
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::Always(400)).await;
    let config = http_config(&app, "http", &receiver.url("/hook"));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    let ids: Vec<String> = (0..PARKED).map(|i| format!("REREFUSED-{i}")).collect();
    futures_util::stream::iter(&ids)
        .map(|id| post_receipt(&ingest, id, "delivered"))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    assert!(
        eventually(WITHIN, async || broker.queue_depth(&topology.parked_queue).await == PARKED as u32).await,
        "every event is parked"
    );

    // Bounded well above what one pass needs (tens of milliseconds here).
    let report = replay_parked(&config, None, &[], Duration::from_secs(8)).await;
    let calls = receiver.calls().len();
    let Some(report) = report else {
        // The fixture's drop stops the apps and removes the topology.
        panic!(
            "replay-parked was still running after 8 s: it kept taking back the events it had just \
             replayed, and the receiver got {calls} calls for {PARKED} events"
        );
    };
    assert_eq!(report.replayed, PARKED as u64, "each parked event replayed once: {report:?}");

    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert!(
        eventually(WITHIN, async || broker.queue_depth(&topology.parked_queue).await == PARKED as u32).await,
        "all parked again"
    );
    assert_eq!(receiver.calls().len(), 2 * PARKED, "one call per event per pass");

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------
// The status store
// ---------------------------------------------------------------------------

/// A late intermediate status never replaces a final one, a final one does
/// replace an intermediate one, and a duplicate event is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_store_keeps_final_statuses_and_stores_duplicates_once() {
    let app = TestApp::new().await;
    let db = app.create_database().await;
    let mut config = app.worker_config();
    config.route_delivered = "postgres".to_owned();
    config.route_failed = "postgres".to_owned();
    config.route_pending = "postgres".to_owned();
    config.database_url = Some(db.url.clone().into());
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let pool = db.pool().await;
    let status_of = async |message_id: &str| -> Option<(String, String, String)> {
        sqlx::query_as("SELECT outcome, status, event_id FROM message_status WHERE provider = 'vonage-sms' AND message_id = $1")
            .bind(message_id)
            .fetch_optional(&pool)
            .await
            .expect("status query")
    };
    let stored = async |ok: f64| {
        eventually(WITHIN, async || handler_results(&worker, "postgres", "ok").await == ok).await
    };

    // delivered, then a late accepted: delivered stays.
    let delivered = post_receipt(&ingest, "ORDER-A", "delivered").await;
    assert!(stored(1.0).await);
    let late = post_receipt(&ingest, "ORDER-A", "accepted").await;
    assert_ne!(late.event_id, delivered.event_id);
    assert!(stored(2.0).await);
    assert_eq!(
        status_of("ORDER-A").await,
        Some(("delivered".to_owned(), "delivered".to_owned(), delivered.event_id.clone())),
        "a late intermediate status does not overwrite a final one"
    );

    // accepted, then delivered: progress is recorded.
    post_receipt(&ingest, "ORDER-B", "accepted").await;
    assert!(stored(3.0).await);
    let progress = post_receipt(&ingest, "ORDER-B", "delivered").await;
    assert!(stored(4.0).await);
    assert_eq!(
        status_of("ORDER-B").await,
        Some(("delivered".to_owned(), "delivered".to_owned(), progress.event_id.clone()))
    );

    // The same receipt twice (a provider retry): one event id, one history row.
    let first = post_receipt(&ingest, "DUP-C", "delivered").await;
    let second = post_receipt(&ingest, "DUP-C", "delivered").await;
    assert_eq!(first.event_id, second.event_id, "ingest derives the same event id");
    assert!(stored(6.0).await, "both copies are handled successfully");
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM receipt_events WHERE event_id = $1")
        .bind(&first.event_id)
        .fetch_one(&pool)
        .await
        .expect("history query");
    assert_eq!(history, 1, "a duplicate event leaves one history row");
    assert_eq!(count(&pool, "SELECT count(*) FROM receipt_events").await, 5);
    assert_eq!(count(&pool, "SELECT count(*) FROM message_status").await, 3);
    assert_eq!(handler_results(&worker, "postgres", "transient").await, 0.0);
    assert_eq!(handler_results(&worker, "postgres", "permanent").await, 0.0);

    pool.close().await;
    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------
// Crashes and broker outages
// ---------------------------------------------------------------------------

/// Worker A stores its whole prefetch window and is cut off from the broker
/// before acking any of it (its HTTP step hangs): the broker's view of a
/// kill -9 mid-batch. Worker B then gets everything, including the events
/// A had already stored, and the store ends with exactly one row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing_and_stores_nothing_twice() {
    const BATCH: usize = 200;
    const PREFETCH: u16 = 10;
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let db = app.create_database().await;
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let pool = db.pool().await;

    // The whole batch waits in the queue before any worker starts.
    let statuses = ["delivered", "expired", "accepted"];
    let ids: Vec<String> = (0..BATCH).map(|i| format!("KILL-{i:04}")).collect();
    let event_ids: HashSet<String> = futures_util::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| post_receipt(&ingest, id, statuses[i % 3]))
        .buffer_unordered(16)
        .map(|accepted| accepted.event_id)
        .collect()
        .await;
    assert_eq!(event_ids.len(), BATCH);

    // Worker A, through a proxy we can cut; its HTTP step never returns.
    let (hole, hole_task) = black_hole().await;
    let mut proxy = BrokerProxy::reserve(broker_addr()).await;
    proxy.start().await;
    let mut config_a = http_config(&app, "postgres,http", &format!("http://{hole}/hook"));
    config_a.broker.url = proxy.amqp_url().into();
    config_a.database_url = Some(db.url.clone().into());
    config_a.prefetch = PREFETCH;
    config_a.http_timeout = Duration::from_secs(120);
    config_a.drain_timeout = Duration::from_millis(500);
    let worker_a = app.start_worker(config_a.clone(), WITHIN).await;
    assert!(
        eventually(WITHIN, async || count(&pool, "SELECT count(*) FROM receipt_events").await
            == i64::from(PREFETCH))
        .await,
        "worker A stores its prefetch window"
    );

    proxy.cut().await;
    let client = reqwest::Client::new();
    let readyz = format!("http://{}/readyz", worker_a.addr);
    assert!(
        eventually(WITHIN, async || client.get(&readyz).send().await.is_ok_and(|r| r.status() == 503)).await,
        "worker A reports not ready while cut off"
    );
    worker_a.stop().await;

    // Worker B, directly on the broker, with a working receiver.
    let receiver = Receiver::start(Script::Ok).await;
    let mut config_b = http_config(&app, "postgres,http", &receiver.url("/hook"));
    config_b.database_url = Some(db.url.clone().into());
    let worker_b = app.start_worker(config_b.clone(), WITHIN).await;
    assert!(
        eventually(WITHIN, async || handler_results(&worker_b, "http", "ok").await == BATCH as f64).await,
        "worker B handles the whole batch"
    );
    assert!(eventually(WITHIN, async || idle(&worker_b, broker, &config_b).await).await);

    let stored_events: HashSet<String> = sqlx::query_scalar("SELECT event_id FROM receipt_events")
        .fetch_all(&pool)
        .await
        .expect("events")
        .into_iter()
        .collect();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM receipt_events").await,
        BATCH as i64,
        "one history row per event"
    );
    assert_eq!(stored_events, event_ids, "no event lost");
    let stored_messages: HashSet<String> = sqlx::query_scalar("SELECT message_id FROM message_status")
        .fetch_all(&pool)
        .await
        .expect("statuses")
        .into_iter()
        .collect();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM message_status").await,
        BATCH as i64,
        "one status row per message"
    );
    assert_eq!(stored_messages, ids.iter().cloned().collect::<HashSet<_>>());
    // B re-ran the store for A's unacked events, and that was harmless.
    assert_eq!(
        handler_results(&worker_b, "postgres", "ok").await,
        BATCH as f64,
        "A's window was redelivered"
    );
    assert_eq!(handler_results(&worker_b, "postgres", "transient").await, 0.0);
    assert_eq!(handler_results(&worker_b, "postgres", "permanent").await, 0.0);
    let posted: HashSet<String> =
        receiver.calls().iter().map(|c| header(c, "webhook-id").to_owned()).collect();
    assert_eq!((receiver.calls().len(), posted), (BATCH, event_ids), "every event posted once");
    assert_eq!(broker.queue_depth(&topology.parked_queue).await, 0);

    hole_task.abort();
    pool.close().await;
    worker_b.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// Losing the broker connection makes the worker unready; when the broker
/// is back it consumes again without a restart, including what was
/// published in the meantime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker_and_consuming_resumes_after_an_outage() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let mut proxy = BrokerProxy::reserve(broker_addr()).await;
    proxy.start().await;
    let mut config = worker_config(topology, &proxy.amqp_url());
    config.route_delivered = "amqp".to_owned();
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let capture = app.capture().await;
    let client = reqwest::Client::new();
    let ready = async || {
        client
            .get(format!("http://{}/readyz", worker.addr))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };

    post_receipt(&ingest, "OUTAGE-1", "delivered").await;
    assert_eq!(broker.take(&capture, 1, WITHIN).await.len(), 1, "handled before the outage");

    proxy.cut().await;
    assert!(eventually(WITHIN, async || ready().await == 503).await, "not ready while disconnected");
    assert_eq!(worker_metric(&worker, "dlr_worker_broker_connected", &[]).await, 0.0);
    let during = post_receipt(&ingest, "OUTAGE-2", "delivered").await;

    proxy.start().await;
    assert!(eventually(WITHIN, async || ready().await == 200).await, "ready again once the broker is back");
    let copies = broker.take(&capture, 1, WITHIN).await;
    assert_eq!(copies.len(), 1, "the receipt published during the outage is handled");
    let event = ReceiptEvent::from_json(&copies[0].delivery.data).expect("event");
    assert_eq!(event.event_id.as_str(), during.event_id);

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------
// Production paths: drain on SIGTERM, returns, redirects
// ---------------------------------------------------------------------------

/// SIGTERM while 50 events are in the hands of a slow receiver: the worker
/// keeps its channel open until each is settled, so every event reaches the
/// receiver exactly once, nothing goes back to the queue, and a worker
/// started afterwards has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_events_without_redelivery() {
    const EVENTS: usize = 50;
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::SlowOk(1000)).await;
    let mut config = http_config(&app, "http", &receiver.url("/hook"));
    config.prefetch = 64;
    config.drain_timeout = Duration::from_secs(15);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    for n in 0..EVENTS {
        post_receipt(&ingest, &format!("DRAIN-{n}"), "delivered").await;
    }
    let worker = app.start_worker(config.clone(), WITHIN).await;
    assert!(
        eventually(WITHIN, async || receiver.calls().len() >= EVENTS).await,
        "all {EVENTS} events reach the slow receiver ({} did)",
        receiver.calls().len()
    );

    let at_sigterm = receiver.calls().len();
    let stopping = tokio::time::Instant::now();
    worker.stop().await;
    let took = stopping.elapsed();
    assert!(took < config.drain_timeout, "the worker exits within the drain timeout (took {took:?})");
    assert_eq!(broker.queue_depth(&topology.queue).await, 0, "nothing went back to the queue");

    let second = app.start_worker(config.clone(), WITHIN).await;
    assert!(
        eventually(WITHIN, async || idle(&second, broker, &config).await).await,
        "the second worker is idle"
    );
    let calls = receiver.calls();
    let ids: HashSet<&str> = calls.iter().map(|c| header(c, "webhook-id")).collect();
    assert_eq!(ids.len(), EVENTS, "every event arrived");
    assert_eq!(
        calls.len(),
        EVENTS,
        "each event is posted exactly once, none redelivered ({at_sigterm} at SIGTERM)"
    );

    second.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// Routable and unroutable publishes interleaved on one publisher, as the
/// amqp handler makes them: a publish is reported `Returned` only when that
/// very message came back, never when it was stored; a stored message that
/// received another's return is reported as doubtful, not as returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_are_attributed_to_their_own_publish() {
    use dlr_shared::amqp::PublishError;
    use lapin::options::ExchangeDeclareOptions;
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let exchange = app.events_exchange.clone();
    let queue = format!("{}.bound", topology.exchange);
    app.own_queue(&queue);
    broker
        .channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("quorum".into()));
    broker
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            arguments,
        )
        .await
        .expect("declare queue");
    broker
        .channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "routable".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");

    let metrics = WorkerMetrics::new().expect("metrics");
    let retry = RetryPolicy::new(2, Duration::from_millis(50), Duration::from_millis(50));
    let config = app.worker_config();
    app.own_worker_names(&config);
    for delay in retry.delays() {
        app.own_queue(&topology.retry_queue(delay));
    }
    let stop = CancellationToken::new();
    let (connection, _task) = dlr_worker::startup::start_broker(
        &config,
        config.broker.addresses().expect("AMQP_URL parses"),
        Arc::new(topology.clone()),
        retry.delays(),
        dlr_worker::startup::ConnectionPurpose::Publish,
        metrics.publisher_connected,
        stop.clone(),
    );
    assert!(connection.wait_connected(&CancellationToken::new()).await.is_some(), "connects");
    let publisher = Arc::new(Publisher::new(connection, Duration::from_secs(10)));

    const PUBLISHES: usize = 2000;
    let mut tasks = Vec::new();
    for n in 0..PUBLISHES {
        let publisher = publisher.clone();
        let exchange = exchange.clone();
        // Mostly routable with returns sprinkled in: the returns must not
        // land on the routable publishes' confirms.
        let routable = n % 4 != 0;
        tasks.push(tokio::spawn(async move {
            let key = if routable { "routable" } else { "nobody.listens" };
            let properties = lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(format!("m{n}").as_str().into());
            let result = publisher.publish(&exchange, key, b"{}", properties).await;
            (routable, result)
        }));
    }
    let mut stored_reported_returned = 0;
    let mut routable_ok = 0;
    let mut doubtful = 0;
    let mut returned = 0;
    for task in tasks {
        let (routable, result) = task.await.expect("publish task");
        match (routable, result) {
            (true, Ok(())) => routable_ok += 1,
            (true, Err(PublishError::Returned { .. })) => stored_reported_returned += 1,
            (_, Err(PublishError::ReturnMismatch { .. })) => doubtful += 1,
            (false, Err(PublishError::Returned { .. })) => returned += 1,
            (false, Ok(())) => {}
            (_, Err(other)) => panic!("unexpected publish failure: {other}"),
        }
    }
    let in_queue = broker.drain(&queue, Duration::from_millis(500)).await.len();
    stop.cancel();
    app.cleanup().await;

    assert_eq!(stored_reported_returned, 0, "a stored publish was reported as returned");
    assert!(returned > 0, "unroutable publishes are reported as returned");
    assert_eq!(in_queue, PUBLISHES * 3 / 4, "every routable publish is stored");
    assert!(routable_ok + doubtful >= PUBLISHES * 3 / 4, "routable publishes are ok or doubtful");
}

/// A receiver that redirects (an SSO or maintenance page answering 200 at
/// the end of the hop) has not received the event: the worker does not
/// follow the redirect and counts no delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_not_counted_as_delivered() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::Redirect(302)).await;
    let mut config = http_config(&app, "http", &receiver.url("/hook"));
    config.http_url = Some(url(&format!("http://user:pa55word@{}/hook?token=s3cret", receiver.addr)));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    post_receipt(&ingest, "REDIRECTED-1", "delivered").await;

    let parked = broker.take(&topology.parked_queue, 1, WITHIN).await;
    assert_eq!(parked.len(), 1, "the event is parked once its retries are used up");
    let headers = parked_headers(&parked[0]);
    assert_eq!(headers.reason, "retries_exhausted");
    assert!(headers.last_error.contains("302"), "last error names the redirect: {headers:?}");
    assert_eq!(handler_results(&worker, "http", "ok").await, 0.0, "no delivery counted");
    assert_eq!(receiver.calls().len(), config.max_attempts as usize, "one POST per attempt, no hops");

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// The http handler's error names the cause (here: connection refused) and
/// never the URL's credentials or query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_name_the_cause_without_the_urls_secrets() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    let mut config = http_config(&app, "http", "http://127.0.0.1/");
    config.http_url = Some(url(&format!("http://user:pa55word@{closed}/hook?token=s3cret")));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    post_receipt(&ingest, "UNREACHABLE-1", "delivered").await;

    let parked = broker.take(&topology.parked_queue, 1, WITHIN).await;
    assert_eq!(parked.len(), 1, "the event is parked once its retries are used up");
    let error = parked_headers(&parked[0]).last_error;
    assert!(!error.contains("pa55word") && !error.contains("s3cret"), "no secrets in: {error}");
    assert!(error.to_lowercase().contains("refused"), "the cause is named: {error}");

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// A retried message comes back from its delay queue with the broker's
/// dead-letter history (`x-death`); what the worker publishes next (a
/// retry, the parking lot, a replay) starts without it, so a replayed
/// message is never mistaken for a dead-letter cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republished_messages_carry_no_dead_letter_history() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::Always(500)).await;
    let mut config = http_config(&app, "http", &receiver.url("/hook"));
    config.max_attempts = 2;
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    post_receipt(&ingest, "DEATH-1", "delivered").await;

    let parked = broker.take(&topology.parked_queue, 1, WITHIN).await;
    assert_eq!(parked.len(), 1, "parked after its retry");
    assert_eq!(parked_headers(&parked[0]).attempt, 2, "it went through a delay queue first");
    let names: Vec<String> = parked[0]
        .delivery
        .properties
        .headers()
        .as_ref()
        .map(|h| h.inner().keys().map(|k| k.as_str().to_owned()).collect())
        .unwrap_or_default();
    assert!(
        !names
            .iter()
            .any(|n| n == "x-death" || n.starts_with("x-first-death") || n.starts_with("x-last-death")),
        "no dead-letter history on the parked message: {names:?}"
    );

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// Messages a replay run keeps go back as fresh copies, not as requeues:
/// on RabbitMQ 4 every requeue counts toward the quorum queue's delivery
/// limit, and a parked message kept by enough filtered runs would be
/// dropped. After several runs the kept message has no delivery count and
/// its parking headers are intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_parked_messages_gather_no_delivery_count() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::Always(400)).await;
    let config = http_config(&app, "http", &receiver.url("/hook"));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    post_receipt(&ingest, "KEPT-1", "delivered").await;
    assert!(eventually(WITHIN, async || broker.queue_depth(&topology.parked_queue).await == 1).await);
    worker.stop().await;

    for run in 0..3 {
        let report = replay_parked(&config, None, &[("reason", "retries_exhausted")], WITHIN)
            .await
            .expect("replay-parked finishes");
        assert_eq!((report.examined, report.replayed, report.kept), (1, 0, 1), "run {run}: {report:?}");
    }
    let parked = broker.take(&topology.parked_queue, 1, WITHIN).await;
    assert_eq!(parked.len(), 1, "the kept message is still parked");
    let headers = parked[0].delivery.properties.headers().as_ref();
    assert_eq!(header_u64(headers, "x-delivery-count").unwrap_or(0), 0, "no delivery count gathered");
    assert_eq!(parked_headers(&parked[0]).reason, "permanent_failure", "parking headers kept");

    ingest.stop().await;
    app.cleanup().await;
}

/// The amqp route with only part of the events bound, as the README tells
/// users to bind only what they need: under load on a healthy broker, the
/// queue bound to `delivered.#` gets every delivered event exactly once,
/// and every failed event (no queue bound) is counted unroutable exactly
/// once, never retried, never published twice. Seen failing before the
/// publisher attributed returns to their own publish (116 duplicates, 123
/// transient amqp results for 1000 + 1000 events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_binding_gets_each_bound_event_once_and_counts_the_rest_unroutable() {
    const EACH: usize = 1000;
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let mut config = app.worker_config();
    config.route_delivered = "amqp".to_owned();
    config.route_failed = "amqp".to_owned();
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let bound = format!("{}.delivered", topology.exchange);
    app.own_queue(&bound);
    broker
        .channel
        .queue_declare(bound.as_str().into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare the bound queue");
    broker
        .channel
        .queue_bind(
            bound.as_str().into(),
            app.events_exchange.as_str().into(),
            "delivered.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind delivered.# only");

    // Half delivered, half failed, 16 at a time.
    let sender = &ingest;
    let accepted: Vec<Accepted> = futures_util::stream::iter(0..2 * EACH)
        .map(|n| async move {
            let status = if n % 2 == 0 { "delivered" } else { "failed" };
            post_receipt(sender, &format!("0D{n:014X}"), status).await
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let delivered_ids: HashSet<String> =
        accepted.iter().filter(|a| a.outcome == "delivered").map(|a| a.event_id.clone()).collect();
    assert_eq!(delivered_ids.len(), EACH, "ingest classified half as delivered");

    // Settled: every event is either on the bound queue or counted
    // unroutable (duplicates only add to that), and nothing is left to do.
    let settled = eventually(Duration::from_secs(120), async || {
        let unroutable = worker_metric(&worker, "dlr_worker_events_unroutable_total", &[]).await;
        let on_queue = f64::from(broker.queue_depth(&bound).await);
        unroutable + on_queue >= (2 * EACH) as f64 && idle(&worker, broker, &config).await
    })
    .await;
    let unroutable = worker_metric(&worker, "dlr_worker_events_unroutable_total", &[]).await;
    let transient = handler_results(&worker, "amqp", "transient").await;
    let messages = broker.drain(&bound, Duration::from_secs(1)).await;
    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;

    let mut per_event: BTreeMap<String, usize> = BTreeMap::new();
    for message in &messages {
        let event = ReceiptEvent::from_json(&message.delivery.data).expect("an event on the bound queue");
        *per_event.entry(event.event_id.as_str().to_owned()).or_default() += 1;
    }
    let duplicates: usize = per_event.values().map(|n| n - 1).sum();
    assert!(
        settled,
        "the worker did not settle: {unroutable} unroutable, {} on the bound queue",
        messages.len()
    );
    assert_eq!(
        duplicates, 0,
        "{duplicates} duplicates on the bound queue ({transient} transient amqp results)"
    );
    let got: HashSet<String> = per_event.into_keys().collect();
    assert_eq!(got, delivered_ids, "the bound queue holds exactly the delivered events");
    assert_eq!(unroutable, EACH as f64, "every failed event counted unroutable exactly once");
    assert_eq!(transient, 0.0, "no amqp publish failed on a healthy broker");
}
