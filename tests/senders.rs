//! Answers for senders, against the real broker and database: never-final
//! messages get exactly one synthetic receipt on every handler (two
//! workers sweeping), a late genuine receipt still wins, each receipt's
//! destination country and network come out right (bad input included),
//! the analytics metrics stay within their cardinality budget, the report
//! matches a hand count, and the history's partitions roll over a month
//! boundary.
//!
//! Each test has its own topology and database ([`TestApp`]) and removes
//! them at the end.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration as TimeDelta, TimeZone, Utc};
use dlr_shared::{EventId, ReceiptEvent, words};
use dlr_tests::receiver::{Receiver, Script};
use dlr_tests::{TestApp, eventually, metric_value};
use dlr_worker::handlers::postgres::{PostgresHandler, PostgresSettings};
use dlr_worker::report::{self, GroupBy};
use dlr_worker::retention;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

/// An event as a provider's parser writes it; the id is derived from the
/// provider, message, status and time, like ingest's.
fn event(
    provider: &str,
    message_id: &str,
    status: &str,
    outcome: &str,
    recipient: Option<&str>,
    network_code: Option<&str>,
    received_at: DateTime<Utc>,
) -> ReceiptEvent {
    let mut value = json!({
        "schema_version": 1, "event_id": "0".repeat(32), "provider": provider, "message_id": message_id,
        "outcome": outcome, "status": status, "status_recognised": true,
        "received_at": received_at.to_rfc3339(), "raw": {},
    });
    if let Some(recipient) = recipient {
        value["recipient"] = recipient.into();
    }
    if let Some(code) = network_code {
        value["network_code"] = code.into();
    }
    let mut event: ReceiptEvent = serde_json::from_value(value).expect("a valid event");
    event.event_id = EventId::derive(event.provider, &[message_id, status, &received_at.to_rfc3339()]);
    event
}

fn url(text: &str) -> url::Url {
    text.parse().expect("valid URL")
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect("count query")
}

// ---------------------------------------------------------------------------
// Never-final messages
// ---------------------------------------------------------------------------

