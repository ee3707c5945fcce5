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
    let requests = metric_value(
        &metrics,
        "dlr_ingest_http_requests_total",
        &[("route", "/dlr/vonage"), ("status", "405")],
    );
    assert_eq!(requests, 2.0, "{metrics}");
    let rejected: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("dlr_ingest_receipts_rejected_total{") && l.contains("method_not_allowed"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(rejected, 0.0, "{metrics}");
}
