//! The trace follows a receipt into the parking lot and back out: a
//! webhook refuses it for good (a 4xx parks at once), an operator replays
//! it with `worker replay-parked`, and the replayed delivery joins the
//! original trace. (A retried event's attempts sharing one trace is
//! covered in the parent module.)

use super::{Pipeline, WITHIN, new_ids, traceparent};
use dlr_tests::binaries;
use dlr_tests::otlp::{CollectedSpan, Collector};
use dlr_tests::receiver::{Receiver, Script};
use dlr_tests::{TestApp, eventually};

#[tokio::test]
async fn a_parked_receipt_replayed_from_the_parking_lot_stays_in_its_trace() {
    let app = TestApp::new().await;
    let collector = Collector::start().await;
    // 400: a permanent failure, parked at the first attempt.
    let receiver = Receiver::start(Script::Always(400)).await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let pipeline = Pipeline::start(&app, &receiver, "http", &otel, &[]).await;
    let (trace_id, caller_span) = new_ids();
    let incoming = format!("00-{trace_id}-{caller_span}-01");
    let (status, _) = pipeline.post("0H000000PARK0001", &[("traceparent", &incoming)]).await;
    let parked_queue = app.topology.parked_queue.clone();
    let parked = eventually(WITHIN, async || app.broker.queue_depth(&parked_queue).await == 1).await;

    // The endpoint is fixed; the operator replays the parking lot. No
    // collector for the command itself: the spans that matter are the
    // worker's, delivering the replayed message.
    receiver.set_script(Script::Ok);
    let mut env: Vec<(&str, String)> = app.topology_env();
    env.push(("AMQP_DELIVERY_LIMIT", app.topology.delivery_limit.to_string()));
    let replay = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        binaries::run("worker", &["replay-parked"], &env).text()
    })
    .await
    .unwrap_or_else(|e| format!("replay-parked did not finish: {e}"));
    let delivered = eventually(WITHIN, async || receiver.calls().len() >= 2).await;
    let complete = eventually(WITHIN, async || {
        collector.spans().iter().filter(|s| s.service == "dlr-worker" && s.name == "http:crm").count() >= 2
    })
    .await;
    let spans = collector.spans();
    let logs = pipeline.stop().await;
    app.cleanup().await;

    assert_eq!(status, 200, "{logs}");
    assert!(parked, "the receipt was not parked: {logs}");
    assert!(replay.contains("replayed 1"), "replay-parked: {replay}");
    assert!(delivered, "the replayed receipt did not reach the webhook: {replay}\n{logs}");
    assert!(complete, "spans missing: {spans:#?}\n{logs}");
    // Both webhook calls, the refused one and the replayed one, carry the trace.
    for call in receiver.calls() {
        let header = traceparent(&call);
        assert_eq!(header.get(3..35), Some(trace_id.as_str()), "webhook traceparent {header:?}");
    }
    assert!(spans.iter().all(|s| s.trace_id == trace_id), "a span outside the trace: {spans:#?}");

    let park = spans
        .iter()
        .find(|s| s.kind == 4 && s.attribute("messaging.destination.name") == Some(parked_queue.as_str()))
        .unwrap_or_else(|| panic!("no park publish span: {spans:#?}"));
    let deliveries: Vec<&CollectedSpan> =
        spans.iter().filter(|s| s.service == "dlr-worker" && s.kind == 5).collect();
    assert_eq!(deliveries.len(), 2, "the first delivery and the replayed one: {spans:#?}");
    let replayed = deliveries
        .iter()
        .find(|s| s.parent_span_id == park.span_id)
        .unwrap_or_else(|| panic!("the replayed delivery does not continue the park publish: {spans:#?}"));
    assert_eq!(replayed.attribute("dlr.attempt"), Some("1"), "a replay starts a fresh attempt count");
    assert!(
        spans.iter().any(|s| s.span_id == park.parent_span_id),
        "the park publish is a step of the first delivery, exported too: {park:#?}"
    );
}