/// Five messages stay pending past a 2-second window: with two workers
/// sweeping every second, each gets exactly one synthetic receipt on amqp,
/// http and the status store. Then a genuine `delivered` for one of them
/// replaces its synthetic status and is routed like any receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_final_message_gets_one_synthetic_receipt_on_every_handler() {
    let app = TestApp::new().await;
    let db = app.create_database().await;
    let receiver = Receiver::start(Script::Ok).await;
    let mut config = app.worker_config();
    for route in [&mut config.route_delivered, &mut config.route_failed, &mut config.route_pending] {
        *route = "postgres,amqp,http".to_owned();
    }
    config.http_url = Some(url(&receiver.url("/hooks")));
    config.http_secret = Some(format!("whsec_{}", STANDARD.encode(uuid::Uuid::new_v4().as_bytes())).into());
    config.database_url = Some(db.url.clone().into());
    config.never_final_window = Duration::from_secs(2);
    config.maintenance_interval = Duration::from_secs(1);
    config.never_final_batch_size = 2; // several batches per round
    let first = app.start_worker(config.clone(), WITHIN).await;
    let second = app.start_worker(config.clone(), WITHIN).await;
    let capture = app.capture().await;
    let pool = db.pool().await;

    let providers = ["twilio", "telnyx", "plivo", "sinch", "infobip"];
    let statuses = ["sent", "delivery_unconfirmed", "sent", "dispatched", "PENDING_ENROUTE"];
    for (i, (provider, status)) in providers.iter().zip(statuses).enumerate() {
        let pending =
            event(provider, &format!("NF-{i}"), status, "pending", Some("+5511987654321"), None, Utc::now());
        app.broker.publish_raw(&app.topology.queue, &pending.to_json()).await;
    }
    let pending_copies = app.broker.take(&capture, 5, WITHIN).await;
    assert_eq!(pending_copies.len(), 5, "the pending receipts are routed");

    // Exactly one synthetic receipt per message, on every handler.
    let synthetic = app.broker.take(&capture, 5, WITHIN).await;
    let keys: HashSet<String> =
        synthetic.iter().map(|m| m.delivery.routing_key.as_str().to_owned()).collect();
    let expected: HashSet<String> =
        providers.iter().map(|p| format!("failed.{p}.no_final_receipt")).collect();
    assert_eq!(keys, expected, "one synthetic failed receipt per provider's message");
    for message in &synthetic {
        let event = ReceiptEvent::from_json(&message.delivery.data).expect("an event");
        assert!(event.synthetic, "marked synthetic");
        assert_eq!(event.outcome.as_str(), "failed");
        assert_eq!(event.recipient.as_deref(), Some("+5511987654321"), "the recipient, from the history");
        assert_eq!(event.destination.and_then(|d| d.country).as_deref(), Some("BR"));
        assert_eq!(event.raw.get("window_seconds"), Some(&json!(2)));
    }
    assert!(
        eventually(WITHIN, async || receiver.calls().len() == 10).await,
        "five pending and five synthetic receipts are posted"
    );
    assert!(
        eventually(WITHIN, async || count(
            &pool,
            "SELECT count(*) FROM message_status WHERE synthetic AND status = 'no_final_receipt' AND outcome = 'failed'"
        )
        .await
            == 5)
        .await,
        "the status store holds the synthetic status"
    );
    // Several more rounds of both workers: nothing is swept twice.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let extra = app.broker.drain(&capture, Duration::from_millis(500)).await;
    assert!(extra.is_empty(), "no second synthetic receipt: {:?}", extra.len());
    assert_eq!(receiver.calls().len(), 10, "no second webhook");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM receipt_events WHERE status = 'no_final_receipt'").await,
        5
    );
    let published = metric_value(&first.metrics().await, "dlr_worker_never_final_total", &[])
        + metric_value(&second.metrics().await, "dlr_worker_never_final_total", &[]);
    assert_eq!(published, 5.0, "the two workers published five in all");

    // A late genuine final receipt wins, and is routed normally.
    let late = event("twilio", "NF-0", "delivered", "delivered", Some("+5511987654321"), None, Utc::now());
    app.broker.publish_raw(&app.topology.queue, &late.to_json()).await;
    let routed = app.broker.take(&capture, 1, WITHIN).await;
    assert_eq!(routed.first().map(|m| m.delivery.routing_key.as_str()), Some("delivered.twilio.delivered"));
    assert!(
        eventually(WITHIN, async || {
            let row: Option<(String, bool)> = sqlx::query_as(
                "SELECT status, synthetic FROM message_status WHERE provider = 'twilio' AND message_id = 'NF-0'",
            )
            .fetch_optional(&pool)
            .await
            .expect("status query");
            row == Some(("delivered".to_owned(), false))
        })
        .await,
        "the genuine delivered replaces no_final_receipt"
    );
    // And a late genuine pending does not undo the synthetic failure.
    let stale = event("plivo", "NF-2", "queued", "pending", None, None, Utc::now());
    app.broker.publish_raw(&app.topology.queue, &stale.to_json()).await;
    assert_eq!(app.broker.take(&capture, 1, WITHIN).await.len(), 1);
    assert!(eventually(WITHIN, async || receiver.calls().len() == 12).await);
    let status: String = sqlx::query_scalar(
        "SELECT status FROM message_status WHERE provider = 'plivo' AND message_id = 'NF-2'",
    )
    .fetch_one(&pool)
    .await
    .expect("status");
    assert_eq!(status, "no_final_receipt");

    pool.close().await;
    first.stop().await;
    second.stop().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------
// Destination country and network
// ---------------------------------------------------------------------------

