//! One receipt followed end to end through both real binaries: ingest →
//! RabbitMQ → worker → webhook (and the events exchange), with a test OTLP
//! collector decoding what they export.
//!
//! The binaries run as processes: tracing is set up once per process, and
//! the trace must be seen crossing two of them. Also: with export off an
//! incoming `traceparent` is passed through as received; export over gRPC
//! ([`grpc`]); a trace through the parking lot and a replay ([`parking`]);
//! a collector that is down changes no answer ([`down`]).
//!
//! Run with `cargo test -p dlr-tests --test integration traces::`.

mod down;
mod grpc;
mod parking;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use dlr_shared::amqp::header_str;
use dlr_tests::binaries::Running;
use dlr_tests::otlp::{CollectedSpan, Collector};
use dlr_tests::receiver::{EndpointsFile, Received, Receiver, Script};
use dlr_tests::{TestApp, eventually, vonage_form};
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(30);

/// The endpoints file naming one webhook endpoint, `crm`, at `receiver`.
fn endpoints_for(receiver: &Receiver) -> EndpointsFile {
    let secret = format!("whsec_{}", STANDARD.encode(uuid::Uuid::new_v4().as_bytes()));
    EndpointsFile::write(&format!(
        "[[endpoints]]\nname = \"crm\"\nurl = {:?}\nsecrets = [{secret:?}]\n",
        receiver.url("/hook")
    ))
}

/// Ingest and worker processes on the test's topology.
struct Pipeline {
    ingest: Running,
    worker: Running,
    ingest_url: String,
    worker_url: String,
    _endpoints: EndpointsFile,
}

