//! The status store, and what crashes and broker outages must not change: nothing lost,
//! nothing stored twice, consuming resumes.

use super::*;

/// A late intermediate status never replaces a final one, a final one does
/// replace an intermediate one, and a duplicate event is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_store_keeps_final_statuses_and_stores_duplicates_once() {
    let app = TestApp::new().await;
    let db = app.create_database().await;
    let mut config = app.worker_config();
    config.route_delivered = "postgres".to_owned();
    config.route_failed = "postgres".to_owned();
    config.route_pending = "postgres".to_owned();
    config.database_url = Some(db.url.clone().into());
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let pool = db.pool().await;
    let status_of = async |message_id: &str| -> Option<(String, String, String)> {
        sqlx::query_as("SELECT outcome, status, event_id FROM message_status WHERE provider = 'vonage-sms' AND message_id = $1")
            .bind(message_id)
            .fetch_optional(&pool)
            .await
            .expect("status query")
    };
    let stored = async |ok: f64| {
        eventually(WITHIN, async || handler_results(&worker, "postgres", "ok").await == ok).await
    };

    // delivered, then a late accepted: delivered stays.
    let delivered = post_receipt(&ingest, "ORDER-A", "delivered").await;
    assert!(stored(1.0).await);
    let late = post_receipt(&ingest, "ORDER-A", "accepted").await;
    assert_ne!(late.event_id, delivered.event_id);
    assert!(stored(2.0).await);
    assert_eq!(
        status_of("ORDER-A").await,
        Some(("delivered".to_owned(), "delivered".to_owned(), delivered.event_id.clone())),
        "a late intermediate status does not overwrite a final one"
    );

    // accepted, then delivered: progress is recorded.
    post_receipt(&ingest, "ORDER-B", "accepted").await;
    assert!(stored(3.0).await);
    let progress = post_receipt(&ingest, "ORDER-B", "delivered").await;
    assert!(stored(4.0).await);
    assert_eq!(
        status_of("ORDER-B").await,
        Some(("delivered".to_owned(), "delivered".to_owned(), progress.event_id.clone()))
    );

    // The same receipt twice (a provider retry): one event id, one history row.
    let first = post_receipt(&ingest, "DUP-C", "delivered").await;
    let second = post_receipt(&ingest, "DUP-C", "delivered").await;
    assert_eq!(first.event_id, second.event_id, "ingest derives the same event id");
    assert!(stored(6.0).await, "both copies are handled successfully");
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM receipt_events WHERE event_id = $1")
        .bind(&first.event_id)
        .fetch_one(&pool)
        .await
        .expect("history query");
    assert_eq!(history, 1, "a duplicate event leaves one history row");
    assert_eq!(count(&pool, "SELECT count(*) FROM receipt_events").await, 5);
    assert_eq!(count(&pool, "SELECT count(*) FROM message_status").await, 3);
    assert_eq!(handler_results(&worker, "postgres", "transient").await, 0.0);
    assert_eq!(handler_results(&worker, "postgres", "permanent").await, 0.0);

    pool.close().await;
    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------
// Crashes and broker outages
// ---------------------------------------------------------------------------

/// Worker A stores its whole prefetch window and is cut off from the broker
/// before acking any of it (its HTTP step hangs): the broker's view of a
/// kill -9 mid-batch. Worker B then gets everything, including the events
/// A had already stored, and the store ends with exactly one row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing_and_stores_nothing_twice() {
    const BATCH: usize = 200;
    const PREFETCH: u16 = 10;
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let db = app.create_database().await;
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let pool = db.pool().await;

    // The whole batch waits in the queue before any worker starts.
    let statuses = ["delivered", "expired", "accepted"];
    let ids: Vec<String> = (0..BATCH).map(|i| format!("KILL-{i:04}")).collect();
    let event_ids: HashSet<String> = futures_util::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| post_receipt(&ingest, id, statuses[i % 3]))
        .buffer_unordered(16)
        .map(|accepted| accepted.event_id)
        .collect()
        .await;
    assert_eq!(event_ids.len(), BATCH);

    // Worker A, through a proxy we can cut; its HTTP step never returns.
    let (hole, hole_task) = black_hole().await;
    let mut proxy = BrokerProxy::reserve(broker_addr()).await;
    proxy.start().await;
    let mut config_a = http_config(&app, "postgres,http", &format!("http://{hole}/hook"));
    config_a.broker.url = proxy.amqp_url().into();
    config_a.database_url = Some(db.url.clone().into());
    config_a.prefetch = PREFETCH;
    config_a.http_timeout = Duration::from_secs(120);
    config_a.drain_timeout = Duration::from_millis(500);
    let worker_a = app.start_worker(config_a.clone(), WITHIN).await;
    assert!(
        eventually(WITHIN, async || count(&pool, "SELECT count(*) FROM receipt_events").await
            == i64::from(PREFETCH))
        .await,
        "worker A stores its prefetch window"
    );

    proxy.cut().await;
    let client = reqwest::Client::new();
    let readyz = format!("http://{}/readyz", worker_a.addr);
    assert!(
        eventually(WITHIN, async || client.get(&readyz).send().await.is_ok_and(|r| r.status() == 503)).await,
        "worker A reports not ready while cut off"
    );
    worker_a.stop().await;

    // Worker B, directly on the broker, with a working receiver.
    let receiver = Receiver::start(Script::Ok).await;
    let mut config_b = http_config(&app, "postgres,http", &receiver.url("/hook"));
    config_b.database_url = Some(db.url.clone().into());
    let worker_b = app.start_worker(config_b.clone(), WITHIN).await;
    assert!(
        eventually(WITHIN, async || handler_results(&worker_b, "http", "ok").await == BATCH as f64).await,
        "worker B handles the whole batch"
    );
    assert!(eventually(WITHIN, async || idle(&worker_b, broker, &config_b).await).await);

    let stored_events: HashSet<String> = sqlx::query_scalar("SELECT event_id FROM receipt_events")
        .fetch_all(&pool)
        .await
        .expect("events")
        .into_iter()
        .collect();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM receipt_events").await,
        BATCH as i64,
        "one history row per event"
    );
    assert_eq!(stored_events, event_ids, "no event lost");
    let stored_messages: HashSet<String> = sqlx::query_scalar("SELECT message_id FROM message_status")
        .fetch_all(&pool)
        .await
        .expect("statuses")
        .into_iter()
        .collect();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM message_status").await,
        BATCH as i64,
        "one status row per message"
    );
    assert_eq!(stored_messages, ids.iter().cloned().collect::<HashSet<_>>());
    // B re-ran the store for A's unacked events, and that was harmless.
    assert_eq!(
        handler_results(&worker_b, "postgres", "ok").await,
        BATCH as f64,
        "A's window was redelivered"
    );
    assert_eq!(handler_results(&worker_b, "postgres", "transient").await, 0.0);
    assert_eq!(handler_results(&worker_b, "postgres", "permanent").await, 0.0);
    let posted: HashSet<String> =
        receiver.calls().iter().map(|c| header(c, "webhook-id").to_owned()).collect();
    assert_eq!((receiver.calls().len(), posted), (BATCH, event_ids), "every event posted once");
    assert_eq!(broker.queue_depth(&topology.parked_queue).await, 0);

    hole_task.abort();
    pool.close().await;
    worker_b.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// Losing the broker connection makes the worker unready; when the broker
