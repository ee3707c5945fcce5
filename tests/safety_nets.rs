//! The broker-side safety nets the README promises, against the real
//! broker: what holds when our own code cannot help any more.
//!
//! - A receipt that crashes every worker that takes it (each crash returns
//!   it to the queue unacked) is dead-lettered to the parking lot once its
//!   delivery count passes `AMQP_DELIVERY_LIMIT`, instead of looping for
//!   ever (RabbitMQ, quorum queues: "Poison Message Handling").
//! - The quarantine holds at most `AMQP_QUARANTINE_MAX_LENGTH` copies and
//!   `AMQP_QUARANTINE_MAX_BYTES` bytes of bodies, and drops the oldest
//!   first (`x-overflow: drop-head`); a quarantine created before the byte
//!   bound existed is used as it is, and an operator policy bounds it.

use dlr_ingest::providers::vonage_sms::signature::SigMethod;
use dlr_ingest::signature::SignatureMode;
use dlr_shared::ReceiptEvent;
use dlr_shared::quarantine::QuarantinedRequest;
use dlr_tests::{OperatorPolicy, TestApp, TestBroker, unique_topology, vonage_form};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
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

/// Bodies of `COPIES` messages of `COPY_BYTES` each, the n-th filled with
/// byte `b'a' + n`, published to `queue` in order.
const COPIES: u8 = 10;
const COPY_BYTES: usize = 60 * 1024;

/// Each publish is confirmed before the next, so the queue has applied its
/// bound to all of them before anything is taken.
async fn publish_large_copies(broker: &TestBroker, queue: &str) {
    let channel = broker.channel_for_probe().await.expect("a channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    for n in 0..COPIES {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &vec![b'a' + n; COPY_BYTES],
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "copy {n} confirmed");
    }
    channel.close(200, "published".into()).await.expect("close");
}

/// What is left of [`publish_large_copies`]: total body bytes and the fill byte of each copy.
async fn left_in(broker: &TestBroker, queue: &str) -> (usize, Vec<u8>) {
    let left = broker.drain(queue, Duration::from_millis(500)).await;
    (left.iter().map(|m| m.delivery.data.len()).sum(), left.iter().map(|m| m.delivery.data[0]).collect())
}

/// A quarantine that ingest creates carries `x-max-length-bytes`: ten
/// 60 KiB copies against a 256 KiB bound leave the newest four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_quarantine_is_bounded_in_bytes() {
    const BOUND: u64 = 256 * 1024;
    let app = TestApp::with_topology(dlr_shared::amqp::Topology {
        quarantine_max_bytes: BOUND,
        ..unique_topology()
    })
    .await;
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    publish_large_copies(&app.broker, &app.topology.quarantine_queue).await;
    let (bytes, kept) = left_in(&app.broker, &app.topology.quarantine_queue).await;
    ingest.stop().await;
    app.cleanup().await;
    assert!(bytes as u64 <= BOUND, "{bytes} bytes kept with a bound of {BOUND}");
    assert_eq!(kept, b"ghij".to_vec(), "the newest copies are kept, the oldest dropped");
}

/// A quarantine declared by a release without the byte bound (count bound
/// and drop-head only) is used as it is: ingest and worker start, where a
/// declaration with the new argument would fail with PRECONDITION_FAILED
/// and keep them unready. The operator policy README documents then bounds
/// that queue in bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_created_without_a_byte_bound_is_kept_and_a_policy_bounds_it() {
    const BOUND: u64 = 256 * 1024;
    let app = TestApp::new().await;
    let quarantine = app.topology.quarantine_queue.clone();
    let mut previous_release = FieldTable::default();
    previous_release.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    previous_release.insert("x-max-length".into(), AMQPValue::LongInt(100));
    previous_release.insert("x-overflow".into(), AMQPValue::LongString("drop-head".into()));
    app.broker
        .channel
        .queue_declare(
            quarantine.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            previous_release,
        )
        .await
        .expect("the quarantine as the previous release declared it");
    publish_large_copies(&app.broker, &quarantine).await;

    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(app.worker_config(), WITHIN).await;
    assert_eq!(app.broker.queue_depth(&quarantine).await, u32::from(COPIES), "the existing copies are kept");

    let policy = OperatorPolicy::on_queue(&quarantine, &format!(r#"{{"max-length-bytes":{BOUND}}}"#));
    // A policy reaches the queue asynchronously (slowly on a loaded
    // machine): wait until it trimmed what was there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut depth = app.broker.queue_depth(&quarantine).await;
    while depth > 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        depth = app.broker.queue_depth(&quarantine).await;
    }
    assert_eq!(depth, 4, "the policy trimmed the existing copies to its bound");
    publish_large_copies(&app.broker, &quarantine).await;
    let (bytes, kept) = left_in(&app.broker, &quarantine).await;
    drop(policy);
    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
    assert!(bytes as u64 <= BOUND, "{bytes} bytes kept under a policy bound of {BOUND}");
    assert_eq!(kept, b"ghij".to_vec(), "the newest copies are kept, the oldest dropped");
}
