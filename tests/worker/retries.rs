//! Retries and the parking lot: backoff until the receiver accepts, parking after the last attempt
//! or at once for a client error, bounded calls in flight, coalesced acks, replay from the parking lot.

use super::*;

/// A receiver that fails the first two calls sees three calls for the event,
/// all with the same webhook-id, and exactly one succeeds; nothing is parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_until_the_receiver_accepts() {
    const FAILURES: usize = 2;
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::FailFirst(FAILURES)).await;
    let config = http_config(&app, "http", &receiver.url("/hook"));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    let accepted = post_receipt(&ingest, "RETRY-1", "delivered").await;

    assert!(
        eventually(WITHIN, async || handler_results(&worker, "http", "ok").await == 1.0).await,
        "the event gets through after {FAILURES} failures"
    );
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    let calls = receiver.calls();
    assert_eq!(calls.len(), FAILURES + 1, "failed calls, then one success, then nothing");
    for call in &calls {
        assert_eq!(header(call, "webhook-id"), accepted.event_id);
    }
    assert_eq!(handler_results(&worker, "http", "transient").await, FAILURES as f64);
    assert_eq!(
        worker_metric(&worker, "dlr_worker_retries_scheduled_total", &[("handler", "http")]).await,
        FAILURES as f64
    );
    assert_eq!(broker.queue_depth(&topology.parked_queue).await, 0, "nothing parked");

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// A receiver that always answers 500 is called `max_attempts` times, then
/// the event is parked with reason `retries_exhausted` and the documented headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_receiver_gets_the_event_parked_after_the_last_attempt() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::Always(500)).await;
    let config = http_config(&app, "http", &receiver.url("/hook"));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    let accepted = post_receipt(&ingest, "EXHAUST-1", "failed").await;

    let parked = broker.take(&topology.parked_queue, 1, WITHIN).await;
    assert_eq!(parked.len(), 1, "the event is parked");
    let message = &parked[0];
    let headers = parked_headers(message);
    assert_eq!(headers.reason, "retries_exhausted");
    assert_eq!(headers.handler, "http");
    assert_eq!(headers.attempt, u64::from(config.max_attempts));
    assert!(headers.last_error.contains("500"), "last error names the status: {headers:?}");
    let event = ReceiptEvent::from_json(&message.delivery.data).expect("the parked body is the event");
    assert_eq!(event.event_id.as_str(), accepted.event_id);
    let properties = &message.delivery.properties;
    assert_eq!(properties.message_id().as_ref().map(|m| m.as_str()), Some(accepted.event_id.as_str()));
    assert_eq!(properties.delivery_mode(), &Some(2), "parked persistently");
    assert_eq!(
        properties.expiration(),
        &None,
        "a retry's expiration does not follow it into the parking lot"
    );

    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert_eq!(
        receiver.calls().len(),
        config.max_attempts as usize,
        "one call per attempt, none after parking"
    );
    assert_eq!(
        worker_metric(&worker, "dlr_worker_parked_total", &[("reason", "retries_exhausted")]).await,
        1.0
    );

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// A 400 cannot get better by retrying: parked after the first call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_gets_the_event_parked_at_once() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::Always(400)).await;
    let config = http_config(&app, "http", &receiver.url("/hook"));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    let accepted = post_receipt(&ingest, "REFUSED-1", "delivered").await;

    let parked = broker.take(&topology.parked_queue, 1, WITHIN).await;
    assert_eq!(parked.len(), 1, "the event is parked");
    let headers = parked_headers(&parked[0]);
    assert_eq!(headers.reason, "permanent_failure");
    assert_eq!(headers.handler, "http");
    assert_eq!(headers.attempt, 1);
    assert!(headers.last_error.contains("400"), "last error names the status: {headers:?}");
    let event = ReceiptEvent::from_json(&parked[0].delivery.data).expect("the parked body is the event");
    assert_eq!(event.event_id.as_str(), accepted.event_id);

    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert_eq!(receiver.calls().len(), 1, "no retry");
    assert_eq!(worker_metric(&worker, "dlr_worker_retries_scheduled_total", &[]).await, 0.0);

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// `WORKER_HTTP_MAX_IN_FLIGHT` caps the webhook calls a worker makes at
/// once, whatever its prefetch: 24 events waiting in the queue and a slow
/// receiver see at most (and, here, exactly) 3 calls at a time, and every
/// event still arrives. Without the cap, 20 of the 24 were called at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_calls_in_flight_stay_under_their_cap() {
    const EVENTS: usize = 24;
    let app = TestApp::new().await;
    let receiver = Receiver::start(Script::SlowOk(200)).await;
    let mut config = http_config(&app, "http", &receiver.url("/hook"));
    config.http_max_in_flight = std::num::NonZeroUsize::new(3);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    // Queued before the worker starts, so its prefetch takes them all at once.
    for n in 0..EVENTS {
        post_receipt(&ingest, &format!("CAPPED-{n}"), "delivered").await;
    }
    let worker = app.start_worker(config.clone(), WITHIN).await;

    assert!(
        eventually(WITHIN, async || handler_results(&worker, "http", "ok").await == EVENTS as f64).await,
        "every event reaches the receiver"
    );
    assert_eq!(receiver.calls().len(), EVENTS, "one call each");
    assert_eq!(receiver.max_in_flight(), 3, "calls at once");

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// Acks are coalesced (one `ack multiple` for a run of finished
/// deliveries), and none is lost doing it: a burst of events is handled
/// once each with fewer ack frames than events, and after the worker stops
/// nothing comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_acked_with_fewer_frames_than_events_and_none_comes_back() {
    const EVENTS: usize = 120;
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let mut config = app.worker_config();
    config.route_delivered = "log".into();
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    // Queued before the worker starts, so they arrive as one burst.
    for n in 0..EVENTS {
        post_receipt(&ingest, &format!("BURST-{n}"), "delivered").await;
    }
    let worker = app.start_worker(config.clone(), WITHIN).await;
    assert!(
        eventually(WITHIN, async || handler_results(&worker, "log", "ok").await == EVENTS as f64).await,
        "every event is handled"
    );
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    let frames = eventually(WITHIN, async || {
        worker_metric(&worker, "dlr_worker_settle_frames_total", &[]).await > 0.0
            && broker.queue_depth(&topology.queue).await == 0
    })
    .await;
    assert!(frames, "acks were sent");
    let metrics = worker.metrics().await;
    let multiple = metric_value(&metrics, "dlr_worker_settle_frames_total", &[("kind", "ack_multiple")]);
    let single = metric_value(&metrics, "dlr_worker_settle_frames_total", &[("kind", "ack")]);
    assert!(multiple >= 1.0, "at least one ack covers a run of deliveries");
    assert!(multiple + single < EVENTS as f64, "{multiple} + {single} ack frames for {EVENTS} events");
    assert_eq!(metric_value(&metrics, "dlr_worker_settle_frames_total", &[("kind", "nack")]), 0.0);

    // Had any delivery stayed unacked, the channel's close would put it
    // back in the queue.
    worker.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broker.queue_depth(&topology.queue).await, 0, "nothing unacked was left behind");
    ingest.stop().await;
    app.cleanup().await;
}