/// Each provider's recipient format (with or without `+`, a channel
/// prefix) and network code, from several countries, NANP included, and
/// bad input: the worker adds the right destination to the event every
/// handler sees, and bad input is routed without one, nothing parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_carry_their_destination_country_and_network() {
    let app = TestApp::new().await;
    let mut config = app.worker_config();
    config.route_delivered = "amqp".to_owned();
    let worker = app.start_worker(config, WITHIN).await;
    let capture = app.capture().await;

    // provider, recipient, network_code -> country, (mcc, mnc, mcc country)
    type Case = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<(&'static str, &'static str, Option<&'static str>)>,
    );
    let cases: &[Case] = &[
        ("vonage-sms", Some("447700900123"), Some("23415"), Some("GB"), Some(("234", "15", Some("GB")))),
        (
            "vonage-messages",
            Some("4915112345678"),
            Some("26202"),
            Some("DE"),
            Some(("262", "02", Some("DE"))),
        ),
        ("twilio", Some("+14155550100"), None, Some("US"), None),
        ("twilio", Some("whatsapp:+14165550100"), None, Some("CA"), None),
        ("telnyx", Some("+18095550100"), None, Some("DO"), None),
        ("plivo", Some("12125550123"), Some("310410"), Some("US"), Some(("310", "410", Some("US")))),
        ("sinch", Some("5511987654321"), None, Some("BR"), None),
        ("infobip", Some("41793026727"), Some("22801"), Some("CH"), Some(("228", "01", Some("CH")))),
        ("infobip", Some("77012345678"), Some("40101"), Some("KZ"), Some(("401", "01", Some("KZ")))),
        ("vonage-sms", Some("61412345678"), Some("50502"), Some("AU"), Some(("505", "02", Some("AU")))),
        ("vonage-sms", Some("2348031234567"), Some("62130"), Some("NG"), Some(("621", "30", Some("NG")))),
        // Bad input: no number, an unknown MCC, both unusable, a bare +.
        ("twilio", Some("not a number"), Some("99901"), None, Some(("999", "01", None))),
        ("plivo", Some("+"), Some("31x410"), None, None),
        ("sinch", Some("15555550100"), None, None, None),
        ("infobip", None, Some("1234567"), None, None),
    ];
    for (i, (provider, recipient, network, ..)) in cases.iter().enumerate() {
        let receipt =
            event(provider, &format!("DEST-{i}"), "delivered", "delivered", *recipient, *network, Utc::now());
        app.broker.publish_raw(&app.topology.queue, &receipt.to_json()).await;
    }
    let copies = app.broker.take(&capture, cases.len(), WITHIN).await;
    assert_eq!(copies.len(), cases.len(), "every receipt is routed, bad ones included");
    let by_id: HashMap<String, ReceiptEvent> = copies
        .iter()
        .map(|m| ReceiptEvent::from_json(&m.delivery.data).expect("an event"))
        .map(|e| (e.message_id.as_str().to_owned(), e))
        .collect();
    for (i, (provider, recipient, _, country, network)) in cases.iter().enumerate() {
        let event = &by_id[&format!("DEST-{i}")];
        let destination =
            event.destination.clone().unwrap_or(dlr_shared::Destination { country: None, network: None });
        assert_eq!(destination.country.as_deref(), *country, "{provider} {recipient:?}");
        let got =
            destination.network.as_ref().map(|n| (n.mcc.as_str(), n.mnc.as_str(), n.country.as_deref()));
        assert_eq!(got, *network, "{provider} {recipient:?}");
    }
    let metrics = worker.metrics().await;
    assert_eq!(metric_value(&metrics, "dlr_worker_parked_total", &[]), 0.0, "nothing parked");
    assert_eq!(
        metric_value(&metrics, "dlr_worker_final_receipts_total", &[("country", "unknown")]),
        4.0,
        "receipts without any country are counted as unknown"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "dlr_worker_final_receipts_total",
            &[("provider", "twilio"), ("country", "CA")]
        ),
        1.0
    );
    worker.stop().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------
// Cardinality budget
// ---------------------------------------------------------------------------

/// One example mobile number of every region libphonenumber knows (about
/// 245), as the E.164 digits, with the region's code.
fn example_numbers() -> Vec<(String, String)> {
    let mut numbers = Vec::new();
    for metadata in phonenumber::metadata::DATABASE.iter() {
        let descriptors = metadata.descriptors();
        let example =
            descriptors.mobile().and_then(|d| d.example()).or_else(|| descriptors.general().example());
        if let (Some(example), 2) = (example, metadata.id().len()) {
            numbers.push((format!("{}{example}", metadata.country_code()), metadata.id().to_owned()));
        }
    }
    numbers
}

