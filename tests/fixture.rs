//! The fixture itself: a test that panics leaves nothing on the broker.

use dlr_shared::amqp::topology::broker_reply_code;
use dlr_tests::{TestApp, TestBroker};
use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The broker's answer to a passive declare: `NOT_FOUND` means absent,
/// success present. Anything else (no probe channel, a connection error)
/// says nothing about the object and fails the test rather than count it
/// as deleted.
fn existence(name: &str, declared: Result<(), lapin::Error>) -> bool {
    const NOT_FOUND: u16 = 404;
    match declared {
        Ok(()) => true,
        Err(error) if broker_reply_code(&error) == Some(NOT_FOUND) => false,
        Err(error) => panic!("could not tell whether {name} exists: {error}"),
    }
}

/// Whether `queue` exists (a passive declare, on a channel of its own:
/// a failed one closes the channel).
async fn queue_exists(broker: &TestBroker, queue: &str) -> bool {
    let channel = broker.channel_for_probe().await.expect("a probe channel");
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    existence(queue, channel.queue_declare(queue.into(), passive, FieldTable::default()).await.map(|_| ()))
}

/// Whether `exchange` exists.
async fn exchange_exists(broker: &TestBroker, exchange: &str) -> bool {
    let channel = broker.channel_for_probe().await.expect("a probe channel");
    let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
    let declared =
        channel.exchange_declare(exchange.into(), ExchangeKind::Direct, passive, FieldTable::default()).await;
    existence(exchange, declared)
}

#[test]
fn a_panicking_test_still_removes_its_queues_exchanges_and_apps() {
    let names: Arc<Mutex<Vec<(bool, String)>>> = Arc::default();
    let seen = names.clone();
    // A test as the harness runs it: its own runtime on its own thread,
    // panicking with ingest and a worker running.
    let panicked = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let app = TestApp::new().await;
            let _ingest = app.start_ingest(app.ingest_config(), Duration::from_secs(10)).await;
            let _worker = app.start_worker(app.worker_config(), Duration::from_secs(10)).await;
            let capture = app.capture().await;
            let topology = &app.topology;
            let mut found = seen.lock().expect("names");
            for queue in [&topology.queue, &topology.parked_queue, &topology.quarantine_queue, &capture] {
                found.push((true, queue.clone()));
            }
            found.extend(dlr_tests::retry_queues(&app.worker_config()).into_iter().map(|q| (true, q)));
            found.push((false, topology.exchange.clone()));
            found.push((false, app.events_exchange.clone()));
            drop(found);
            panic!("a failing assertion");
        });
    })
    .join()
    .is_err();
    assert!(panicked, "the test body panicked");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let broker = TestBroker::connect().await;
        let names = names.lock().expect("names").clone();
        assert!(names.len() >= 7, "the test body got as far as its panic: {names:?}");
        let mut left = Vec::new();
        for (is_queue, name) in &names {
            let exists = if *is_queue {
                queue_exists(&broker, name).await
            } else {
                exchange_exists(&broker, name).await
            };
            if exists {
                left.push(name.clone());
            }
        }
        assert!(left.is_empty(), "left on the broker after the panic: {left:?}");
    });
}