/// Events finished behind a stuck one are acked on their own after a
/// short hold instead of waiting for it: otherwise they would keep their
/// prefetch slots and, with all slots taken, the broker would stop
/// delivering until the stuck call ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stuck_event_does_not_hold_back_the_acks_of_the_others() {
    const EVENTS: usize = 20;
    const STUCK_MS: u64 = 6_000;
    let app = TestApp::new().await;
    let receiver = Receiver::start(Script::SlowFirst(STUCK_MS)).await;
    let mut config = http_config(&app, "http", &receiver.url("/hook"));
    config.prefetch = 4;
    config.http_timeout = Duration::from_secs(20);
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    for n in 0..EVENTS {
        post_receipt(&ingest, &format!("STUCK-{n}"), "delivered").await;
    }
    let worker = app.start_worker(config.clone(), WITHIN).await;

    // With prefetch 4, at most 3 others could finish while the stuck call
    // holds back their acks; here all of them finish while it is held.
    let others_done = eventually(Duration::from_millis(STUCK_MS / 2), async || {
        handler_results(&worker, "http", "ok").await == (EVENTS - 1) as f64
    })
    .await;
    assert!(
        others_done,
        "{} of {} other events handled while one call was stuck",
        handler_results(&worker, "http", "ok").await,
        EVENTS - 1
    );
    assert_eq!(receiver.calls().len(), EVENTS, "every event was delivered to the receiver once");
    assert!(
        eventually(WITHIN, async || handler_results(&worker, "http", "ok").await == EVENTS as f64).await,
        "the stuck call finishes too"
    );
    assert!(eventually(WITHIN, async || idle(&worker, &app.broker, &config).await).await);

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// With `WORKER_HANDLER_ORDER=concurrent`, a receiver that refuses the
/// event does not hold back the handler listed after it: the amqp copy is
/// published on the first attempt, the park records it as done, and a replay
/// once the receiver accepts runs http only. (In sequential order nothing
/// after the refused http call runs: the first assertion fails.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handlers_keep_each_others_successes() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::Always(400)).await;
    let mut config = http_config(&app, "http,amqp", &receiver.url("/hook"));
    config.handler_order = dlr_worker::config::HandlerOrder::Concurrent;
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let capture = app.capture().await;

    let accepted = post_receipt(&ingest, "CONCURRENT-1", "delivered").await;

    let copies = broker.take(&capture, 1, WITHIN).await;
    assert_eq!(copies.len(), 1, "amqp ran although http, listed first, was refused");
    // Left in the parking lot for the replay below, which proves that the
    // park recorded amqp as done: the replay runs http only.
    assert!(
        eventually(WITHIN, async || broker.queue_depth(&topology.parked_queue).await == 1).await,
        "the refused event is parked"
    );
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert_eq!(handler_results(&worker, "http", "permanent").await, 1.0);

    receiver.set_script(Script::Ok);
    let report = replay_parked(&config, None, &[], WITHIN).await.expect("replay finishes");
    assert_eq!(report.replayed, 1);
    assert!(eventually(WITHIN, async || handler_results(&worker, "http", "ok").await == 1.0).await);
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    let calls = receiver.calls();
    assert_eq!(calls.len(), 2, "one refused call, one after the replay");
    assert_eq!(header(&calls[1], "webhook-id"), accepted.event_id);
    assert_eq!(handler_results(&worker, "amqp", "ok").await, 1.0, "amqp is not run again");
    assert!(broker.take(&capture, 1, Duration::from_millis(500)).await.is_empty(), "no second copy");

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// A message that is not an event is parked as `unparseable`, and the
/// worker goes on with the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_parked_as_unparseable_and_work_goes_on() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let config = app.worker_config();
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    broker.publish_raw(&topology.queue, b"not json").await;

    let parked = broker.take(&topology.parked_queue, 1, WITHIN).await;
    assert_eq!(parked.len(), 1, "the garbage is parked");
    assert_eq!(parked[0].delivery.data, b"not json", "parked as it was");
    let headers = parked_headers(&parked[0]);
    assert_eq!(headers.reason, "unparseable");
    assert_eq!(headers.handler, "none");
    assert_eq!(headers.attempt, 1);
    assert!(!headers.last_error.is_empty());

    post_receipt(&ingest, "AFTER-GARBAGE", "delivered").await;
    assert!(
        eventually(WITHIN, async || handler_results(&worker, "log", "ok").await == 1.0).await,
        "a valid receipt after the garbage is handled"
    );
    assert!(worker.wait_ready(WITHIN).await, "still consuming");
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert_eq!(broker.queue_depth(&topology.parked_queue).await, 0, "only the garbage was parked");
    assert_eq!(worker_metric(&worker, "dlr_worker_parked_total", &[("reason", "unparseable")]).await, 1.0);

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// Parked events come back with `replay-parked` (honouring its filter and
/// limit) and are handled once the receiver has recovered; handlers that
/// had already succeeded (amqp) are not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_events_are_handled_once_the_receiver_recovers() {
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::Always(503)).await;
    let config = http_config(&app, "amqp,http", &receiver.url("/hook"));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;
    let capture = app.capture().await;

    let delivered = post_receipt(&ingest, "REPLAY-D", "delivered").await;
    let failed = post_receipt(&ingest, "REPLAY-F", "rejected").await;
    let attempts = config.max_attempts as usize;
    assert!(
        eventually(WITHIN, async || broker.queue_depth(&topology.parked_queue).await == 2).await,
        "both events are parked while the receiver is down"
    );
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert_eq!(receiver.calls().len(), 2 * attempts);

    // The receiver is back; replay only the delivered one first.
    receiver.set_script(Script::Ok);
    let filters = [("outcome", "delivered"), ("reason", "retries_exhausted")];
    let report = replay_parked(&config, Some(1), &filters, WITHIN).await.expect("replay-parked finishes");
    assert_eq!(report.replayed, 1, "{report:?}");
    assert!(eventually(WITHIN, async || handler_results(&worker, "http", "ok").await == 1.0).await);
    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    let calls = receiver.calls();
    assert_eq!(calls.len(), 2 * attempts + 1, "one more call, for the replayed event");
    assert_eq!(header(&calls[2 * attempts], "webhook-id"), delivered.event_id);

    // The other one stayed parked, untouched.
    let still_parked = broker.take(&topology.parked_queue, 1, WITHIN).await;
    assert_eq!(still_parked.len(), 1);
    let event = ReceiptEvent::from_json(&still_parked[0].delivery.data).expect("event");
    assert_eq!(event.event_id.as_str(), failed.event_id);
    let headers = parked_headers(&still_parked[0]);
    assert_eq!((headers.reason.as_str(), headers.done.as_str()), ("retries_exhausted", "amqp"));
    assert_eq!(broker.queue_depth(&topology.parked_queue).await, 0);

    // amqp succeeded before the outage and was not repeated by the replay.
    let copies = broker.drain(&capture, Duration::from_millis(200)).await;
    let mut copied: Vec<String> = copies
        .iter()
        .map(|m| ReceiptEvent::from_json(&m.delivery.data).expect("event").event_id.as_str().to_owned())
        .collect();
    copied.sort();
    let mut expected = vec![delivered.event_id.clone(), failed.event_id.clone()];
    expected.sort();
    assert_eq!(copied, expected, "one republished copy per event");

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// `replay-parked` without a limit while the receiver still refuses: every
/// replayed event is parked again at once, and the run must still end after
/// one pass over what was parked when it started, not chase its own tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_without_limit_makes_one_pass_while_the_receiver_still_refuses() {
    const PARKED: usize = 40;
    let app = TestApp::new().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let receiver = Receiver::start(Script::Always(400)).await;
    let config = http_config(&app, "http", &receiver.url("/hook"));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config.clone(), WITHIN).await;

    let ids: Vec<String> = (0..PARKED).map(|i| format!("REREFUSED-{i}")).collect();
    futures_util::stream::iter(&ids)
        .map(|id| post_receipt(&ingest, id, "delivered"))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    assert!(
        eventually(WITHIN, async || broker.queue_depth(&topology.parked_queue).await == PARKED as u32).await,
        "every event is parked"
    );

    // Bounded well above what one pass needs (tens of milliseconds here).
    let report = replay_parked(&config, None, &[], Duration::from_secs(8)).await;
    let calls = receiver.calls().len();
    let Some(report) = report else {
        // The fixture's drop stops the apps and removes the topology.
        panic!(
            "replay-parked was still running after 8 s: it kept taking back the events it had just \
             replayed, and the receiver got {calls} calls for {PARKED} events"
        );
    };
    assert_eq!(report.replayed, PARKED as u64, "each parked event replayed once: {report:?}");

    assert!(eventually(WITHIN, async || idle(&worker, broker, &config).await).await);
    assert!(
        eventually(WITHIN, async || broker.queue_depth(&topology.parked_queue).await == PARKED as u32).await,
        "all parked again"
    );
    assert_eq!(receiver.calls().len(), 2 * PARKED, "one call per event per pass");

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}
