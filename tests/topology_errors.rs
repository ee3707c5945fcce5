//! Broker objects that are not what a process expects: a queue declared
//! with other arguments is reported as such (not as an unreachable broker),
//! and a deleted exchange is declared again.

use dlr_tests::binaries::run_until;
use dlr_tests::{TestApp, vonage_form};
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use std::time::Duration;

#[tokio::test]
async fn a_queue_with_other_arguments_is_named_with_the_argument_and_what_to_do() {
    let app = TestApp::new().await;
    let topology = &app.topology;
    // The queues exist with the default delivery limit...
    let ingest = app.spawn_ingest(app.ingest_config()).await;
    let declared = ingest.wait_ready(Duration::from_secs(10)).await;
    ingest.stop().await;

    // ...and a second ingest is configured with another one.
    let mut env = app.topology_env();
    env.extend([
        ("AMQP_DELIVERY_LIMIT", "5".to_owned()),
        ("INGEST_ADDR", "127.0.0.1:0".to_owned()),
        ("LOG_FORMAT", "text".to_owned()),
        // Each retry at debug: shows that it went on retrying meanwhile.
        ("RUST_LOG", "info,dlr_shared::amqp::connection=debug".to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Watched for 6 s, not stopped at the first line: the supervisor's
    // backoff (0.1 s doubling to 2 s) retries about 6 times in that time,
    // so a message printed per attempt would show up several times.
    let logs = run_until("ingest", &env, "never printed", Duration::from_secs(6)).await;
    app.cleanup().await;

    assert!(declared, "the first ingest never became ready");
    let line = logs.lines().find(|l| l.contains("exists with other arguments")).unwrap_or_default();
    assert!(line.contains(&topology.queue), "the queue is not named: {logs}");
    assert!(line.contains("x-delivery-limit"), "the differing argument is not named: {logs}");
    assert!(
        line.contains("AMQP_DELIVERY_LIMIT") && line.contains("Changing queue arguments"),
        "no advice: {logs}"
    );
    assert!(!logs.contains("cannot reach the broker"), "reported as unreachable: {logs}");
    let attempts = logs.matches("broker connection or topology set-up failed").count();
    assert!(attempts >= 4, "the declaration was retried meanwhile ({attempts} attempts): {logs}");
    let told =
        logs.lines().filter(|l| l.contains("exists with other arguments") && !l.contains("DEBUG")).count();
    assert_eq!(told, 1, "told once for {attempts} attempts, not at retry speed: {logs}");
}

#[tokio::test]
async fn a_deleted_exchange_is_declared_again_on_the_next_publish() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let ingest = app.start_ingest(app.ingest_config(), Duration::from_secs(10)).await;
    let first = ingest.post_vonage_form(&vonage_form("0C000000AAAA0001", "delivered")).await.status();

    broker
        .channel
        .exchange_delete(topology.exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("exchange deleted");
    let mut statuses = Vec::new();
    for i in 0..40 {
        let status =
            ingest.post_vonage_form(&vonage_form(&format!("0C000000BBBB{i:04}"), "delivered")).await.status();
        statuses.push(status.as_u16());
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let exists = broker
        .channel
        .exchange_declare(
            topology.exchange.as_str().into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .is_ok();
    ingest.stop().await;
    app.cleanup().await;

    assert_eq!(first, 200);
    assert_eq!(
        statuses.last(),
        Some(&200),
        "never accepted again after the exchange was deleted: {statuses:?}"
    );
    assert!(statuses.len() <= 8, "took {} attempts: {statuses:?}", statuses.len());
    assert!(exists, "the exchange was not declared again");
}