/// is back it consumes again without a restart, including what was
/// published in the meantime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker_and_consuming_resumes_after_an_outage() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let mut proxy = BrokerProxy::reserve(broker_addr()).await;
    proxy.start().await;
    let mut config = worker_config(topology, &proxy.amqp_url());
    config.route_delivered = "amqp".to_owned();
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let capture = app.capture().await;
    let client = reqwest::Client::new();
    let ready = async || {
        client
            .get(format!("http://{}/readyz", worker.addr))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };

    post_receipt(&ingest, "OUTAGE-1", "delivered").await;
    assert_eq!(broker.take(&capture, 1, WITHIN).await.len(), 1, "handled before the outage");

    proxy.cut().await;
    assert!(eventually(WITHIN, async || ready().await == 503).await, "not ready while disconnected");
    assert_eq!(worker_metric(&worker, "dlr_worker_broker_connected", &[]).await, 0.0);
    let during = post_receipt(&ingest, "OUTAGE-2", "delivered").await;

    proxy.start().await;
    assert!(eventually(WITHIN, async || ready().await == 200).await, "ready again once the broker is back");
    let copies = broker.take(&capture, 1, WITHIN).await;
    assert_eq!(copies.len(), 1, "the receipt published during the outage is handled");
    let event = ReceiptEvent::from_json(&copies[0].delivery.data).expect("event");
    assert_eq!(event.event_id.as_str(), during.event_id);

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// A broker that registers the worker's consumer only after the worker has
/// stopped waiting for it (a quorum queue still recovering after a
/// restart): the worker subscribes again on a new channel, and the
/// subscription it gave up on must not keep receiving messages that nobody
/// reads. Before the fix the late consume-ok registered a consumer on a
/// channel the worker had dropped but not closed, the broker sent it its
/// share of the receipts, and they stayed unacked, unhandled, until the
/// process exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_answered_too_late_does_not_strand_receipts() {
    let app = TestApp::new().await;
    let receiver = Receiver::start(Script::Ok).await;
    let mut proxy = BrokerProxy::reserve(broker_addr()).await;
    proxy.start().await;
    let mut config = http_config(&app, "http", &receiver.url("/hooks"));
    config.broker.url = proxy.amqp_url().into();
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;

    proxy.stall_on_next_consume();
    let worker = dlr_tests::spawn_worker(config).await;
    assert!(eventually(WITHIN, async || proxy.is_stalled()).await, "the worker subscribes");
    // Longer than the worker waits for a consume-ok (10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    proxy.stall(false);
    let client = reqwest::Client::new();
    let ready = async || {
        client.get(format!("http://{}/readyz", worker.addr)).send().await.is_ok_and(|r| r.status() == 200)
    };
    assert!(eventually(WITHIN, ready).await, "consuming on a second subscription");

    const RECEIPTS: usize = 40;
    for n in 0..RECEIPTS {
        post_receipt(&ingest, &format!("LATE-CONSUME-{n}"), "delivered").await;
    }
    let delivered = async || {
        let ids: HashSet<String> = receiver
            .calls()
            .iter()
            .filter_map(|call| serde_json::from_slice::<serde_json::Value>(&call.body).ok())
            .filter_map(|event| event["message_id"].as_str().map(str::to_owned))
            .collect();
        ids.len() == RECEIPTS
    };
    let all = eventually(WITHIN, delivered).await;
    let stranded = app.broker.queue_depth(&app.topology.queue).await;
    assert!(
        all,
        "every receipt is handled; {} delivered over HTTP, {stranded} ready in the queue",
        receiver.calls().len()
    );

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}
