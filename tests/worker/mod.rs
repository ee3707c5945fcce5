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

mod outages;
mod production;
mod retries;
mod routing;

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