impl Pipeline {
    /// Starts both with `extra` settings (the same for both, then
    /// `worker_extra` for the worker) and waits until they are ready; the
    /// worker routes delivered receipts to `route`.
    async fn start(
        app: &TestApp,
        receiver: &Receiver,
        route: &str,
        extra: &[(&'static str, String)],
        worker_extra: &[(&'static str, String)],
    ) -> Self {
        let endpoints = endpoints_for(receiver);
        let ingest_addr = format!("127.0.0.1:{}", dlr_tests::free_port().expect("a free port"));
        let worker_addr = format!("127.0.0.1:{}", dlr_tests::free_port().expect("a free port"));
        let mut common = app.topology_env();
        common.push(("AMQP_DELIVERY_LIMIT", app.topology.delivery_limit.to_string()));
        common.extend(extra.iter().cloned());
        let mut ingest_env = common.clone();
        ingest_env
            .extend([("INGEST_ADDR", ingest_addr.clone()), ("VONAGE_SIGNATURE_MODE", "off".to_owned())]);
        let mut worker_env = common;
        worker_env.extend([
            ("WORKER_ADDR", worker_addr.clone()),
            ("WORKER_EVENTS_EXCHANGE", app.events_exchange.clone()),
            ("WORKER_ROUTE_DELIVERED", route.to_owned()),
            ("WORKER_WEBHOOKS_FILE", endpoints.0.display().to_string()),
            // The test worker's schedule (50 ms .. 200 ms, 4 attempts): its delay
            // queues are the ones `own_worker_names` removes.
            ("WORKER_RETRY_INITIAL_DELAY_MS", "50".to_owned()),
            ("WORKER_RETRY_MAX_DELAY_MS", "200".to_owned()),
            ("WORKER_MAX_ATTEMPTS", "4".to_owned()),
        ]);
        worker_env.extend(worker_extra.iter().cloned());
        app.own_worker_names(&app.worker_config());
        let pipeline = Self {
            ingest: Running::start("ingest", &ingest_env),
            worker: Running::start("worker", &worker_env),
            ingest_url: format!("http://{ingest_addr}"),
            worker_url: format!("http://{worker_addr}"),
            _endpoints: endpoints,
        };
        let client = reqwest::Client::new();
        for url in [&pipeline.ingest_url, &pipeline.worker_url] {
            let ready = eventually(WITHIN, async || {
                client.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success())
            })
            .await;
            assert!(
                ready,
                "{url} never became ready: {}{}",
                pipeline.ingest.output(),
                pipeline.worker.output()
            );
        }
        pipeline
    }

    /// Posts a Vonage receipt with `headers`; returns the status and how long the answer took.
    async fn post(&self, message_id: &str, headers: &[(&str, &str)]) -> (u16, Duration) {
        let mut request = reqwest::Client::new()
            .post(format!("{}/dlr/vonage", self.ingest_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(vonage_form(message_id, "delivered"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let started = Instant::now();
        let status = request.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
        (status, started.elapsed())
    }

    async fn metrics(url: &str) -> String {
        let response = reqwest::get(format!("{url}/metrics")).await;
        match response {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Stops both; returns their output.
    async fn stop(self) -> String {
        let (ingest_exited, ingest) = self.ingest.stop(Duration::from_secs(15)).await;
        let (worker_exited, worker) = self.worker.stop(Duration::from_secs(15)).await;
        assert!(ingest_exited && worker_exited, "a binary did not stop on SIGTERM: {ingest}{worker}");
        format!("{ingest}{worker}")
    }
}

/// A random W3C trace id and parent id.
fn new_ids() -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let parent = uuid::Uuid::new_v4().simple().to_string();
    (id, parent[..16].to_owned())
}

/// The `traceparent` a webhook call carried.
fn traceparent(call: &Received) -> String {
    call.headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

fn find<'a>(spans: &'a [CollectedSpan], service: &str, name: &str) -> Vec<&'a CollectedSpan> {
    spans.iter().filter(|s| s.service == service && s.name == name).collect()
}

#[tokio::test]
async fn one_receipt_is_one_trace_from_the_callers_request_to_the_webhook_retries_included() {
    let app = TestApp::new().await;
    let collector = Collector::start().await;
    let receiver = Receiver::start(Script::FailFirst(1)).await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=traces-test".to_owned()),
    ];
    let pipeline = Pipeline::start(&app, &receiver, "amqp,http", &otel, &[]).await;
    let events = app.capture().await;

    let (trace_id, caller_span) = new_ids();
    let incoming = format!("00-{trace_id}-{caller_span}-01");
    let (status, _) = pipeline
        .post("0C000000TRACE001", &[("traceparent", &incoming), ("tracestate", "congo=t61rcWkgMzE")])
        .await;
    assert_eq!(status, 200);

    // The webhook failed once and was retried: two calls, one trace.
    let delivered = eventually(WITHIN, async || receiver.calls().len() >= 2).await;
    let republished = app.broker.take(&events, 1, WITHIN).await;
    // Every span of both processes, once the retry's spans are exported.
    let complete = eventually(WITHIN, async || {
        let spans = collector.spans();
        find(&spans, "dlr-worker", "http:crm").len() >= 2
            && !find(&spans, "dlr-ingest", "POST /dlr/vonage").is_empty()
    })
    .await;
    let spans = collector.spans();
    let logs = pipeline.stop().await;
    app.cleanup().await;

    for span in &spans {
        println!(
            "{} {} {} <- {} kind {} {:?}",
            span.service, span.name, span.span_id, span.parent_span_id, span.kind, span.attributes
        );
    }
    assert!(delivered, "the webhook was not called twice: {logs}");
    assert!(complete, "spans missing: {spans:#?}\n{logs}");
    let calls = receiver.calls();
    for call in &calls {
        let header = traceparent(call);
        assert_eq!(
            header.get(3..35),
            Some(trace_id.as_str()),
            "webhook traceparent {header:?} is not of the trace"
        );
        let state = call.headers.get("tracestate").and_then(|v| v.to_str().ok());
        assert_eq!(state, Some("congo=t61rcWkgMzE"), "the caller's tracestate travels on");
    }
    let message = republished.first().expect("the amqp handler republished the event");
    let header =
        header_str(message.delivery.properties.headers().as_ref(), "traceparent").unwrap_or_default();
    assert_eq!(header.get(3..35), Some(trace_id.as_str()), "republished event's traceparent {header:?}");

    // One trace across both binaries, and nothing outside it.
    assert!(spans.iter().all(|s| s.trace_id == trace_id), "a span outside the trace: {spans:#?}");
    assert!(spans.iter().all(|s| s.resource.get("deployment.environment.name").map(String::as_str) == Some("traces-test")));
    let request = find(&spans, "dlr-ingest", "POST /dlr/vonage");
    assert_eq!(request.len(), 1, "{spans:#?}");
    assert_eq!(request[0].parent_span_id, caller_span, "the caller's span is the request's parent");
    assert_eq!(request[0].kind, 2, "server span");
    assert_eq!(request[0].attribute("http.response.status_code"), Some("200"));
    let event_id = request[0].attribute("dlr.event_id").expect("the request span names its event").to_owned();
    let publish = spans
        .iter()
        .find(|s| s.service == "dlr-ingest" && s.parent_span_id == request[0].span_id && s.kind == 4)
        .expect("ingest's publish span");
    for step in ["decode", "verify"] {
        let found = find(&spans, "dlr-ingest", step);
        assert_eq!(found.len(), 1, "one {step} span: {spans:#?}");
        assert_eq!(found[0].parent_span_id, request[0].span_id, "{step} is a step of the request");
        assert_eq!(found[0].kind, 1, "{step} is an internal span");
    }
    let processes: Vec<&CollectedSpan> =
        spans.iter().filter(|s| s.service == "dlr-worker" && s.kind == 5).collect();
    assert_eq!(processes.len(), 2, "one delivery span per attempt: {spans:#?}");
    let first = processes.iter().find(|s| s.attribute("dlr.attempt") == Some("1")).expect("attempt 1");
    let second = processes.iter().find(|s| s.attribute("dlr.attempt") == Some("2")).expect("attempt 2");
    assert_eq!(first.parent_span_id, publish.span_id, "the first delivery continues ingest's publish");
    assert_eq!(first.attribute("dlr.event_id"), Some(event_id.as_str()));
    let retry =
        spans.iter().find(|s| s.span_id == second.parent_span_id).expect("the retry's parent was exported");
    assert_eq!(retry.kind, 4, "the retry continues the first attempt's retry publish");
    assert!(
        retry.attribute("messaging.destination.name").is_some_and(|q| q.contains(".delay.")),
        "{retry:#?}"
    );
    // Each webhook call names the span of that call as its parent.
    let calls_spans = find(&spans, "dlr-worker", "http:crm");
    for call in &calls {
        let parent = traceparent(call).get(36..52).unwrap_or_default().to_owned();
        assert!(calls_spans.iter().any(|s| s.span_id == parent && s.kind == 3), "no client span {parent}");
    }
    // The worker's warning about the failed call leads to the trace.
    let warning = logs.lines().find(|l| l.contains("handler failed")).unwrap_or_default();
    assert!(
        warning.contains(&format!("\"trace_id\":\"{trace_id}\"")),
        "log line without its trace: {warning}"
    );
}

#[tokio::test]
async fn with_export_off_an_incoming_traceparent_is_passed_on_unchanged() {
    let app = TestApp::new().await;
    let receiver = Receiver::start(Script::Ok).await;
    let pipeline = Pipeline::start(&app, &receiver, "http", &[], &[]).await;
    let (trace_id, caller_span) = new_ids();
    let incoming = format!("00-{trace_id}-{caller_span}-01");
    let (with, _) = pipeline.post("0E000000PASS0001", &[("traceparent", &incoming)]).await;
    let (without, _) = pipeline.post("0E000000PASS0002", &[("traceparent", "not-a-traceparent")]).await;
    let delivered = eventually(WITHIN, async || receiver.calls().len() >= 2).await;
    let logs = pipeline.stop().await;
    app.cleanup().await;

    assert_eq!((with, without), (200, 200));
    assert!(delivered, "{logs}");
    let headers: Vec<String> = receiver.calls().iter().map(traceparent).collect();
    assert!(headers.contains(&incoming), "the caller's traceparent was not passed on: {headers:?}");
    assert!(headers.contains(&String::new()), "a malformed traceparent must not be passed on: {headers:?}");
    assert!(!logs.contains("trace_id"), "no trace ids on log lines while not exporting");
}
