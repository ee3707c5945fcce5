//! `AMQP_URL` as a list of broker nodes, and its syntax errors.
//!
//! A cluster's clients are given every node's address: the first that
//! answers is used. A malformed address, though, is an operator's typo, not
//! an outage: the binaries must refuse to start and say which variable is
//! wrong, without printing the password it holds.

use dlr_shared::config::AmqpUrls;
use dlr_tests::proxy::{BrokerProxy, broker_addr};
use dlr_tests::{SEED_FORM, TestApp, amqp_url, eventually, unique_topology};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(15);

/// An address where nothing listens: a port the OS just handed out and took back.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_skips_an_address_that_does_not_answer_and_serves_through_the_next() {
    let app = TestApp::new().await;
    let urls = format!("{},{}", closed_port_url(), amqp_url());
    let ingest = app.spawn_ingest(app.ingest_config_at(&urls)).await;
    let ready = ingest.wait_ready(READY).await;
    let status = if ready { ingest.post_vonage_form(SEED_FORM).await.status().as_u16() } else { 0 };
    let stored = app.broker.drain(&app.topology.queue, Duration::from_millis(300)).await.len();
    ingest.stop().await;
    app.cleanup().await;
    assert!(ready, "ingest never became ready with a dead first address");
    assert_eq!(status, 200);
    assert_eq!(stored, 1, "the receipt reached the queue through the second address");
}

/// A node lost for good while ingest is connected to it: ingest moves to
/// the next address and stores receipts again while the first stays down
/// (README, "Broker cluster": after losing a connection, the next node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_moves_to_the_next_address_while_the_first_stays_down() {
    let app = TestApp::new().await;
    let mut first = BrokerProxy::reserve(broker_addr()).await;
    let mut second = BrokerProxy::reserve(broker_addr()).await;
    // Only the first answers at start-up, so that is where ingest connects.
    first.start().await;
    let urls = format!("{},{}", first.amqp_url(), second.amqp_url());
    let ingest = app.spawn_ingest(app.ingest_config_at(&urls)).await;
    let ready = ingest.wait_ready(READY).await;
    let before = if ready { ingest.post_vonage_form(SEED_FORM).await.status().as_u16() } else { 0 };
    second.start().await;
    // The first node goes and never comes back.
    first.cut().await;
    let accepted =
        eventually(READY, async || ingest.post_vonage_form(SEED_FORM).await.status().as_u16() == 200).await;
    let stored = app.broker.drain(&app.topology.queue, Duration::from_millis(300)).await.len();
    ingest.stop().await;
    second.cut().await;
    app.cleanup().await;
    assert!(ready, "ingest never became ready through the first address");
    assert_eq!(before, 200, "stored through the first address");
    assert!(accepted, "no 200 through the second address while the first stayed down");
    assert!(stored >= 2, "the receipts before and after the loss are in the queue ({stored})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_are_declared_with_the_configured_group_size() {
    let app = TestApp::with_topology(dlr_shared::amqp::Topology {
        quorum_group_size: Some(3),
        ..unique_topology()
    })
    .await;
    let ingest = app.spawn_ingest(app.ingest_config()).await;
    let ready = ingest.wait_ready(READY).await;
    // A passive declare cannot check arguments; an active one with a
    // different group size is refused if ours was set.
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(5));
    let channel = app.broker.channel.clone();
    let other_size = channel
        .queue_declare(
            app.topology.parked_queue.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            args,
        )
        .await;
    ingest.stop().await;
    app.cleanup().await;
    assert!(ready, "ingest never became ready");
    let error = other_size.expect_err("a different x-quorum-initial-group-size must be refused").to_string();
    assert!(error.contains("x-quorum-initial-group-size"), "{error}");
}

#[test]
fn malformed_amqp_url_stops_both_binaries_at_start_up_without_echoing_the_password() {
    for (name, args) in [("ingest", vec!["--addr", "127.0.0.1:0"]), ("worker", vec!["--addr", "127.0.0.1:0"])]
    {
        let path = dlr_tests::binaries::binary(name);
        for bad in ["http://user:s3cretpw@localhost:5672/", "rabbit on localhost", "amqp://u:s3cretpw@h:1/,"]
        {
            let started = Instant::now();
            let mut child = Command::new(&path)
                .args(&args)
                .env("AMQP_URL", bad)
                .env("LOG_FORMAT", "text")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("binary starts");
            // A binary that retries instead of failing would run forever.
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if child.try_wait().expect("wait").is_none() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} with AMQP_URL={bad:?} was still running after 10 s");
            }
            let output = child.wait_with_output().expect("output");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(!output.status.success(), "{name} {bad:?}: exit status {:?}", output.status);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{name} {bad:?} took {:?}",
                started.elapsed()
            );
            assert!(text.contains("AMQP_URL"), "{name} {bad:?}: {text}");
            assert!(!text.contains("s3cretpw"), "{name} {bad:?} printed the password: {text}");
        }
    }
}

#[test]
fn the_default_address_is_a_valid_list_of_one() {
    let urls = AmqpUrls::parse(dlr_shared::config::DEFAULT_AMQP_URL).expect("the default parses");
    assert_eq!(urls.addresses().len(), 1);
    assert_eq!(urls.addresses()[0].to_string(), "amqp://127.0.0.1:5672/%2f");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_declared_before_the_group_size_setting_still_work() {
    let app = TestApp::new().await;
    // The parking lot as an earlier release declared it: type only.
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    app.broker
        .channel
        .queue_declare(
            app.topology.parked_queue.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            args,
        )
        .await
        .expect("declaring the old-style queue");
    let ingest = app.spawn_ingest(app.ingest_config()).await;
    let ready = ingest.wait_ready(Duration::from_secs(5)).await;
    ingest.stop().await;
    app.cleanup().await;
    assert!(ready, "an existing queue without x-quorum-initial-group-size blocks start-up");
}
