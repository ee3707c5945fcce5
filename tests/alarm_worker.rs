//! The worker during a broker resource alarm.
//!
//! A memory alarm makes RabbitMQ block every publishing connection, so the
//! worker can neither republish events nor schedule retries. It must wait
//! for the broker instead of nacking deliveries back at full speed (which
//! re-runs handlers and dead-letters events to the parking lot without
//! reasons once the delivery limit is spent).
//!
//! These tests set an alarm on the machine's broker, which every other test
//! shares: they are `#[ignore]`d and `deploy/test.sh` runs them alone
//! (`cargo test -- --ignored --test-threads=1`). The alarm is always lifted,
//! also when an assertion fails. They can run on a node of the local
//! cluster instead, leaving the machine's broker alone:
//! `AMQP_URL=amqp://guest:guest@127.0.0.1:5701/%2f DLR_RABBITMQCTL="bash deploy/cluster.sh ctl 1"`.

use dlr_tests::{MemoryAlarm, TestApp, eventually, metric_value, vonage_form};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "alters the machine's broker: deploy/test.sh runs it alone"]
async fn a_blocked_broker_pauses_the_worker_instead_of_spinning() {
    const EVENTS: usize = 10;
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    for n in 0..EVENTS {
        let response = ingest.post_vonage_form(&vonage_form(&format!("ALARM-{n}"), "delivered")).await;
        assert_eq!(response.status().as_u16(), 200);
    }
    let mut config = app.worker_config();
    config.route_delivered = "amqp".to_owned();
    config.max_attempts = 8;

    let (worker, capture, waits, parked_during_alarm, transient_during_alarm) = {
        let _alarm = MemoryAlarm::raise();
        let worker = app.spawn_worker(config.clone()).await;
        assert!(worker.wait_ready(WITHIN).await, "the worker consumes during the alarm");
        // Bound while the alarm holds (declaring and binding are not
        // publishing, so not blocked): every event the worker republishes
        // once it is lifted has a queue to land in.
        let capture = app.capture().await;
        // The worker tried: each event's amqp publish failed and its retry
        // publish is waiting for the broker, not requeued. Without the wait
        // this never reaches EVENTS.
        let mut waits = 0.0;
        let waited = eventually(WITHIN, async || {
            waits = metric_value(&worker.metrics().await, "dlr_worker_settle_publish_waits_total", &[]);
            waits >= EVENTS as f64
        })
        .await;
        assert!(waited, "the worker's retry publishes never waited for the broker ({waits} waits)");
        let metrics = worker.metrics().await;
        let transient = metric_value(
            &metrics,
            "dlr_worker_handler_results_total",
            &[("handler", "amqp"), ("result", "transient")],
        );
        let parked = broker.queue_depth(&topology.parked_queue).await;
        (worker, capture, waits, parked, transient)
        // The alarm is lifted here.
    };

    let delivered = broker.take(&capture, EVENTS, Duration::from_secs(90)).await.len();
    let parked_after = broker.queue_depth(&topology.parked_queue).await;

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;

    assert!(waits >= EVENTS as f64);
    assert_eq!(parked_during_alarm, 0, "nothing is parked during the alarm");
    assert!(
        transient_during_alarm <= (EVENTS * 2) as f64,
        "handlers are not re-run in a loop during the alarm ({transient_during_alarm} transient failures)"
    );
    assert_eq!(parked_after, 0, "nothing is parked after the alarm");
    assert_eq!(delivered, EVENTS, "every event is republished after the alarm, once");
}