/// Receipts for every country on every provider, delivered and failed with
/// more error codes than the budget: the worker exports at most 5 000
/// series, countries and codes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_metrics_stay_within_the_cardinality_budget() {
    let app = TestApp::new().await;
    let mut config = app.worker_config();
    config.prefetch = 300;
    let worker = app.start_worker(config, WITHIN).await;
    let numbers = example_numbers();
    assert!(numbers.len() >= 240, "libphonenumber knows {} regions", numbers.len());
    // What libphonenumber itself says, number by number (its example
    // numbers of a few territories sharing a code, such as AX or CX, are
    // valid in the main region and resolve to it).
    let expected: HashSet<String> = numbers
        .iter()
        .filter_map(|(number, _)| dlr_worker::analytics::DestinationResolver::default().country(number))
        .collect();
    let mut published = 0usize;
    for provider in words::names::<dlr_shared::Provider>() {
        for (i, (number, _)) in numbers.iter().enumerate() {
            for outcome in ["delivered", "failed"] {
                let mut receipt =
                    event(provider, &format!("CARD-{i}"), outcome, outcome, Some(number), None, Utc::now());
                receipt.provider_timestamp = Some(receipt.received_at - TimeDelta::seconds(3));
                if outcome == "failed" {
                    receipt.error = Some(dlr_shared::event::ProviderError {
                        code: format!("E{i}"),
                        description: None,
                        retryable: false,
                    });
                }
                app.broker.publish_raw(&app.topology.queue, &receipt.to_json()).await;
                published += 1;
            }
        }
    }
    assert!(
        eventually(Duration::from_secs(120), async || metric_value(
            &worker.metrics().await,
            "dlr_worker_events_consumed_total",
            &[]
        ) as usize
            == published)
        .await,
        "every receipt is consumed"
    );
    let metrics = worker.metrics().await;
    let series: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("dlr_worker_") && !l.starts_with('#')).collect();
    assert!(series.len() <= 5_000, "{} dlr_worker_ series exported", series.len());
    let countries: HashSet<&str> = series
        .iter()
        .filter(|l| l.starts_with("dlr_worker_final_receipts_total{"))
        .filter_map(|l| l.split("country=\"").nth(1)?.split('"').next())
        .collect();
    assert!(countries.len() >= 230, "{} countries labelled", countries.len());
    let expected: HashSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(countries, expected, "every number labelled with its own country, none unknown");
    let codes = series.iter().filter(|l| l.starts_with("dlr_worker_failures_by_code_total{")).count();
    assert_eq!(codes, 7 * 51, "50 codes per provider, then other");
    assert_eq!(
        metric_value(&metrics, "dlr_worker_final_receipt_delay_by_country_count_total", &[]) as usize,
        published
    );
    println!(
        "{} dlr_worker_ series for {} receipts over {} countries",
        series.len(),
        published,
        countries.len()
    );
    worker.stop().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

fn settings() -> PostgresSettings {
    PostgresSettings {
        max_connections: 2,
        batch_size: 1,
        linger: Duration::ZERO,
        statement_timeout: Duration::from_secs(5),
    }
}

