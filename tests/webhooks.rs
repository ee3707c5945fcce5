//! Black-box tests of the http handler's endpoints against the real
//! RabbitMQ and local receivers: filters, the long retry horizon,
//! `Retry-After`, the circuit breaker, secret rotation, `parked list`, and
//! a bad endpoints file.
//!
//! Receipts enter through ingest; the tests look at what the receivers get,
//! the parking lot and the metrics. Time-scaled: retry delays of tens of
//! milliseconds stand for the production schedule's seconds to hours.
//!
//! Run with `cargo test -p dlr-tests --test integration webhooks:: -- --test-threads=2`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use dlr_shared::ReceiptEvent;
use dlr_shared::amqp::header_str;
use dlr_tests::receiver::{EndpointsFile, Received, Receiver, Script};
use dlr_tests::{TestApp, TestIngest, TestWorker, eventually, metric_value, retry_queues, vonage_form};
use dlr_worker::config::ParkedSelection;
use dlr_worker::parked::{self, ParkedEntry};
use dlr_worker::retry::RetryPolicy;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Generous deadline for anything that should happen "soon".
const WITHIN: Duration = Duration::from_secs(30);

/// A fresh Standard Webhooks secret.
fn new_secret() -> String {
    format!("whsec_{}", STANDARD.encode(uuid::Uuid::new_v4().as_bytes()))
}

/// One `[[endpoints]]` table.
fn endpoint(name: &str, url: &str, secrets: &[&str], extra: &str) -> String {
    let secrets: Vec<String> = secrets.iter().map(|s| format!("{s:?}")).collect();
    format!("[[endpoints]]\nname = {name:?}\nurl = {url:?}\nsecrets = [{}]\n{extra}\n", secrets.join(", "))
}

/// Worker config routing every outcome to http with `file`'s endpoints.
fn webhooks_config(app: &TestApp, file: &EndpointsFile) -> dlr_worker::Config {
    let mut config = app.worker_config();
    config.route_delivered = "http".to_owned();
    config.route_failed = "http".to_owned();
    config.route_pending = "http".to_owned();
    config.webhooks_file = Some(file.0.clone());
    config
}

/// Posts a Vonage receipt through ingest; returns its event id.
async fn post(ingest: &TestIngest, message_id: &str, status: &str) -> String {
    let response = ingest.post_vonage_form(&vonage_form(message_id, status)).await;
    assert_eq!(response.status().as_u16(), 200, "ingest accepts {message_id}");
    let body: serde_json::Value = response.json().await.expect("JSON answer");
    body["event_id"].as_str().expect("event_id").to_owned()
}

/// The event ids of the calls a receiver answered with 200 (ids it got
/// after `since`, when given), with how often each came.
fn ids(calls: &[Received]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for call in calls {
        let event = ReceiptEvent::from_json(&call.body).expect("the body is an event");
        *ids.entry(event.event_id.as_str().to_owned()).or_insert(0) += 1;
    }
    ids
}

async fn metric(worker: &TestWorker, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&worker.metrics().await, name, labels)
}

/// 1 when `endpoint`'s circuit is in `state`.
async fn circuit(worker: &TestWorker, endpoint: &str, state: &str) -> f64 {
    metric(worker, "dlr_worker_webhook_circuit_state", &[("endpoint", endpoint), ("state", state)]).await
}

/// Each id once.
fn once(ids: &[String]) -> BTreeMap<String, usize> {
    ids.iter().map(|id| (id.clone(), 1)).collect()
}

/// The retry schedule and breaker of a time-scaled test.
fn scaled(config: &mut dlr_worker::Config, attempts: u32, initial_ms: u64, max_ms: u64) {
    config.max_attempts = attempts;
    config.retry_initial_delay = Duration::from_millis(initial_ms);
    config.retry_max_delay = Duration::from_millis(max_ms);
}

