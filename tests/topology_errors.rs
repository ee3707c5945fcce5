//! Broker objects that are not what a process expects: a queue declared
//! with other arguments is reported as such (not as an unreachable broker),
//! and a deleted exchange is declared again.

use dlr_tests::binaries::run_until;
use dlr_tests::{TestBroker, amqp_url, ingest_config, spawn_ingest, unique_topology, vonage_form};
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use std::time::Duration;

#[tokio::test]
async fn a_queue_with_other_arguments_is_named_with_the_argument_and_what_to_do() {
    let topology = unique_topology();
    let broker = TestBroker::connect().await;
    // The queues exist with the default delivery limit...
    let ingest = spawn_ingest(ingest_config(&topology, &amqp_url())).await;
    let declared = ingest.wait_ready(Duration::from_secs(10)).await;
    ingest.stop().await;

    // ...and a second ingest is configured with another one.
    let url = amqp_url();
    let quarantine_max = topology.quarantine_max_length.to_string();
    let env = [
        ("AMQP_URL", url.as_str()),
        ("AMQP_EXCHANGE", topology.exchange.as_str()),
        ("AMQP_QUEUE", topology.queue.as_str()),
        ("AMQP_PARKED_QUEUE", topology.parked_queue.as_str()),
        ("AMQP_QUARANTINE_QUEUE", topology.quarantine_queue.as_str()),
        ("AMQP_QUARANTINE_MAX_LENGTH", quarantine_max.as_str()),
        ("AMQP_DELIVERY_LIMIT", "5"),
        ("INGEST_ADDR", "127.0.0.1:0"),
        ("LOG_FORMAT", "text"),
    ];
    let logs = run_until("ingest", &env, "Changing queue arguments", Duration::from_secs(10)).await;
    broker.cleanup(&topology, &[], &[]).await;

    assert!(declared, "the first ingest never became ready");
    let line = logs.lines().find(|l| l.contains("exists with other arguments")).unwrap_or_default();
    assert!(line.contains(&topology.queue), "the queue is not named: {logs}");
    assert!(line.contains("x-delivery-limit"), "the differing argument is not named: {logs}");
    assert!(
        line.contains("AMQP_DELIVERY_LIMIT") && line.contains("Changing queue arguments"),
        "no advice: {logs}"
    );
    assert!(!logs.contains("cannot reach the broker"), "reported as unreachable: {logs}");
    assert_eq!(logs.matches("exists with other arguments").count(), 1, "repeated at retry speed: {logs}");
}

#[tokio::test]
async fn a_deleted_exchange_is_declared_again_on_the_next_publish() {
    let topology = unique_topology();
    let broker = TestBroker::connect().await;
    let ingest = spawn_ingest(ingest_config(&topology, &amqp_url())).await;
    assert!(ingest.wait_ready(Duration::from_secs(10)).await, "ingest never became ready");
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
    let cleanup = TestBroker::connect().await;
    cleanup.cleanup(&topology, &[], &[]).await;

    assert_eq!(first, 200);
    assert_eq!(
        statuses.last(),
        Some(&200),
        "never accepted again after the exchange was deleted: {statuses:?}"
    );
    assert!(statuses.len() <= 8, "took {} attempts: {statuses:?}", statuses.len());
    assert!(exists, "the exchange was not declared again");
}
