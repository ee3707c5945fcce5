//! Routing: each outcome reaches the handlers it is routed to, republished and posted.

use super::*;

/// Delivered, failed and pending receipts reach the handlers their outcome
/// is routed to: each is republished with `<outcome>.<provider>.<status>`,
/// and delivered and failed ones are posted, signed, to their own URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outcome_reaches_its_handlers() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let delivered_receiver = Receiver::start(Script::Ok).await;
    let failed_receiver = Receiver::start(Script::Ok).await;
    let secret = new_secret();
    let mut config = app.worker_config();
    config.route_delivered = "amqp,http".to_owned();
    config.route_failed = "amqp,http".to_owned();
    config.route_pending = "amqp".to_owned();
    config.http_url_delivered = Some(url(&delivered_receiver.url("/hooks/delivered")));
    config.http_url_failed = Some(url(&failed_receiver.url("/hooks/failed")));
    config.http_secret = Some(secret.clone().into());
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let capture = app.capture().await;

    let delivered = post_receipt(&ingest, "ROUTE-D", "delivered").await;
    let failed = post_receipt(&ingest, "ROUTE-F", "expired").await;
    let pending = post_receipt(&ingest, "ROUTE-P", "accepted").await;
    assert_eq!(
        [delivered.outcome.as_str(), failed.outcome.as_str(), pending.outcome.as_str()],
        ["delivered", "failed", "pending"]
    );

    // amqp: one confirmed, persistent copy per event, keyed by outcome.provider.status.
    let copies = broker.take(&capture, 3, WITHIN).await;
    let by_key: BTreeMap<String, &BasicGetMessage> =
        copies.iter().map(|m| (m.delivery.routing_key.as_str().to_owned(), m)).collect();
    let expected = [
        ("delivered.vonage-sms.delivered", &delivered.event_id, "ROUTE-D"),
        ("failed.vonage-sms.expired", &failed.event_id, "ROUTE-F"),
        ("pending.vonage-sms.accepted", &pending.event_id, "ROUTE-P"),
    ];
    assert_eq!(by_key.keys().map(String::as_str).collect::<Vec<_>>(), expected.map(|e| e.0).to_vec());
    for (key, event_id, message_id) in expected {
        let copy = by_key[key];
        let event = ReceiptEvent::from_json(&copy.delivery.data).expect("republished body is an event");
        assert_eq!(event.event_id.as_str(), event_id, "{key}");
        assert_eq!(event.message_id.as_str(), message_id, "{key}");
        let properties = &copy.delivery.properties;
        assert_eq!(properties.delivery_mode(), &Some(2), "{key} is persistent");
        assert_eq!(properties.message_id().as_ref().map(|m| m.as_str()), Some(event_id.as_str()));
        assert_eq!(properties.content_type().as_ref().map(|m| m.as_str()), Some("application/json"));
    }

    // http: each routed outcome posted once, to its own URL, signed.
    assert!(
        eventually(WITHIN, async || delivered_receiver.calls().len() == 1
            && failed_receiver.calls().len() == 1)
        .await,
        "delivered and failed events are posted"
    );
    for (receiver, accepted, outcome, status) in [
        (&delivered_receiver, &delivered, dlr_shared::Outcome::Delivered, "delivered"),
        (&failed_receiver, &failed, dlr_shared::Outcome::Failed, "expired"),
    ] {
        let event = verified_event(&receiver.calls()[0], &secret);
        assert_eq!(event.event_id.as_str(), accepted.event_id);
        assert_eq!(event.outcome, outcome);
        assert_eq!(event.status, status);
    }
    // Pending is routed to amqp only: its copy above was its last handler, so
    // no late call can arrive after these counts.
    assert!(eventually(WITHIN, async || handler_results(&worker, "http", "ok").await == 2.0).await);
    assert_eq!(handler_results(&worker, "amqp", "ok").await, 3.0);
    assert_eq!(delivered_receiver.calls().len() + failed_receiver.calls().len(), 2, "pending is not posted");
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert_eq!(broker.queue_depth(&topology.parked_queue).await, 0);

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}