/// The normal end of a test.
async fn stop(app: TestApp, worker: TestWorker, ingest: TestIngest) {
    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// Nothing left to do: receipts and delay queues empty, nothing in flight.
async fn idle(app: &TestApp, worker: &TestWorker, config: &dlr_worker::Config) -> bool {
    for round in 0..2 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut queues = retry_queues(config);
        queues.push(config.broker.topology.queue.clone());
        for queue in &queues {
            if app.broker.queue_depth(queue).await > 0 {
                return false;
            }
        }
        if metric(worker, "dlr_worker_events_in_flight", &[]).await > 0.0 {
            return false;
        }
    }
    true
}

/// Every event goes to each endpoint whose filters match, and only there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_get_exactly_the_events_their_filters_match() {
    let app = TestApp::new().await;
    let (delivered, failed, all) = (
        Receiver::start(Script::Ok).await,
        Receiver::start(Script::Ok).await,
        Receiver::start(Script::Ok).await,
    );
    let secret = new_secret();
    let file = EndpointsFile::write(&format!(
        "{}{}{}",
        endpoint("delivered", &delivered.url("/d"), &[&secret], "outcomes = [\"delivered\"]"),
        endpoint(
            "failed",
            &failed.url("/f"),
            &[&secret],
            "outcomes = [\"failed\"]\nproviders = [\"vonage-sms\"]"
        ),
        endpoint("everything", &all.url("/a"), &[&secret], ""),
    ));
    let config = webhooks_config(&app, &file);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    let mut want_delivered = Vec::new();
    let mut want_failed = Vec::new();
    for i in 0..3 {
        want_delivered.push(post(&ingest, &format!("FILTER-D{i}"), "delivered").await);
    }
    for i in 0..2 {
        want_failed.push(post(&ingest, &format!("FILTER-F{i}"), "failed").await);
    }
    assert!(eventually(WITHIN, async || all.calls().len() >= 5).await, "the unfiltered endpoint gets all");
    assert!(eventually(WITHIN, async || idle(&app, &worker, &config).await).await);

    assert_eq!(ids(&delivered.calls()), once(&want_delivered), "delivered endpoint: its events, once each");
    assert_eq!(ids(&failed.calls()), once(&want_failed), "failed endpoint: its events, once each");
    let everything: Vec<String> = want_delivered.iter().chain(&want_failed).cloned().collect();
    assert_eq!(ids(&all.calls()), once(&everything));
    assert_eq!(
        metric(&worker, "dlr_worker_webhook_requests_total", &[("endpoint", "everything"), ("result", "ok")])
            .await,
        5.0
    );
    assert_eq!(app.broker.queue_depth(&app.topology.parked_queue).await, 0);

    stop(app, worker, ingest).await;
}

/// A receiver down for longer than the old schedule's whole horizon (8
/// attempts, here 2.5 s) gets every event once it is back, nothing parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_old_horizon_loses_nothing() {
    let app = TestApp::new().await;
    let receiver = Receiver::start(Script::Always(503)).await;
    let file = EndpointsFile::write(&endpoint("crm", &receiver.url("/hook"), &[&new_secret()], ""));
    let mut config = webhooks_config(&app, &file);
    scaled(&mut config, 19, 50, 1000);
    config.webhook_breaker_cooldown = Duration::from_millis(300);
    const OUTAGE: Duration = Duration::from_secs(5);
    let old = RetryPolicy::new(8, config.retry_initial_delay, config.retry_max_delay).horizon();
    let new = config.retry_policy().horizon_after_jitter();
    assert!(old < OUTAGE && OUTAGE + Duration::from_secs(2) < new, "old {old:?}, new {new:?}");
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(post(&ingest, &format!("OUTAGE-{i}"), "delivered").await);
    }
    tokio::time::sleep(OUTAGE).await;
    let back = Instant::now();
    receiver.set_script(Script::Ok);

    assert!(eventually(WITHIN, async || idle(&app, &worker, &config).await).await);
    let after: Vec<Received> = receiver.calls().into_iter().filter(|c| c.at >= back).collect();
    assert_eq!(ids(&after), once(&sent), "every event once after the outage");
    assert_eq!(app.broker.queue_depth(&app.topology.parked_queue).await, 0, "nothing parked");

    stop(app, worker, ingest).await;
}

