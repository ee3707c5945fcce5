//! Receipts sharded over several quorum queues (`AMQP_RECEIPT_SHARDS`):
//! the shard function's golden vectors and spread on every provider's id
//! format, and on the machine's broker: one message's receipts on one
//! shard, retries back to their shard, a missing binding failing only its
//! shard, and a re-sharding 2 -> 3 -> 2 under load that loses nothing.

use dlr_shared::amqp::Topology;
use dlr_shared::amqp::shards::shard_of;
use dlr_tests::receiver::{Receiver, Script};
use dlr_tests::{
    TestApp, TestIngest, eventually, metric_value, send_vonage_form, unique_topology, vonage_form,
};
use lapin::options::QueueBindOptions;
use lapin::types::{AMQPValue, FieldTable};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_millis(300);

/// Ids in each provider's real format, with their shard for N = 2, 3, 6
/// and 15. Computed by an independent implementation (a few lines of
/// Python: FNV-1a 64 of the UTF-8 bytes, then the Jump Consistent Hash
/// listing of the paper), so a change of algorithm, seed or byte order in
/// the service fails here: every pod and release must agree on a shard.
const GOLDEN: [(&str, [u16; 4]); 10] = [
    ("02000000FEA5EE9B", [1, 2, 2, 2]),                           // Vonage SMS
    ("0C0000002A9F31B6", [1, 1, 1, 8]),                           // Vonage SMS
    ("0C0000002A9F31B7", [1, 1, 5, 11]),                          // Vonage SMS, the next id
    ("SM1f0e8ae6ade43cb3c0ce4525424e404f", [0, 2, 2, 11]),        // Twilio SMS
    ("MM5e1f0a2b3c4d5e6f708192a3b4c5d6e7f", [1, 1, 3, 14]),       // Twilio MMS
    ("5b0d4b1e-6f2a-4c3e-9a8b-1c2d3e4f5a6b", [0, 0, 0, 10]),      // Vonage Messages
    ("40385f64-5717-4562-b3fc-2c963f66afa6", [0, 0, 4, 4]),       // Telnyx
    ("db3ce55a-7f1d-11e1-8ea7-1231380bc196", [1, 1, 1, 1]),       // Plivo
    ("01FC66621XXXXX119Z8PMV1QPQ", [1, 1, 4, 10]),                // Sinch batch
    ("2250be2d4219-3af1-78856-aabe-1362af1edfd2", [0, 0, 0, 13]), // Infobip
];

#[test]
fn golden_vectors_pick_the_same_shard_in_every_release() {
    for (id, shards) in GOLDEN {
        for (n, expected) in [2, 3, 6, 15].into_iter().zip(shards) {
            assert_eq!(shard_of(id, n), expected, "{id} with {n} shards");
        }
    }
}

/// A fixed pseudo-random sequence (xorshift64*), so the spread check is
/// the same on every run.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn hex(&mut self, digits: usize) -> String {
        let mut out = String::new();
        while out.len() < digits {
            out.push_str(&format!("{:016x}", self.next()));
        }
        out.truncate(digits);
        out
    }

    fn uuid(&mut self) -> String {
        let h = self.hex(32);
        format!("{}-{}-4{}-a{}-{}", &h[..8], &h[8..12], &h[13..16], &h[17..20], &h[20..])
    }
}

/// `count` ids of each provider's format. Vonage SMS and Infobip ids are
/// largely sequential in practice, so those are generated as runs.
fn ids_by_format(count: usize) -> Vec<(&'static str, Vec<String>)> {
    let mut r = Ids(0x9e37_79b9_7f4a_7c15);
    let crockford = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    vec![
        ("vonage-sms (sequential)", (0..count).map(|i| format!("0C00000{:09X}", 0x2A9F_31B6 + i)).collect()),
        ("twilio", (0..count).map(|_| format!("SM{}", r.hex(32))).collect()),
        ("vonage-messages / telnyx / plivo (uuid)", (0..count).map(|_| r.uuid()).collect()),
        (
            "sinch (ulid)",
            (0..count)
                .map(|_| (0..26).map(|_| char::from(crockford[(r.next() % 32) as usize])).collect::<String>())
                .collect(),
        ),
        (
            "infobip (sequential)",
            (0..count).map(|i| format!("2250be2d4219-3af1-{:05}-aabe-1362af1edfd2", 10_000 + i)).collect(),
        ),
    ]
}

/// Chi-squared critical values at p = 0.001 for N - 1 degrees of freedom.
fn chi_squared_limit(shards: u16) -> f64 {
    match shards {
        2 => 10.83,
        3 => 13.82,
        6 => 20.52,
        15 => 36.12,
        _ => unreachable!("only the sizes checked below"),
    }
}

