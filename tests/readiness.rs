//! Ingest readiness: only pod-local trouble takes a pod out of the Service.
//!
//! A broker resource alarm blocks every publishing connection of the whole
//! cluster at once; if readiness followed it, every ingest pod would leave
//! the Service together and the ingress would answer its own 503 without
//! `Retry-After`. So readiness ignores a blocked connection (ingest answers
//! 503 + Retry-After itself) and tolerates a lost connection for
//! `INGEST_READINESS_BROKER_GRACE_SECONDS` before turning false.

use dlr_tests::proxy::{BrokerProxy, broker_addr};
use dlr_tests::{
    MemoryAlarm, TestApp, amqp_url, eventually, ingest_config, metric_value, unique_topology, vonage_form,
};
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_broker_outage_keeps_ingest_ready_and_answers_503() {
    let app = TestApp::new().await;
    let mut proxy = BrokerProxy::reserve(broker_addr()).await;
    proxy.start().await;
    let ingest = app.start_ingest(app.ingest_config_at(&proxy.amqp_url()), READY).await;

    proxy.cut().await;
    let response = ingest.post_vonage_form(&vonage_form("0B00000000000001", "delivered")).await;
    assert_eq!(response.status(), 503, "no broker: the receipt must not be accepted");
    assert!(response.headers().contains_key("retry-after"), "503 without Retry-After");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ingest.ready_status().await, 200, "a 1 s outage is within the default 30 s grace");

    proxy.start().await;
    let accepted = eventually(READY, async || {
        ingest.post_vonage_form(&vonage_form("0B00000000000002", "delivered")).await.status() == 200
    })
    .await;
    assert!(accepted, "receipts are accepted again once the broker is back");

    ingest.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_connection_down_past_the_grace_turns_readiness_false() {
    let app = TestApp::new().await;
    let mut proxy = BrokerProxy::reserve(broker_addr()).await;
    proxy.start().await;
    let grace = Duration::from_secs(2);
    let mut config = app.ingest_config_at(&proxy.amqp_url());
    config.readiness_broker_grace = grace;
    let ingest = app.start_ingest(config, READY).await;

    proxy.cut().await;
    let cut_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ingest.ready_status().await, 200, "still within the {grace:?} grace");
    assert!(
        eventually(Duration::from_secs(5), async || ingest.ready_status().await == 503).await,
        "/readyz must turn 503 once the connection has been down longer than the grace"
    );
    let unready_after = cut_at.elapsed();
    assert!(unready_after >= grace, "unready after {unready_after:?}, before the {grace:?} grace");

    proxy.start().await;
    assert!(ingest.wait_ready(READY).await, "ready again once the connection is back");
    assert_eq!(ingest.post_vonage_form(&vonage_form("0B00000000000003", "delivered")).await.status(), 200);

    ingest.stop().await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_zero_readiness_grace_is_refused_at_start_up() {
    let mut config = ingest_config(&unique_topology(), &amqp_url());
    config.readiness_broker_grace = Duration::ZERO;
    let error = match dlr_ingest::Application::build(config).await {
        Ok(_) => panic!("a zero grace must be refused"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("INGEST_READINESS_BROKER_GRACE_SECONDS"), "error names the variable: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "alters the machine's broker: deploy/test.sh runs it alone"]
async fn a_broker_memory_alarm_keeps_ingest_ready_and_answers_503_with_retry_after() {
    let app = TestApp::new().await;
    let mut config = app.ingest_config();
    // A blocked publish stalls until the confirm timeout: keep the alarm window short.
    config.confirm_timeout = Duration::from_secs(1);
    let ingest = app.start_ingest(config, READY).await;
    assert_eq!(ingest.post_vonage_form(&vonage_form("0C00000000000001", "delivered")).await.status(), 200);

    let alarm = MemoryAlarm::raise();
    let mut refused = 0;
    let mut ready_during_alarm = Vec::new();
    let started = Instant::now();
    for i in 0..6 {
        let response =
            ingest.post_vonage_form(&vonage_form(&format!("0C0000000000010{i}"), "delivered")).await;
        if response.status() == 503 {
            assert!(response.headers().contains_key("retry-after"), "503 without Retry-After");
            refused += 1;
        } else {
            assert_eq!(response.status(), 200, "only 200 (before the alarm took effect) or 503");
        }
        ready_during_alarm.push(ingest.ready_status().await);
    }
    let metrics = ingest.metrics().await;
    drop(alarm);
    let alarm_lasted = started.elapsed();

    assert!(refused >= 4, "the alarm must refuse receipts; refused {refused} of 6 in {alarm_lasted:?}");
    assert!(
        ready_during_alarm.iter().all(|s| *s == 200),
        "/readyz during a cluster-wide alarm: {ready_during_alarm:?} (all must be 200)"
    );
    let blocked = metric_value(&metrics, "dlr_ingest_publish_failures_total", &[("reason", "blocked")]);
    assert!(blocked >= 1.0, "refusals while blocked are counted as reason=\"blocked\" (got {blocked})");

    let accepted = eventually(Duration::from_secs(20), async || {
        ingest.post_vonage_form(&vonage_form("0C00000000000200", "delivered")).await.status() == 200
    })
    .await;
    assert!(accepted, "receipts are accepted again after the alarm");
    assert_eq!(ingest.ready_status().await, 200);

    ingest.stop().await;
    app.cleanup().await;
}