/// `Retry-After: 3` on a 503: the next attempt comes no sooner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_a_503_is_honoured() {
    let app = TestApp::new().await;
    let receiver = Receiver::start(Script::RetryAfterFirst(503, 3)).await;
    let file = EndpointsFile::write(&endpoint("crm", &receiver.url("/hook"), &[&new_secret()], ""));
    let mut config = webhooks_config(&app, &file);
    // Delays 50 ms, 500 ms, 5 s: the schedule's next delay would be 50 ms.
    scaled(&mut config, 4, 50, 5000);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    post(&ingest, "RETRY-AFTER-1", "delivered").await;
    assert!(eventually(WITHIN, async || receiver.calls().len() >= 2).await, "retried");
    let calls = receiver.calls();
    let waited = calls[1].at.duration_since(calls[0].at);
    assert!(waited >= Duration::from_secs(3), "second attempt after {waited:?}");
    assert!(eventually(WITHIN, async || idle(&app, &worker, &config).await).await);
    assert_eq!(receiver.calls().len(), 2, "delivered on the second attempt");

    stop(app, worker, ingest).await;
}

/// Endpoint down: after the breaker opens, attempts stop (counted at the
/// receiver) but for one probe per cool-down; once the receiver is back,
/// the probe closes the circuit and every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_stops_attempts_and_a_probe_resumes_them() {
    let app = TestApp::new().await;
    let receiver = Receiver::start(Script::Always(503)).await;
    let file = EndpointsFile::write(&endpoint("crm", &receiver.url("/hook"), &[&new_secret()], ""));
    let mut config = webhooks_config(&app, &file);
    scaled(&mut config, 19, 50, 1000);
    config.webhook_breaker_failures = 3;
    config.webhook_breaker_cooldown = Duration::from_millis(1500);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    const EVENTS: usize = 10;
    let mut sent = Vec::new();
    for i in 0..EVENTS {
        sent.push(post(&ingest, &format!("BREAKER-{i}"), "delivered").await);
    }
    assert!(
        eventually(WITHIN, async || { circuit(&worker, "crm", "closed").await == 0.0 }).await,
        "the circuit opens"
    );
    // Without the breaker, ten events retried every 50 ms .. 1 s would make
    // dozens of calls in 4.5 s; with it, one probe per 1.5 s cool-down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = receiver.calls().len();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let during = receiver.calls().len() - before;
    assert!((1..=4).contains(&during), "{during} calls in 4.5 s with the circuit open");
    assert!(metric(&worker, "dlr_worker_webhook_requests_skipped_total", &[("endpoint", "crm")]).await > 0.0);

    let back = Instant::now();
    receiver.set_script(Script::Ok);
    assert!(eventually(WITHIN, async || idle(&app, &worker, &config).await).await);
    let after: Vec<Received> = receiver.calls().into_iter().filter(|c| c.at >= back).collect();
    assert_eq!(ids(&after), once(&sent), "every event once after the probe closed the circuit");
    assert_eq!(circuit(&worker, "crm", "closed").await, 1.0);
    assert_eq!(app.broker.queue_depth(&app.topology.parked_queue).await, 0);

    stop(app, worker, ingest).await;
}

