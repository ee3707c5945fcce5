//! `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`: both binaries export over OTLP/gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export` on
//! HTTP/2), and the spans of one receipt, ingest → queue → worker →
//! webhook, arrive at a gRPC collector as one trace.

use super::{Pipeline, WITHIN, find, traceparent};
use dlr_tests::otlp::{CollectedSpan, Collector};
use dlr_tests::receiver::{Receiver, Script};
use dlr_tests::{TestApp, eventually};

#[tokio::test]
async fn over_grpc_one_receipt_is_one_trace_across_ingest_and_worker() {
    let app = TestApp::new().await;
    let collector = Collector::start_grpc().await;
    let receiver = Receiver::start(Script::Ok).await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let pipeline = Pipeline::start(&app, &receiver, "http", &otel, &[]).await;
    // No incoming traceparent: ingest starts the trace.
    let (status, _) = pipeline.post("0G000000GRPC0001", &[]).await;
    let delivered = eventually(WITHIN, async || !receiver.calls().is_empty()).await;
    let complete = eventually(WITHIN, async || {
        let spans = collector.spans();
        !find(&spans, "dlr-worker", "http:crm").is_empty()
            && !find(&spans, "dlr-ingest", "POST /dlr/vonage").is_empty()
    })
    .await;
    let spans = collector.spans();
    let logs = pipeline.stop().await;
    app.cleanup().await;

    assert_eq!(status, 200, "{logs}");
    assert!(delivered, "the webhook was not called: {logs}");
    assert!(complete, "spans missing at the gRPC collector: {spans:#?}\n{logs}");
    let calls = receiver.calls();
    let header = calls.first().map(traceparent).unwrap_or_default();
    let trace_id = header.get(3..35).unwrap_or_default().to_owned();
    assert_eq!(trace_id.len(), 32, "the webhook carried no traceparent: {header:?}");
    assert!(spans.iter().all(|s| s.trace_id == trace_id), "a span outside the trace: {spans:#?}");

    let request = find(&spans, "dlr-ingest", "POST /dlr/vonage");
    assert_eq!(request.len(), 1, "{spans:#?}");
    assert_eq!(request[0].parent_span_id, "", "ingest started the trace: its request span is the root");
    let publish = spans
        .iter()
        .find(|s| s.service == "dlr-ingest" && s.parent_span_id == request[0].span_id && s.kind == 4)
        .expect("ingest's publish span");
    let deliveries: Vec<&CollectedSpan> =
        spans.iter().filter(|s| s.service == "dlr-worker" && s.kind == 5).collect();
    assert_eq!(deliveries.len(), 1, "one delivery: {spans:#?}");
    assert_eq!(deliveries[0].parent_span_id, publish.span_id, "the delivery continues ingest's publish");
    let parent = header.get(36..52).unwrap_or_default();
    let call = find(&spans, "dlr-worker", "http:crm");
    assert!(call.iter().any(|s| s.span_id == parent && s.kind == 3), "no client span {parent}: {spans:#?}");
}