/// Receipts written through the handler (first an intermediate status,
/// then a final one some seconds later) give the numbers counted by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_matches_a_hand_count() {
    let app = TestApp::new().await;
    let db = app.create_database().await;
    let handler = PostgresHandler::connect(&db.url, &settings()).await.expect("handler connects");
    let analytics = dlr_worker::metrics::WorkerMetrics::new().expect("metrics").analytics;
    let now = Utc::now();
    // provider, country's number, final status (None: stays pending), seconds to final
    type Planned = (&'static str, &'static str, Option<(&'static str, &'static str)>, i64);
    let plan: &[Planned] = &[
        ("twilio", "+5511987654321", Some(("delivered", "delivered")), 4),
        ("twilio", "+5511987654322", Some(("delivered", "delivered")), 10),
        ("twilio", "+5511987654323", Some(("undelivered", "failed")), 6),
        ("twilio", "+5511987654324", None, 0),
        ("twilio", "+14155550100", Some(("delivered", "delivered")), 30),
        ("sinch", "+5511987654325", Some(("delivered", "delivered")), 2),
        ("sinch", "+5511987654326", Some(("no_final_receipt", "failed")), 0),
        ("sinch", "+14155550101", None, 0),
    ];
    let mut events = Vec::new();
    for (i, (provider, number, last, seconds)) in plan.iter().enumerate() {
        let id = format!("REP-{i}");
        let start = now - TimeDelta::minutes(30);
        events.push(event(provider, &id, "queued", "pending", Some(number), None, start));
        if let Some((status, outcome)) = last {
            let mut last = event(
                provider,
                &id,
                status,
                outcome,
                Some(number),
                None,
                start + TimeDelta::seconds(*seconds),
            );
            last.synthetic = *status == "no_final_receipt";
            events.push(last);
        }
    }
    // Outside the period: a message first seen two days ago.
    events.push(event(
        "twilio",
        "REP-OLD",
        "delivered",
        "delivered",
        Some("+5511987654329"),
        None,
        now - TimeDelta::days(2),
    ));
    let events: Vec<ReceiptEvent> = events.into_iter().map(|e| analytics.enrich(e)).collect();
    for result in handler.record_batch(&events).await {
        result.expect("stored");
    }
    let pool = db.pool().await;
    let rows = report::read(&pool, Duration::from_secs(86_400), &[GroupBy::Provider, GroupBy::Country])
        .await
        .expect("report");
    type Counts = (i64, i64, i64, i64, i64, Option<f64>);
    let table: BTreeMap<Vec<String>, Counts> = rows
        .iter()
        .map(|r| {
            (r.group.clone(), (r.messages, r.delivered, r.failed, r.pending, r.never_final, r.median_seconds))
        })
        .collect();
    let key = |p: &str, c: &str| vec![p.to_owned(), c.to_owned()];
    // By hand: twilio BR 4 messages (2 delivered in 4 s and 10 s, 1 failed in
    // 6 s, 1 pending): median of 4, 6, 10 = 6.
    assert_eq!(table.get(&key("twilio", "BR")), Some(&(4, 2, 1, 1, 0, Some(6.0))));
    assert_eq!(table.get(&key("twilio", "US")), Some(&(1, 1, 0, 0, 0, Some(30.0))));
    // sinch BR: 1 delivered in 2 s, 1 never final (not failed, not timed).
    assert_eq!(table.get(&key("sinch", "BR")), Some(&(2, 1, 0, 0, 1, Some(2.0))));
    assert_eq!(table.get(&key("sinch", "US")), Some(&(1, 0, 0, 1, 0, None)));
    assert_eq!(table.len(), 4, "the old message is outside the period: {table:?}");
    let text = report::render(&rows, &[GroupBy::Provider, GroupBy::Country]);
    assert!(
        text.lines().nth(1).is_some_and(|l| l.starts_with("twilio    BR") && l.contains("50.0")),
        "{text}"
    );

    let by_provider =
        report::read(&pool, Duration::from_secs(3 * 86_400), &[GroupBy::Provider]).await.expect("report");
    let twilio = by_provider.iter().find(|r| r.group == ["twilio"]).expect("twilio row");
    assert_eq!((twilio.messages, twilio.delivered), (6, 4), "the longer period includes the old message");
    pool.close().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------
// Bounded history
// ---------------------------------------------------------------------------

fn utc(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0).single().expect("valid time")
}

async fn partitions(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM dlr_receipt_partitions() ORDER BY lower_bound")
        .fetch_all(pool)
        .await
        .expect("partitions")
}

