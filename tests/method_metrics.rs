//! A 405 is counted by one rule whatever produced it (the router for PUT,
//! the handler for HEAD): in `dlr_ingest_http_requests_total`, never as a
//! rejected receipt.

use dlr_tests::{SEED_FORM, TestApp, metric_value};
use std::time::Duration;

#[tokio::test]
async fn every_405_is_counted_as_a_request_and_none_as_a_rejected_receipt() {
    let app = TestApp::new().await;
    let ingest = app.spawn_ingest(app.ingest_config()).await;
    let ready = ingest.wait_ready(Duration::from_secs(10)).await;
    let url = format!("{}/dlr/vonage?{SEED_FORM}", ingest.base_url);
    let head = ingest.client.head(&url).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
    let put = ingest.client.put(&url).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
    let metrics = ingest.metrics().await;
    ingest.stop().await;
    app.cleanup().await;

    assert!(ready, "ingest never became ready");
    assert_eq!((head, put), (405, 405));
    // Both 405s under the route, and nothing else there: every status of
    // the route is summed, so a 405 counted twice, or also as a 200/4xx,
    // fails as well as one not counted.
    let as_405 = metric_value(
        &metrics,
        "dlr_ingest_http_requests_total",
        &[("route", "/dlr/vonage"), ("status", "405")],
    );
    assert_eq!(as_405, 2.0, "{metrics}");
    let on_route = metric_value(&metrics, "dlr_ingest_http_requests_total", &[("route", "/dlr/vonage")]);
    assert_eq!(on_route, 2.0, "counted under another status too: {metrics}");
    // No rejected receipt under any provider or reason, not only
    // `method_not_allowed`.
    let rejected = metric_value(&metrics, "dlr_ingest_receipts_rejected_total", &[]);
    assert_eq!(rejected, 0.0, "{metrics}");
}