/// An endpoint that stays down: its events park after the (scaled-down)
/// horizon naming the endpoint, its circuit stays open, and the other
/// endpoint gets every event exactly once (the parked messages name it as
/// done, so a replay will not send to it again). Then `parked list` shows
/// what was parked and leaves the parking lot as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_stays_down_parks_alone_and_parked_list_shows_it() {
    let app = TestApp::new().await;
    let (down, up) = (Receiver::start(Script::Always(503)).await, Receiver::start(Script::Ok).await);
    let secret = new_secret();
    let file = EndpointsFile::write(&format!(
        "{}{}",
        endpoint("down", &down.url("/hook"), &[&secret], ""),
        endpoint("up", &up.url("/hook"), &[&secret], ""),
    ));
    let mut config = webhooks_config(&app, &file);
    scaled(&mut config, 6, 50, 300);
    config.webhook_breaker_failures = 2;
    config.webhook_breaker_cooldown = Duration::from_millis(400);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    const EVENTS: usize = 4;
    let mut sent = Vec::new();
    for i in 0..EVENTS {
        sent.push(post(&ingest, &format!("STAYS-DOWN-{i}"), "failed").await);
    }
    let parked_queue = app.topology.parked_queue.clone();
    assert!(
        eventually(WITHIN, async || app.broker.queue_depth(&parked_queue).await == EVENTS as u32).await,
        "every event parks"
    );
    assert!(eventually(WITHIN, async || idle(&app, &worker, &config).await).await);
    assert_eq!(ids(&up.calls()), once(&sent), "the healthy endpoint got each event once");
    assert!(
        down.calls().len() < EVENTS * config.max_attempts as usize,
        "the breaker saved attempts: {} calls",
        down.calls().len()
    );
    assert!(
        metric(&worker, "dlr_worker_webhook_requests_skipped_total", &[("endpoint", "down")]).await > 0.0
    );
    assert_eq!(circuit(&worker, "down", "closed").await, 0.0, "the circuit stays open");
    assert_eq!(circuit(&worker, "up", "closed").await, 1.0);

    // parked list: every parked event, then the same again, queue unchanged.
    let channel = app.broker.channel_for_probe().await.expect("channel");
    let list = async |selection: &ParkedSelection, limit: Option<u64>| {
        let mut lines = Vec::new();
        parked::list(&channel, &app.topology, selection, limit, |entry: &ParkedEntry| {
            lines.push(entry.clone())
        })
        .await
        .expect("parked list");
        lines
    };
    let everything = ParkedSelection::default();
    let first = list(&everything, None).await;
    assert_eq!(first.len(), EVENTS);
    for entry in &first {
        assert_eq!((entry.reason.as_str(), entry.handler.as_str()), ("retries_exhausted", "http:down"));
        assert_eq!(entry.attempts, u64::from(config.max_attempts));
        assert_eq!((entry.provider.as_str(), entry.outcome.as_str()), ("vonage-sms", "failed"));
        assert!(entry.last_error.contains("endpoint down"), "{entry:?}");
        assert!(entry.line().contains("handler=http:down"));
    }
    let listed: Vec<String> = first.iter().map(|e| e.event_id.clone()).collect();
    let mut sorted = listed.clone();
    sorted.sort();
    let mut want: Vec<String> = sent.clone();
    want.sort();
    assert_eq!(sorted, want, "every parked event listed once");
    assert_eq!(list(&everything, None).await, first, "a second listing sees the same, in the same order");
    assert_eq!(list(&everything, Some(2)).await, first[..2].to_vec());
    let by = |filters: &[(&str, &str)]| ParkedSelection {
        filters: filters.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..Default::default()
    };
    assert_eq!(list(&by(&[("endpoint", "down")]), None).await.len(), EVENTS);
    assert_eq!(list(&by(&[("endpoint", "up")]), None).await.len(), 0);
    assert_eq!(list(&by(&[("handler", "http")]), None).await.len(), EVENTS);
    let future = ParkedSelection {
        since: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        ..Default::default()
    };
    assert_eq!(list(&future, None).await.len(), 0);
    assert_eq!(
        app.broker.queue_depth(&parked_queue).await,
        EVENTS as u32,
        "the parking lot keeps its messages"
    );
    let order: Vec<String> = app
        .broker
        .take(&parked_queue, EVENTS, WITHIN)
        .await
        .iter()
        .map(|m| {
            let headers = m.delivery.properties.headers().as_ref();
            assert_eq!(header_str(headers, "x-dlr-done-handlers"), Some("http:up"));
            m.delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned()).unwrap_or_default()
        })
        .collect();
    assert_eq!(order, listed, "in the order the listings showed");
    drop(channel);

    stop(app, worker, ingest).await;
}