/// The clock moves from the end of one January to March: the months
/// ahead are created, the months entirely past the retention are dropped
/// with their rows, and final statuses older than the retention go while
/// pending ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_partitions_roll_over_month_boundaries() {
    let app = TestApp::new().await;
    let db = app.create_database().await;
    let handler = PostgresHandler::connect(&db.url, &settings()).await.expect("handler connects");
    let pool = db.pool().await;
    let mut connection = pool.acquire().await.expect("connection");
    let retention = Duration::from_secs(30 * 86_400);

    let january = retention::run(&mut connection, utc(2031, 1, 31, 23), retention).await.expect("round");
    assert_eq!(
        january.created,
        ["receipt_events_p203101", "receipt_events_p203102", "receipt_events_p203103"]
    );
    let events = [
        event("twilio", "HIST-JAN", "delivered", "delivered", None, None, utc(2031, 1, 15, 12)),
        event("twilio", "HIST-JAN-P", "sent", "pending", None, None, utc(2031, 1, 20, 12)),
        event("twilio", "HIST-FEB", "delivered", "delivered", None, None, utc(2031, 2, 10, 0)),
        event("twilio", "HIST-LOST", "delivered", "delivered", None, None, utc(2040, 6, 1, 0)),
    ];
    for result in handler.record_batch(&events).await {
        result.expect("stored");
    }
    let where_stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT message_id, tableoid::regclass::text FROM receipt_events ORDER BY received_at",
    )
    .fetch_all(&pool)
    .await
    .expect("history");
    assert_eq!(
        where_stored,
        [
            ("HIST-JAN".to_owned(), "receipt_events_p203101".to_owned()),
            ("HIST-JAN-P".to_owned(), "receipt_events_p203101".to_owned()),
            ("HIST-FEB".to_owned(), "receipt_events_p203102".to_owned()),
            ("HIST-LOST".to_owned(), "receipt_events_default".to_owned()),
        ]
    );

    // March 5th: the cutoff is February 3rd; January goes whole, February stays.
    let march = retention::run(&mut connection, utc(2031, 3, 5, 0), retention).await.expect("round");
    assert_eq!(march.created, ["receipt_events_p203104", "receipt_events_p203105"]);
    assert!(march.dropped.contains(&"receipt_events_p203101".to_owned()), "{march:?}");
    assert!(!march.dropped.contains(&"receipt_events_p203102".to_owned()), "{march:?}");
    assert_eq!(march.status_rows_deleted, 1, "the January delivered status goes, its pending sibling stays");
    let left: Vec<String> = sqlx::query_scalar("SELECT message_id FROM receipt_events ORDER BY received_at")
        .fetch_all(&pool)
        .await
        .expect("history");
    assert_eq!(left, ["HIST-FEB", "HIST-LOST"]);
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT message_id FROM message_status ORDER BY message_id")
            .fetch_all(&pool)
            .await
            .expect("statuses");
    assert_eq!(statuses, ["HIST-FEB", "HIST-JAN-P", "HIST-LOST"]);
    assert_eq!(
        partitions(&pool).await,
        [
            "receipt_events_p203102",
            "receipt_events_p203103",
            "receipt_events_p203104",
            "receipt_events_p203105"
        ]
    );

    // A month created later takes its rows out of the default partition.
    let june_2040 = retention::run(&mut connection, utc(2040, 6, 10, 0), retention).await.expect("round");
    assert!(june_2040.created.contains(&"receipt_events_p204006".to_owned()));
    let home: String = sqlx::query_scalar(
        "SELECT tableoid::regclass::text FROM receipt_events WHERE message_id = 'HIST-LOST'",
    )
    .fetch_one(&pool)
    .await
    .expect("history");
    assert_eq!(home, "receipt_events_p204006");
    drop(connection);
    pool.close().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------
// Pending ranks of every provider
// ---------------------------------------------------------------------------

/// For each provider's documented lifecycle, a late retry of an earlier
/// intermediate status (newer by time, lower by rank) does not move the
/// message back, while the next step does move it on; an unknown word
/// ranks below every known one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_providers_pending_steps_are_ranked() {
    let app = TestApp::new().await;
    let db = app.create_database().await;
    let handler = PostgresHandler::connect(&db.url, &settings()).await.expect("handler connects");
    let pool = db.pool().await;
    // provider, steps in lifecycle order
    let lifecycles: &[(&str, &[&str])] = &[
        ("telnyx", &["queued", "sending", "sent", "delivery_unconfirmed"]),
        ("plivo", &["queued", "sent"]),
        ("sinch", &["Queued", "Dispatched", "Unknown"]),
        (
            "infobip",
            &["PENDING_ACCEPTED", "PENDING_ENROUTE", "PENDING_WAITING_DELIVERY", "DELIVERED_TO_OPERATOR"],
        ),
    ];
    let start = utc(2031, 1, 1, 0);
    for (provider, steps) in lifecycles {
        for (k, step) in steps.iter().enumerate().skip(1) {
            let id = format!("RANK-{k}");
            // The later step first, then the earlier one arriving a minute later.
            let later = event(provider, &id, step, "pending", None, None, start);
            let earlier =
                event(provider, &id, steps[k - 1], "pending", None, None, start + TimeDelta::minutes(1));
            let mystery =
                event(provider, &id, "mystery_word", "pending", None, None, start + TimeDelta::minutes(2));
            for result in handler.record_batch(&[later, earlier, mystery]).await {
                result.expect("stored");
            }
            let status: String = sqlx::query_scalar(
                "SELECT status FROM message_status WHERE provider = $1 AND message_id = $2",
            )
            .bind(provider)
            .bind(&id)
            .fetch_one(&pool)
            .await
            .expect("status");
            assert_eq!(&status, step, "{provider}: {} after {step} must not move it back", steps[k - 1]);
        }
    }
    pool.close().await;
    app.cleanup().await;
}
