//! [`OneIngest`]: one ingest on its own topology, with what the black-box
//! tests of the webhook routes (signatures, providers, forgeries) ask of it.

use crate::{TestApp, TestIngest, amqp_url, ingest_config, metric_value};
use dlr_shared::ReceiptEvent;
use serde_json::Value;
use std::time::Duration;

/// How long a test waits for ingest to become ready or a receipt to arrive.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits to see that nothing more arrives.
pub const SETTLE: Duration = Duration::from_millis(300);

/// One ingest on its own topology ([`TestApp`], reached through `Deref`).
pub struct OneIngest {
    /// The test's topology, broker connection and clean-up.
    pub app: TestApp,
    /// The running ingest.
    pub ingest: TestIngest,
}

impl std::ops::Deref for OneIngest {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl OneIngest {
    /// Starts ingest with the default configuration (no provider served
    /// unless `configure` says so) on `amqp_url()`.
    pub async fn start(configure: impl FnOnce(&mut dlr_ingest::Config)) -> Self {
        Self::start_at(&amqp_url(), configure).await
    }

    /// [`OneIngest::start`] against the broker at `amqp`.
    pub async fn start_at(amqp: &str, configure: impl FnOnce(&mut dlr_ingest::Config)) -> Self {
        Self::start_with(TestApp::new().await, amqp, configure).await
    }

    /// [`OneIngest::start`] on `topology` (a unique one, adjusted: a
    /// quarantine bound, say).
    pub async fn start_on(
        topology: dlr_shared::amqp::Topology,
        configure: impl FnOnce(&mut dlr_ingest::Config),
    ) -> Self {
        Self::start_with(TestApp::with_topology(topology).await, &amqp_url(), configure).await
    }

    async fn start_with(app: TestApp, amqp: &str, configure: impl FnOnce(&mut dlr_ingest::Config)) -> Self {
        let mut config = ingest_config(&app.topology, amqp);
        configure(&mut config);
        let ingest = app.start_ingest(config, WAIT).await;
        Self { app, ingest }
    }

    /// A POST of `body` as `content_type` to `path`.
    pub fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::RequestBuilder {
        self.ingest
            .client
            .post(format!("{}{path}", self.ingest.base_url))
            .header("content-type", content_type)
            .body(body)
    }

    /// Sends `request`: status code and JSON body (Null when the body is not
    /// JSON). A 503's reason is only in the metrics, so it is printed.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        if status == 503 {
            let metrics = self.ingest.metrics().await;
            let failures: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("dlr_ingest_publish_failures_total{") && !l.ends_with(" 0"))
                .collect();
            eprintln!("503 from ingest; publish failures so far: {failures:?}");
        }
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Takes exactly one published receipt event, failing if none arrives.
    pub async fn next_event(&self) -> ReceiptEvent {
        let mut messages = self.broker.take(&self.topology.queue, 1, WAIT).await;
        let message = messages.pop().expect("a receipt was published to the receipts queue");
        ReceiptEvent::from_json(&message.delivery.data).expect("published body is a ReceiptEvent")
    }

    /// Takes `count` published events (and asserts no more follow).
    pub async fn events(&self, count: usize) -> Vec<ReceiptEvent> {
        self.app.receipts(count, WAIT, SETTLE).await
    }

    /// Asserts the receipts queue stays empty.
    pub async fn assert_no_receipts(&self) {
        self.app.assert_no_receipts(SETTLE).await;
    }

    /// Takes every quarantined copy, parsed as JSON.
    pub async fn quarantined(&self) -> Vec<Value> {
        self.app.quarantined(SETTLE).await
    }

    /// A metric sample sum from `/metrics`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.ingest.metrics().await, name, labels)
    }

    /// Stops ingest and removes the topology.
    pub async fn finish(self) {
        self.ingest.stop().await;
        self.app.cleanup().await;
    }
}