/// During a rotation (`secrets = [new, old]`), a receiver holding only the
/// old secret and one holding only the new both verify every event with
/// the reference library; secrets with and without `whsec_` both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_of_a_secret_rotation_verify_every_event() {
    let app = TestApp::new().await;
    let receiver = Receiver::start(Script::Ok).await;
    let old = new_secret();
    let new_without_prefix = STANDARD.encode(uuid::Uuid::new_v4().as_bytes());
    let file =
        EndpointsFile::write(&endpoint("crm", &receiver.url("/hook"), &[&new_without_prefix, &old], ""));
    let config = webhooks_config(&app, &file);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    for i in 0..3 {
        post(&ingest, &format!("ROTATION-{i}"), "delivered").await;
    }
    assert!(eventually(WITHIN, async || receiver.calls().len() >= 3).await);
    let holders = [
        standardwebhooks::Webhook::new(&old).expect("old secret"),
        standardwebhooks::Webhook::new(&new_without_prefix).expect("new secret"),
        standardwebhooks::Webhook::new(&format!("whsec_{new_without_prefix}")).expect("new secret, prefixed"),
    ];
    let stranger = standardwebhooks::Webhook::new(&new_secret()).expect("another secret");
    for call in receiver.calls() {
        for (i, holder) in holders.iter().enumerate() {
            assert!(holder.verify(&call.body, &call.headers).is_ok(), "receiver {i} verifies");
        }
        assert!(stranger.verify(&call.body, &call.headers).is_err(), "a third secret does not verify");
        let signatures =
            call.headers.get("webhook-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(signatures.split(' ').count(), 2, "one signature per secret");
    }

    stop(app, worker, ingest).await;
}

/// A bad endpoints file stops start-up with the file, the endpoint and the
/// key in the message, and never the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_endpoints_file_fails_start_up_naming_file_endpoint_and_key() {
    let app = TestApp::new().await;
    let cases = [
        (
            endpoint("crm", "http://127.0.0.1:9/hook", &["whsec_not*base64*SECRETVALUE"], ""),
            "endpoint \"crm\": key `secrets`",
        ),
        (
            endpoint("crm", "http://127.0.0.1:9/hook", &[&new_secret()], "outcomes = [\"delivred\"]"),
            "endpoint \"crm\": key `outcomes`",
        ),
        (endpoint("billing", "not a url", &[&new_secret()], ""), "endpoint \"billing\": key `url`"),
        (
            endpoint("crm", "http://127.0.0.1:9/hook", &[&new_secret()], "timeout = 5"),
            "key `timeout`: unknown key",
        ),
    ];
    for (text, expected) in cases {
        let file = EndpointsFile::write(&text);
        let config = webhooks_config(&app, &file);
        let error = match dlr_worker::Application::build(config).await {
            Ok(_) => panic!("start-up accepted {text}"),
            Err(error) => error.to_string(),
        };
        let path = file.0.display().to_string();
        assert!(error.contains(&format!("WORKER_WEBHOOKS_FILE {path}")), "{error}");
        assert!(error.contains(expected), "{expected:?} not in {error:?}");
        assert!(!error.contains("SECRETVALUE"), "the secret leaked: {error}");
    }
    let mut config = app.worker_config();
    config.route_delivered = "http".to_owned();
    config.webhooks_file = Some(PathBuf::from("/nonexistent/webhooks.toml"));
    let error = dlr_worker::Application::build(config).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("WORKER_WEBHOOKS_FILE /nonexistent/webhooks.toml: cannot read"), "{error}");
    app.cleanup().await;
}
