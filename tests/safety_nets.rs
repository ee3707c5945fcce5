//! The broker-side safety nets the README promises, against the real
//! broker: what holds when our own code cannot help any more.
//!
//! - A receipt that crashes every worker that takes it (each crash returns
//!   it to the queue unacked) is dead-lettered to the parking lot once its
//!   delivery count passes `AMQP_DELIVERY_LIMIT`, instead of looping for
//!   ever (RabbitMQ, quorum queues: "Poison Message Handling").
//! - The quarantine holds at most `AMQP_QUARANTINE_MAX_LENGTH` copies and
//!   drops the oldest first (`x-overflow: drop-head`).

use dlr_ingest::providers::vonage_sms::signature::SigMethod;
use dlr_ingest::signature::SignatureMode;
use dlr_shared::ReceiptEvent;
use dlr_shared::quarantine::QuarantinedRequest;
use dlr_tests::{TestApp, unique_topology, vonage_form};
use lapin::options::BasicGetOptions;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_that_crashes_every_worker_ends_in_the_parking_lot() {
    const LIMIT: u32 = 3;
    let app =
        TestApp::with_topology(dlr_shared::amqp::Topology { delivery_limit: LIMIT, ..unique_topology() })
            .await;
    let (topology, broker) = (&app.topology, &app.broker);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let response = ingest.post_vonage_form(&vonage_form("0E00000000000001", "delivered")).await;
    assert_eq!(response.status(), 200);
    ingest.stop().await;

    // Each "worker" takes the receipt and dies before acking: its channel
    // closes and the broker returns the message, counting the delivery.
    let mut deliveries = 0;
    let mut crashed_on = None;
    for _ in 0..LIMIT + 5 {
        let channel = broker.channel_for_probe().await.expect("a channel");
        let got = channel
            .basic_get(topology.queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .expect("basic.get");
        let Some(message) = got else { break };
        deliveries += 1;
        crashed_on = Some(message.delivery.data.clone());
        channel.close(200, "worker crashed".into()).await.expect("close");
    }
    let parked = broker.take(&topology.parked_queue, 1, WITHIN).await;
    let left = broker.queue_depth(&topology.queue).await;
    app.cleanup().await;

    // Dead-lettered when returned more times than the limit: the first
    // delivery plus LIMIT redeliveries.
    assert_eq!(deliveries, LIMIT + 1, "delivered {deliveries} times with a delivery limit of {LIMIT}");
    assert_eq!(left, 0, "the receipt left the receipts queue");
    assert_eq!(parked.len(), 1, "the receipt is in the parking lot");
    assert_eq!(Some(parked[0].delivery.data.clone()), crashed_on, "the same receipt, unchanged");
    let event = ReceiptEvent::from_json(&parked[0].delivery.data).expect("a receipt event");
    assert_eq!(event.message_id.as_str(), "0E00000000000001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_quarantine_drops_its_oldest_copy() {
    const BOUND: u32 = 3;
    let app = TestApp::with_topology(dlr_shared::amqp::Topology {
        quarantine_max_length: BOUND,
        ..unique_topology()
    })
    .await;
    let (topology, broker) = (&app.topology, &app.broker);
    // Signatures enforced, receipts sent with a wrong signature: each is
    // refused and a copy of the request goes to the quarantine.
    let mut config = app.ingest_config();
    config.providers.vonage_sms.mode = Some(SignatureMode::Enforce);
    config.providers.vonage_sms.method = SigMethod::Md5Hash;
    config.providers.vonage_sms.secret = Some("the-secret".to_owned().into());
    let ingest = app.start_ingest(config, WITHIN).await;
    let ids: Vec<String> = (0..=BOUND).map(|n| format!("0F0000000000000{n}")).collect();
    for id in &ids {
        // One at a time, so the copies arrive in this order.
        // A well-formed signature made with the wrong secret: copied (an unsigned one is not).
        let now = chrono::Utc::now().timestamp();
        let form = format!("{}&timestamp={now}&sig={}", vonage_form(id, "delivered"), "0".repeat(32));
        let status = ingest.post_vonage_form(&form).await.status();
        assert_eq!(status, 401, "{id} refused for its wrong signature");
    }
    let copies = broker.drain(&topology.quarantine_queue, Duration::from_millis(500)).await;
    ingest.stop().await;
    app.cleanup().await;

    let bodies: Vec<String> = copies
        .iter()
        .map(|c| QuarantinedRequest::from_json(&c.delivery.data).expect("a quarantine copy"))
        .map(|copy| String::from_utf8_lossy(&copy.request.body).into_owned())
        .collect();
    let holding: Vec<&String> =
        ids.iter().filter(|id| bodies.iter().any(|b| b.contains(id.as_str()))).collect();
    assert_eq!(copies.len(), BOUND as usize, "the quarantine holds its bound");
    assert_eq!(holding, ids[1..].iter().collect::<Vec<_>>(), "the oldest copy was dropped, the newest kept");
}