#[test]
fn every_provider_id_format_spreads_evenly_over_the_shards() {
    let count = 6_000;
    for (format, ids) in ids_by_format(count) {
        for n in [2_u16, 3, 6, 15] {
            let mut per_shard = vec![0_usize; usize::from(n)];
            for id in &ids {
                per_shard[usize::from(shard_of(id, n))] += 1;
            }
            let expected = count as f64 / f64::from(n);
            let chi: f64 = per_shard.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
            assert!(
                chi < chi_squared_limit(n),
                "{format}, {n} shards: {per_shard:?} is not even (chi-squared {chi:.1})"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// On the broker
// ---------------------------------------------------------------------------

fn sharded(shards: u16) -> Topology {
    Topology { receipt_shards: shards, ..unique_topology() }
}

/// Message ids (Vonage SMS format) whose shards under `shards` cover every
/// shard, `per_shard` of each.
fn ids_covering(shards: u16, per_shard: usize) -> Vec<String> {
    let mut wanted = vec![per_shard; usize::from(shards)];
    let mut ids = Vec::new();
    for i in 0_u64.. {
        let id = format!("0D{:014X}", 0x5EED_0000 + i);
        let shard = usize::from(shard_of(&id, shards));
        if wanted[shard] > 0 {
            wanted[shard] -= 1;
            ids.push(id);
        }
        if wanted.iter().all(|w| *w == 0) {
            break;
        }
    }
    ids
}

/// Every message now in each shard queue, as (shard, message id, headers).
async fn drain_shards(app: &TestApp) -> Vec<(u16, String, Option<FieldTable>)> {
    let mut found = Vec::new();
    for shard in 0..app.topology.receipt_shards {
        for message in app.broker.drain(&app.topology.shard_queue(shard), SETTLE).await {
            let event = dlr_shared::ReceiptEvent::from_json(&message.delivery.data)
                .expect("a receipt event in the queue");
            found.push((shard, event.message_id.to_string(), message.delivery.properties.headers().clone()));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_receipts_of_one_message_land_on_its_shard() {
    let app = TestApp::with_topology(sharded(3)).await;
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let ids = ids_covering(3, 3);
    for id in &ids {
        for status in ["accepted", "buffered", "delivered"] {
            let response = ingest.post_vonage_form(&vonage_form(id, status)).await;
            assert_eq!(response.status().as_u16(), 200, "{id}/{status}");
        }
    }
    let found = drain_shards(&app).await;
    assert_eq!(found.len(), ids.len() * 3, "every receipt stored once");
    let mut shards_of: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
    for (shard, id, _) in &found {
        shards_of.entry(id.as_str()).or_default().insert(*shard);
    }
    for id in &ids {
        let expected = BTreeSet::from([shard_of(id, 3)]);
        assert_eq!(shards_of.get(id.as_str()), Some(&expected), "{id}'s receipts");
    }
    // The golden vector, seen through the broker.
    let response = ingest.post_vonage_form(&vonage_form("02000000FEA5EE9B", "delivered")).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(app.broker.take(&app.topology.shard_queue(2), 1, WITHIN).await.len(), 1, "shard 2 of 3");
    ingest.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_binding_fails_only_its_shard_and_loses_nothing() {
    let app = TestApp::with_topology(sharded(3)).await;
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    app.broker
        .channel_for_probe()
        .await
        .expect("channel")
        .queue_unbind(
            app.topology.shard_queue(1).as_str().into(),
            app.topology.exchange.as_str().into(),
            "receipt.1".into(),
            FieldTable::default(),
        )
        .await
        .expect("unbind shard 1");
    // Shard 1 first, so the first post meets the missing binding.
    let mut ids = ids_covering(3, 4);
    ids.sort_by_key(|id| shard_of(id, 3) != 1);
    let mut refused = Vec::new();
    for id in &ids {
        let status = ingest.post_vonage_form(&vonage_form(id, "delivered")).await.status().as_u16();
        match status {
            200 => {}
            503 => refused.push(id.clone()),
            other => panic!("{id}: {other}"),
        }
    }
    assert!(!refused.is_empty(), "the receipt that met the missing binding was refused");
    assert!(
        refused.iter().all(|id| shard_of(id, 3) == 1),
        "only shard 1's receipts are refused: {refused:?}"
    );
    // The provider retries; ingest has declared the binding again by then.
    for id in &refused {
        let retried = eventually(WITHIN, async || {
            ingest.post_vonage_form(&vonage_form(id, "delivered")).await.status().as_u16() == 200
        })
        .await;
        assert!(retried, "{id} is accepted once the binding is back");
    }
    let found = drain_shards(&app).await;
    let mut stored: Vec<&str> = found.iter().map(|(_, id, _)| id.as_str()).collect();
    stored.sort_unstable();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(stored, expected, "every receipt stored exactly once, none of the refused ones");
    assert!(found.iter().all(|(shard, id, _)| *shard == shard_of(id, 3)));
    ingest.stop().await;
    app.cleanup().await;
}

/// The queue a message was last dead-lettered from (`x-death[0].queue`).
fn dead_lettered_from(headers: &Option<FieldTable>) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers.as_ref()?.inner().get("x-death")? else { return None };
    let AMQPValue::FieldTable(last) = deaths.as_slice().first()? else { return None };
    match last.inner().get("queue")? {
        AMQPValue::LongString(queue) => Some(String::from_utf8_lossy(queue.as_bytes()).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_come_back_to_their_own_shard() {
    let app = TestApp::with_topology(sharded(3)).await;
    let receiver = Receiver::start(Script::Always(503)).await;
    let mut config = app.worker_config();
    config.route_delivered = "http".to_owned();
    config.http_url = Some(receiver.url("/hook").parse().expect("url"));
    config.http_secret = Some(format!("whsec_{}", "c2hhcmRpbmctdGVzdC1zZWNyZXQ=").into());
    // Long enough to stop the worker before the retries come back, and
    // attempts to spare so none is parked if one comes back early.
    config.retry_initial_delay = Duration::from_secs(3);
    config.retry_max_delay = Duration::from_secs(3);
    config.max_attempts = 4;
    let retry_queue = app.topology.retry_queue(Duration::from_secs(3));
    let ingest = app.start_ingest(app.ingest_config(), WITHIN).await;
    let worker = app.start_worker(config, WITHIN).await;
    let ids = ids_covering(3, 4);
    for id in &ids {
        assert_eq!(ingest.post_vonage_form(&vonage_form(id, "delivered")).await.status().as_u16(), 200);
    }
    let scheduled = eventually(WITHIN, async || {
        metric_value(&worker.metrics().await, "dlr_worker_retries_scheduled_total", &[]) >= ids.len() as f64
    })
    .await;
    assert!(scheduled, "every receipt's first attempt failed and was scheduled for a retry");
    worker.stop().await;
    let returned = eventually(WITHIN, async || app.broker.queue_depth(&retry_queue).await == 0).await;
    assert!(returned, "the delay queue empties back into the shards");
    let found = drain_shards(&app).await;
    let back: BTreeSet<&str> = found.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(back, ids.iter().map(String::as_str).collect(), "every retried receipt is back, none lost");
    for (shard, id, headers) in &found {
        assert_eq!(*shard, shard_of(id, 3), "{id} came back to its own shard");
        assert_eq!(
            dead_lettered_from(headers).as_deref(),
            Some(retry_queue.as_str()),
            "{id} via the delay queue"
        );
    }
    ingest.stop().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------
// Re-sharding under load
// ---------------------------------------------------------------------------

/// Posts receipts of fresh message ids to whichever ingest is current,
/// as fast as they are answered, recording those answered 200 and
/// retrying the others as a provider would.
struct Load {
    target: Arc<Mutex<String>>,
    accepted: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl Load {
    fn start(base_url: &str) -> Self {
        let target = Arc::new(Mutex::new(base_url.to_owned()));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, a, s) = (target.clone(), accepted.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
            let mut refused = 0;
            let mut n = 0_u64;
            while !s.load(Ordering::SeqCst) {
                n += 1;
                let id = format!("0E{n:014X}");
                loop {
                    let base_url = t.lock().expect("lock").clone();
                    let sent = send_vonage_form(&client, &base_url, vonage_form(&id, "delivered")).await;
                    if sent.is_ok_and(|r| r.status().as_u16() == 200) {
                        a.lock().expect("lock").push(id.clone());
                        break;
                    }
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            refused
        });
        Self { target, accepted, stop, task }
    }

    fn switch_to(&self, ingest: &TestIngest) {
        *self.target.lock().expect("lock") = ingest.base_url.clone();
    }

    fn accepted(&self) -> usize {
        self.accepted.lock().expect("lock").len()
    }

    async fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let refused = self.task.await.expect("load task");
        let accepted = self.accepted.lock().expect("lock").clone();
        (accepted, refused)
    }
}

/// Waits until the load has had `more` receipts accepted since now.
async fn load_runs(load: &Load, more: usize) {
    let start = load.accepted();
    assert!(
        eventually(WITHIN, async || load.accepted() >= start + more).await,
        "the load keeps being accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_2_3_2_under_load_loses_nothing_and_strands_nothing() {
    let app = TestApp::with_topology(sharded(2)).await;
    let db = app.create_database().await;
    let receiver = Receiver::start(Script::Ok).await;
    let worker_config = |shards: u16| {
        let mut config = app.worker_config();
        config.broker.topology.receipt_shards = shards;
        config.route_delivered = "postgres,http".to_owned();
        config.database_url = Some(db.url.clone().into());
        config.http_url = Some(receiver.url("/hook").parse().expect("url"));
        config.http_secret = Some(format!("whsec_{}", "c2hhcmRpbmctdGVzdC1zZWNyZXQ=").into());
        config.retry_initial_delay = Duration::from_millis(500);
        config.retry_max_delay = Duration::from_secs(1);
        config.max_attempts = 30;
        config
    };
    let ingest_config = |shards: u16| {
        let mut config = app.ingest_config();
        config.broker.topology.receipt_shards = shards;
        config
    };
    let topology3 = Topology { receipt_shards: 3, ..app.topology.clone() };

    // N = 2, under load, with webhook failures filling the delay queues.
    let ingest2 = app.start_ingest(ingest_config(2), WITHIN).await;
    let worker2 = app.start_worker(worker_config(2), WITHIN).await;
    app.own_queue(&topology3.shard_queue(2));
    let load = Load::start(&ingest2.base_url);
    load_runs(&load, 20).await;
    receiver.set_script(Script::Always(503));

    // Grow to 3: workers first (they declare and consume shard 2), then ingest.
    let worker3 = app.start_worker(worker_config(3), WITHIN).await;
    let retries_metric = "dlr_worker_retries_scheduled_total";
    let mut retries = metric_value(&worker2.metrics().await, retries_metric, &[]);
    worker2.stop().await;
    let ingest3 = app.start_ingest(ingest_config(3), WITHIN).await;
    load.switch_to(&ingest3);
    ingest2.stop().await;
    load_runs(&load, 30).await;
    receiver.set_script(Script::Ok);
    load_runs(&load, 10).await;
    receiver.set_script(Script::Always(503));

    // Shrink to 2 (DEPLOY.md, "Re-sharding"): ingest first, then retire
    // shard 2's routing key onto shard 0, drain shard 2, then workers.
    let ingest2 = app.start_ingest(ingest_config(2), WITHIN).await;
    load.switch_to(&ingest2);
    ingest3.stop().await;
    let channel = app.broker.channel_for_probe().await.expect("channel");
    channel
        .queue_bind(
            topology3.shard_queue(0).as_str().into(),
            app.topology.exchange.as_str().into(),
            "receipt.2".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("retire receipt.2 onto shard 0");
    channel
        .queue_unbind(
            topology3.shard_queue(2).as_str().into(),
            app.topology.exchange.as_str().into(),
            "receipt.2".into(),
            FieldTable::default(),
        )
        .await
        .expect("unbind shard 2");
    load_runs(&load, 20).await;
    receiver.set_script(Script::Ok);
    let drained =
        eventually(WITHIN, async || app.broker.queue_depth(&topology3.shard_queue(2)).await == 0).await;
    assert!(drained, "the workers at 3 drain the retired shard");
    let worker2 = app.start_worker(worker_config(2), WITHIN).await;
    retries += metric_value(&worker3.metrics().await, retries_metric, &[]);
    worker3.stop().await;
    app.broker.delete_queue(&topology3.shard_queue(2)).await;
    load_runs(&load, 20).await;
    let (accepted, refused) = load.finish().await;

    // Everything accepted reaches the status store, once.
    let pool = db.pool().await;
    let delay_queues = dlr_tests::retry_queues(&worker_config(2));
    let settled = eventually(Duration::from_secs(60), async || {
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM message_status").fetch_one(&pool).await.expect("count");
        let mut empty = true;
        for queue in delay_queues.iter().chain([&topology3.shard_queue(0), &topology3.shard_queue(1)]) {
            empty &= app.broker.queue_depth(queue).await == 0;
        }
        empty && stored as usize >= accepted.len()
    })
    .await;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT message_id, count(*) FROM receipt_events WHERE provider = 'vonage-sms' GROUP BY message_id",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    let stored: HashMap<String, i64> = rows.into_iter().collect();
    let missing: Vec<&String> = accepted.iter().filter(|id| !stored.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted receipts never stored: {missing:?}",
        missing.len(),
        accepted.len()
    );
    assert!(stored.values().all(|n| *n == 1), "each receipt stored exactly once");
    assert!(settled, "nothing left in the shards or the delay queues");
    let parked = app.broker.queue_depth(&app.topology.parked_queue).await;
    assert_eq!(parked, 0, "nothing parked: every webhook call succeeded in the end");
    retries += metric_value(&worker2.metrics().await, retries_metric, &[]);
    assert!(retries > 0.0, "the delay queues were in use across the transitions");
    eprintln!(
        "re-sharding 2 -> 3 -> 2: {} receipts accepted, {refused} answers other than 200 (retried), \
         {retries} retries scheduled",
        accepted.len()
    );
    worker2.stop().await;
    ingest2.stop().await;
    app.cleanup().await;
}
