//! A collector that is down changes no answer: every receipt is still
//! answered 200 and delivered, and the spans that could not leave are
//! counted in `dlr_trace_spans_dropped_total`. Two kinds of down: nothing
//! listens (connections refused, exports fail at once) and a collector that
//! accepts and never answers (exports wait for their timeout while the
//! queue fills). Ingest exports over HTTP, the worker over gRPC, so both
//! exporters are covered by each.
//!
//! How long answers take is printed, not asserted: timing belongs to the
//! benchmarks, where it is measured against export off.

use super::{Pipeline, WITHIN};
use dlr_tests::otlp::Silent;
use dlr_tests::receiver::{Receiver, Script};
use dlr_tests::{TestApp, eventually, metric_value};
use std::time::Duration;

/// Sends `sent` receipts through a pipeline exporting to `endpoint`; asserts
/// every answer is 200, every receipt reaches the webhook, and each binary
/// counts dropped spans with `reason`.
async fn nothing_changes_with_the_collector_at(app: &TestApp, endpoint: String, reason: &str, prefix: &str) {
    let receiver = Receiver::start(Script::Ok).await;
    // A small queue, so that a stuck exporter drops (and counts) spans
    // within the test.
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "8".to_owned()),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4".to_owned()),
    ];
    let grpc = [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned())];
    let pipeline = Pipeline::start(app, &receiver, "http", &otel, &grpc).await;
    let sent = 40;
    let mut slowest = Duration::ZERO;
    let mut statuses = Vec::new();
    for i in 0..sent {
        let (status, took) = pipeline.post(&format!("{prefix}{i:02}DOWN"), &[]).await;
        statuses.push(status);
        slowest = slowest.max(took);
    }
    let delivered = eventually(WITHIN, async || receiver.calls().len() >= sent).await;
    // Failed exports are counted when they fail, after the batch delay.
    let dropped = |text: &str| metric_value(text, "dlr_trace_spans_dropped_total", &[("reason", reason)]);
    let mut texts = (String::new(), String::new());
    let counted = eventually(WITHIN, async || {
        texts.0 = Pipeline::metrics(&pipeline.ingest_url).await;
        texts.1 = Pipeline::metrics(&pipeline.worker_url).await;
        dropped(&texts.0) > 0.0 && dropped(&texts.1) > 0.0
    })
    .await;
    let logs = pipeline.stop().await;

    println!("{sent} receipts, collector down ({reason}): slowest answer {slowest:?}");
    assert!(statuses.iter().all(|s| *s == 200), "answers changed: {statuses:?}\n{logs}");
    assert!(delivered, "webhooks missing: {} of {sent}\n{logs}", receiver.calls().len());
    assert!(
        counted,
        "dropped spans ({reason}) not counted: ingest {}, worker {}\n{}\n{}",
        dropped(&texts.0),
        dropped(&texts.1),
        texts.0,
        texts.1
    );
}

#[tokio::test]
async fn a_collector_that_refuses_connections_changes_no_answer() {
    let app = TestApp::new().await;
    // A port nothing listens on: every export is refused.
    let port = dlr_tests::free_port().expect("a free port");
    nothing_changes_with_the_collector_at(
        &app,
        format!("http://127.0.0.1:{port}"),
        "export_failed",
        "0F0000",
    )
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_collector_that_never_answers_changes_no_answer() {
    let app = TestApp::new().await;
    let silent = Silent::start().await;
    nothing_changes_with_the_collector_at(&app, silent.endpoint(), "queue_full", "0D0000").await;
    app.cleanup().await;
}
