//! Black-box tests of the Telnyx, Plivo, Sinch and Infobip routes.
//!
//! Each test runs a real `ingest` in-process against the machine's RabbitMQ
//! on its own topology and sends requests the way the providers do, signed
//! as their official SDKs sign (Telnyx: a key pair made here, Ed25519 over
//! `"{timestamp}|{body}"`; Plivo: `get_signature_v3` over the SDK's URL
//! construction; Sinch: `calculate_sinch_event_signature`; Infobip: HTTP
//! Basic). The bodies are the documentation samples in each provider's
//! `ingest/src/providers/<name>/samples/`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use dlr_ingest::providers::{REGISTRY, Verb};
use dlr_ingest::providers::{
    plivo::signature as plivo_sig, sinch::signature as sinch_sig, telnyx::signature as telnyx_sig,
};
use dlr_ingest::signature::{SignatureMode, basic};
use dlr_shared::{Outcome, Provider, ReceiptEvent};
use dlr_tests::corpus::{
    INFOBIP_RESULTS, PLIVO_DELIVERED, PLIVO_UNDELIVERED, SINCH_FULL, SINCH_RECIPIENT, SINCH_SUMMARY,
    TELNYX_DELIVERED, TELNYX_FAILED,
};
use dlr_tests::one_ingest::WAIT;
use dlr_tests::proxy::{BrokerProxy, broker_addr};
use dlr_tests::{OneIngest, TestApp, amqp_url, eventually, ingest_config, metric_value, unique_topology};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

const PUBLIC_BASE: &str = "https://dlr.example.com";

const REJECTED: &str = "dlr_ingest_receipts_rejected_total";
const SIG_FAILURES: &str = "dlr_ingest_signature_failures_total";

/// One ingest on its own topology ([`TestApp`], reached through `Deref`).
type Harness = OneIngest;

async fn start(configure: impl FnOnce(&mut dlr_ingest::Config)) -> Harness {
    OneIngest::start(configure).await
}

async fn start_with(amqp: &str, configure: impl FnOnce(&mut dlr_ingest::Config)) -> Harness {
    OneIngest::start_at(amqp, configure).await
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

// ---------------------------------------------------------------------------
// Telnyx

fn telnyx_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn telnyx_public(keys: &[u8]) -> String {
    keys.iter()
        .map(|s| STANDARD.encode(telnyx_key(*s).verifying_key().to_bytes()))
        .collect::<Vec<_>>()
        .join(",")
}

fn telnyx_request(h: &Harness, body: &str, key: u8, timestamp: i64) -> reqwest::RequestBuilder {
    let ts = timestamp.to_string();
    let signature = telnyx_sig::sign(&telnyx_key(key), &ts, body.as_bytes());
    h.post("/dlr/telnyx", "application/json", body.to_owned())
        .header("telnyx-signature-ed25519", signature)
        .header("telnyx-timestamp", ts)
}

/// Every provider's sample requests (its `samples/` folder, listed in the
/// registry) through a running ingest that serves every provider unsigned:
/// each gets the status its table says, and what reaches the queue is its
/// receipts with their outcomes, in order (courier's `handler_test.go`
/// style: the table lives with the provider, one loop runs them all).
#[tokio::test]
async fn every_provider_sample_is_answered_and_stored_as_its_table_says() {
    let h = start(dlr_tests::app::serve_unsigned).await;
    for entry in REGISTRY {
        for sample in entry.samples() {
            let what = format!("{} {}", entry.name(), sample.name);
            let route = entry.route().path;
            let request = match sample.verb {
                Verb::Get => {
                    h.ingest.client.get(format!("{}{route}?{}", h.ingest.base_url, sample.payload.trim_end()))
                }
                Verb::Post => h.post(route, sample.content_type, sample.payload),
            };
            let (status, _) = h.send(request).await;
            assert_eq!(status, sample.status, "{what}");
            let events = h.events(sample.outcomes.len()).await;
            let outcomes: Vec<Outcome> = events.iter().map(|e| e.outcome).collect();
            assert_eq!(outcomes, sample.outcomes, "{what}");
            assert!(events.iter().all(|e| e.provider == entry.provider()), "{what}");
        }
    }
    h.finish().await;
}

#[tokio::test]
async fn telnyx_signed_webhooks_are_stored_and_forgeries_refused() {
    // Two keys: the rotation overlap. The mode is left to its default, which
    // is enforce because a key is set.
    let h = start(|c| c.providers.telnyx.public_key = Some(telnyx_public(&[2, 1]))).await;

    let (status, body) = h.send(telnyx_request(&h, TELNYX_DELIVERED, 1, now())).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = h.send(telnyx_request(&h, TELNYX_FAILED, 2, now())).await;
    assert_eq!(status, 200, "{body}");
    let events = h.events(2).await;
    assert_eq!(events[0].provider, Provider::Telnyx);
    assert_eq!(
        (events[0].outcome, events[0].recipient.as_deref()),
        (Outcome::Delivered, Some("13125550002"))
    );
    assert_eq!(events[1].outcome, Outcome::Failed);
    assert_eq!(events[1].error.as_ref().map(|e| (e.code.as_str(), e.retryable)), Some(("40002", true)));
    assert_eq!(body["receipts"][0]["event_id"], events[1].event_id.as_str());

    // Tampered body, unknown key, replayed timestamp, stale, missing headers.
    let tampered =
        telnyx_request(&h, TELNYX_DELIVERED, 1, now()).body(TELNYX_DELIVERED.replace("delivered", "expired"));
    assert_eq!(
        h.send(tampered).await,
        (401, json!({"error": "signature check failed", "reason": "mismatch"}))
    );
    assert_eq!(h.send(telnyx_request(&h, TELNYX_DELIVERED, 3, now())).await.0, 401);
    // A signature moved to another timestamp (the timestamp is signed too).
    let earlier = (now() - 7).to_string();
    let moved = h
        .post("/dlr/telnyx", "application/json", TELNYX_DELIVERED)
        .header(
            "telnyx-signature-ed25519",
            telnyx_sig::sign(&telnyx_key(1), &earlier, TELNYX_DELIVERED.as_bytes()),
        )
        .header("telnyx-timestamp", now().to_string());
    assert_eq!(h.send(moved).await.0, 401);
    assert_eq!(h.send(telnyx_request(&h, TELNYX_DELIVERED, 1, now() - 301)).await.0, 401);
    assert_eq!(h.send(h.post("/dlr/telnyx", "application/json", TELNYX_DELIVERED)).await.0, 401);
    assert_eq!(h.metric(SIG_FAILURES, &[("provider", "telnyx"), ("reason", "mismatch")]).await, 3.0);
    assert_eq!(h.metric(SIG_FAILURES, &[("provider", "telnyx"), ("reason", "stale")]).await, 1.0);
    assert_eq!(
        h.quarantined().await.len(),
        4,
        "every refused request with a well-formed signature is kept for replay (not the unsigned one)"
    );
    h.events(0).await;
    h.finish().await;
}

#[tokio::test]
async fn telnyx_log_only_accepts_and_counts() {
    let h = start(|c| {
        c.providers.telnyx.mode = Some(SignatureMode::LogOnly);
        c.providers.telnyx.public_key = Some(telnyx_public(&[1]));
    })
    .await;
    let (status, _) = h.send(telnyx_request(&h, TELNYX_DELIVERED, 9, now())).await;
    assert_eq!(status, 200, "log-only accepts a bad signature");
    h.events(1).await;
    assert_eq!(h.metric(SIG_FAILURES, &[("provider", "telnyx"), ("reason", "mismatch")]).await, 1.0);
    h.finish().await;
}

#[tokio::test]
async fn enforce_without_a_key_does_not_start() {
    let topology = unique_topology();
    for configure in [
        (|c: &mut dlr_ingest::Config| c.providers.telnyx.mode = Some(SignatureMode::Enforce)) as fn(&mut _),
        |c| c.providers.sinch.mode = Some(SignatureMode::Enforce),
        |c| c.providers.infobip.mode = Some(SignatureMode::LogOnly),
        |c| c.providers.plivo.auth_token = Some("token".into()),
    ] {
        let mut config = ingest_config(&topology, &amqp_url());
        configure(&mut config);
        let Err(error) = dlr_ingest::Application::build(config).await else {
            panic!("ingest must refuse to start");
        };
        let text = error.to_string();
        assert!(
            ["TELNYX_PUBLIC_KEY", "SINCH_WEBHOOK_SECRET", "INFOBIP_BASIC_AUTH", "PUBLIC_BASE_URL"]
                .iter()
                .any(|v| text.contains(v)),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// Plivo

fn plivo_pairs(form: &str) -> Vec<(String, String)> {
    dlr_ingest::providers::decode_urlencoded(form.as_bytes(), "form").expect("form").pairs().to_vec()
}

#[tokio::test]
async fn plivo_v3_and_v2_signatures() {
    let h = start(|c| {
        c.providers.plivo.auth_token = Some("new-token,old-token".into());
        c.providers.plivo.accept_v2 = true;
        c.signatures.public_base_url = Some(url::Url::parse(PUBLIC_BASE).expect("url"));
    })
    .await;
    let url = format!("{PUBLIC_BASE}/dlr/plivo");
    // POST form, V3 made with the old token (rotation), listed after another.
    let v3 = plivo_sig::sign_v3(
        plivo_sig::Method::Post,
        &url,
        &plivo_pairs(PLIVO_DELIVERED),
        "91832",
        "old-token",
    );
    let post = |sig: &str, body: &str| {
        h.post("/dlr/plivo", "application/x-www-form-urlencoded", body.to_owned())
            .header("X-Plivo-Signature-V3", format!("bm90LWl0,{sig}"))
            .header("X-Plivo-Signature-V3-Nonce", "91832")
    };
    assert_eq!(h.send(post(&v3, PLIVO_DELIVERED)).await.0, 200);
    // GET with the fields in the query: the query is what V3 signs.
    let get_url = format!("{url}?{PLIVO_UNDELIVERED}");
    let v3_get = plivo_sig::sign_v3(plivo_sig::Method::Get, &get_url, &[], "n2", "new-token");
    let get = h
        .ingest
        .client
        .get(format!("{}/dlr/plivo?{PLIVO_UNDELIVERED}", h.ingest.base_url))
        .header("X-Plivo-Signature-V3", v3_get.as_str())
        .header("X-Plivo-Signature-V3-Nonce", "n2");
    assert_eq!(h.send(get).await.0, 200);
    // V2 only (no V3 header): URL + nonce.
    let v2 = plivo_sig::sign_v2(&url, "55555", "new-token");
    let v2_request = h
        .post(
            "/dlr/plivo",
            "application/x-www-form-urlencoded",
            PLIVO_DELIVERED.replace("Sequence=2", "Sequence=4"),
        )
        .header("X-Plivo-Signature-V2", v2)
        .header("X-Plivo-Signature-V2-Nonce", "55555");
    assert_eq!(h.send(v2_request).await.0, 200);
    let events = h.events(3).await;
    assert_eq!(events[0].outcome, Outcome::Delivered);
    assert_eq!(events[1].outcome, Outcome::Failed);
    assert_eq!(events[1].error.as_ref().map(|e| e.code.as_str()), Some("80"));
    assert_eq!(events[0].event_id, events[2].event_id, "same report, same event id whatever the signature");

    // Tampered body and a URL Plivo did not call.
    let tampered = PLIVO_DELIVERED.replace("Status=delivered", "Status=failed");
    assert_eq!(h.send(post(&v3, &tampered)).await.0, 401);
    let other_url = plivo_sig::sign_v3(
        plivo_sig::Method::Post,
        "https://other.example.com/dlr/plivo",
        &plivo_pairs(PLIVO_DELIVERED),
        "91832",
        "old-token",
    );
    assert_eq!(h.send(post(&other_url, PLIVO_DELIVERED)).await.0, 401);
    assert_eq!(h.metric(SIG_FAILURES, &[("provider", "plivo"), ("reason", "mismatch")]).await, 2.0);
    h.events(0).await;
    h.finish().await;
}

// ---------------------------------------------------------------------------
// Sinch

fn sinch_request(h: &Harness, body: &str, secret: &str, timestamp: i64) -> reqwest::RequestBuilder {
    let ts = timestamp.to_string();
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let signature = sinch_sig::sign(body.as_bytes(), &nonce, &ts, secret);
    h.post("/dlr/sinch", "application/json", body.to_owned())
        .header(sinch_sig::SIGNATURE_HEADER, signature)
        .header(sinch_sig::NONCE_HEADER, nonce)
        .header(sinch_sig::TIMESTAMP_HEADER, ts)
        .header("x-sinch-webhook-signature-algorithm", "HmacSHA256")
}

#[tokio::test]
async fn sinch_reports_per_recipient_full_and_summary() {
    let h = start(|c| c.providers.sinch.webhook_secret = Some("current,previous".into())).await;
    assert_eq!(h.send(sinch_request(&h, SINCH_RECIPIENT, "previous", now())).await.0, 200);
    let (status, body) = h.send(sinch_request(&h, SINCH_FULL, "current", now())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["receipts"].as_array().map(Vec::len), Some(3));
    let (status, body) = h.send(sinch_request(&h, SINCH_SUMMARY, "current", now())).await;
    assert_eq!((status, body["ignored"].as_u64()), (200, Some(1)), "{body}");
    let events = h.events(4).await;
    let ids: Vec<&str> = events.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "01W4FFL35P4NC4K35SMSBATCH9:12017777777",
            "01W4FFL35P4NC4K35SMSBATCH1:12017777777",
            "01W4FFL35P4NC4K35SMSBATCH1:12018888888",
            "01W4FFL35P4NC4K35SMSBATCH1:12019999999"
        ]
    );
    assert_eq!(events[3].outcome, Outcome::Failed);
    assert_eq!(h.metric("dlr_ingest_reports_ignored_total", &[("provider", "sinch")]).await, 1.0);

    // Tampered body, wrong secret, stale (beyond SIGNATURE_MAX_AGE_SECONDS).
    let tampered = sinch_request(&h, SINCH_RECIPIENT, "current", now())
        .body(SINCH_RECIPIENT.replace("Delivered", "Failed"));
    assert_eq!(h.send(tampered).await.0, 401);
    assert_eq!(h.send(sinch_request(&h, SINCH_RECIPIENT, "guess", now())).await.0, 401);
    assert_eq!(h.send(sinch_request(&h, SINCH_RECIPIENT, "current", now() - 259_201)).await.0, 401);
    assert_eq!(h.metric(SIG_FAILURES, &[("provider", "sinch"), ("reason", "stale")]).await, 1.0);
    h.events(0).await;
    h.finish().await;
}

// ---------------------------------------------------------------------------
// Infobip and batches

fn infobip(h: &Harness, body: impl Into<reqwest::Body>, credentials: &str) -> reqwest::RequestBuilder {
    h.post("/dlr/infobip", "application/json", body).header("authorization", basic::header_value(credentials))
}

fn infobip_report(i: usize) -> Value {
    dlr_tests::samples::infobip_report(&format!("msg-{i:05}"), 400)
}

#[tokio::test]
async fn infobip_batches_with_basic_auth() {
    let h = start(|c| c.providers.infobip.basic_auth = Some("infobip:new\ninfobip:old".into())).await;
    let (status, body) = h.send(infobip(&h, INFOBIP_RESULTS, "infobip:old")).await;
    assert_eq!(status, 200, "{body}");
    let events = h.events(3).await;
    let outcomes: Vec<Outcome> = events.iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Delivered, Outcome::Failed, Outcome::Pending],
        "DELIVERED_TO_OPERATOR is pending"
    );
    assert_eq!(
        events[1].provider_timestamp.map(|t| t.to_rfc3339()),
        Some("2019-04-09T19:01:56.494+00:00".to_owned()),
        "-0300 offsets are read"
    );

    // A full default bucket: 100 reports, larger than the 64 KiB default body limit.
    let full: Vec<Value> = (0..100).map(infobip_report).collect();
    let full = serde_json::to_vec(&json!({ "results": full })).expect("json");
    assert!(full.len() > 65_536, "the batch must exceed the default limit, is {} bytes", full.len());
    let (status, body) = h.send(infobip(&h, full, "infobip:new")).await;
    assert_eq!((status, body["receipts"].as_array().map(Vec::len)), (200, Some(100)), "{body}");
    assert_eq!(h.events(100).await.len(), 100);

    // Wrong or missing credentials.
    assert_eq!(h.send(infobip(&h, INFOBIP_RESULTS, "infobip:wrong")).await.0, 401);
    assert_eq!(h.send(h.post("/dlr/infobip", "application/json", INFOBIP_RESULTS)).await.0, 401);
    let copies = h.quarantined().await;
    assert_eq!(copies.len(), 1, "a request without credentials is refused, not copied");
    assert_eq!(
        copies[0]["request"]["headers"]["authorization"], "Basic [redacted]",
        "passwords stay out of the queue"
    );
    h.events(0).await;
    h.finish().await;
}

#[tokio::test]
async fn one_malformed_element_does_not_cost_its_siblings() {
    let h = start(|c| c.providers.infobip.basic_auth = Some("u:p".into())).await;
    let mut reports: Vec<Value> = (0..5).map(infobip_report).collect();
    reports[2] = json!({"status": {"name": "DELIVERED_TO_HANDSET"}, "to": "41793026727"});
    let (status, body) =
        h.send(infobip(&h, serde_json::to_vec(&json!({ "results": reports })).expect("json"), "u:p")).await;
    assert_eq!((status, body["quarantined"].as_u64()), (200, Some(1)), "{body}");
    let events = h.events(4).await;
    assert!(events.iter().all(|e| e.message_id.as_str() != "msg-00002"));
    let copies = h.quarantined().await;
    assert_eq!(copies.len(), 1);
    assert!(copies[0]["detail"].as_str().unwrap_or("").contains("results[2].messageId"), "{}", copies[0]);
    assert_eq!(h.metric(REJECTED, &[("provider", "infobip"), ("reason", "invalid_fields")]).await, 1.0);
    h.finish().await;
}

#[tokio::test]
async fn hostile_batches_are_bounded() {
    let h = start(|c| c.providers.infobip.basic_auth = Some("u:p".into())).await;
    // 10,000 elements: refused whole, nothing published.
    let many = format!(
        r#"{{"results":[{}]}}"#,
        vec![r#"{"messageId":"m","status":{"name":"X"}}"#; 10_000].join(",")
    );
    let (status, body) = h.send(infobip(&h, many, "u:p")).await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("invalid_fields")), "{body}");
    // Nested garbage inside otherwise valid reports is kept in raw, not refused.
    let mut nested = infobip_report(1);
    nested["callbackData"] = json!({"a": [[[[{"b": null}]]]]});
    nested["status"]["name"] = json!(["DELIVERED"]);
    let garbage = json!({"results": [nested, infobip_report(2), "text", 12, null, [1, 2]]});
    let (status, body) = h.send(infobip(&h, serde_json::to_vec(&garbage).expect("json"), "u:p")).await;
    assert_eq!((status, body["quarantined"].as_u64()), (200, Some(4)), "{body}");
    // Duplicates within one batch: one event id, both confirmed.
    let duplicated = json!({"results": [infobip_report(7), infobip_report(7)]});
    let (status, body) = h.send(infobip(&h, serde_json::to_vec(&duplicated).expect("json"), "u:p")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["receipts"][0]["event_id"], body["receipts"][1]["event_id"]);
    let events = h.events(4).await;
    // The nested report's unusable `status.name` falls back to its group name;
    // its nested `callbackData` is no reference but stays in `raw`.
    assert_eq!((events[0].status.as_str(), events[0].client_ref.as_deref()), ("DELIVERED", None));
    assert_eq!(events[0].raw["callbackData"], json!({"a": [[[[{"b": null}]]]]}));
    assert_eq!(events[2].event_id, events[3].event_id);
    // Too deep to parse at all: a clear 400.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    assert_eq!(h.send(infobip(&h, deep, "u:p")).await.1["reason"], "malformed_body");
    h.finish().await;
}

#[tokio::test]
async fn broker_gone_mid_batch_answers_503_and_the_retry_stores_every_receipt() {
    let mut proxy = BrokerProxy::reserve(broker_addr()).await;
    proxy.start().await;
    let h = start_with(&proxy.amqp_url(), |c| {
        c.providers.infobip.basic_auth = Some("u:p".into());
        c.confirm_timeout = Duration::from_millis(1500);
    })
    .await;
    let reports: Vec<Value> = (0..100).map(infobip_report).collect();
    let body = serde_json::to_vec(&json!({ "results": reports })).expect("json");
    // One receipt first, so that ingest holds an open publishing channel
    // (opening one needs the broker's answer, held back below).
    let warm_up = serde_json::to_vec(&json!({ "results": [infobip_report(100)] })).expect("json");
    assert_eq!(h.send(infobip(&h, warm_up, "u:p")).await.0, 200);
    assert_eq!(h.broker.drain(&h.topology.queue, Duration::from_secs(1)).await.len(), 1);
    // The broker's answers are held back, so no confirm can reach ingest
    // before the cut: once the whole batch is in the queue (published,
    // none confirmed), the connection is cut mid-batch, every time.
    proxy.stall(true);
    let request = tokio::spawn(infobip(&h, body.clone(), "u:p").send());
    let published = eventually(WAIT, async || h.broker.queue_depth(&h.topology.queue).await == 100).await;
    assert!(published, "the batch reaches the queue while its confirms are held back");
    proxy.cut().await;
    proxy.stall(false);
    let response = request.await.expect("request task").expect("response");
    let first = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap_or("").to_owned());
    assert_eq!((first, retry_after.as_deref()), (503, Some("5")), "one missing confirm gives 503");
    // While the broker is away, every attempt is 503.
    assert_eq!(h.send(infobip(&h, body.clone(), "u:p")).await.0, 503);
    proxy.start().await;
    assert!(h.ingest.wait_connected(Duration::from_secs(30)).await, "ingest reconnects");
    let (status, answer) = h.send(infobip(&h, body, "u:p")).await;
    assert_eq!(status, 200, "the provider's retry is stored: {answer}");
    // Every receipt is in the queue twice: the copy stored before the cut
    // (never confirmed) and the retry's, with the same event id
    // (de-duplicated downstream).
    let messages = h.broker.drain(&h.topology.queue, Duration::from_secs(1)).await;
    let mut copies: HashMap<String, usize> = HashMap::new();
    for m in &messages {
        let event = ReceiptEvent::from_json(&m.delivery.data).expect("event");
        *copies.entry(event.message_id.to_string()).or_default() += 1;
    }
    let expected: BTreeSet<String> = (0..100).map(|i| format!("msg-{i:05}")).collect();
    assert_eq!(copies.keys().cloned().collect::<BTreeSet<_>>(), expected, "every receipt stored");
    assert!(copies.values().all(|n| *n == 2), "the unconfirmed copy and the retry's: {copies:?}");
    h.finish().await;
}

// ---------------------------------------------------------------------------
// Through the worker to the status store

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_reaches_the_status_store() {
    let app = TestApp::new().await;
    let db = app.create_database().await;
    let mut worker_cfg = app.worker_config();
    worker_cfg.route_delivered = "postgres".to_owned();
    worker_cfg.route_failed = "postgres".to_owned();
    worker_cfg.route_pending = "postgres".to_owned();
    worker_cfg.database_url = Some(db.url.clone().into());
    let mut config = app.ingest_config();
    config.providers.telnyx.public_key = Some(telnyx_public(&[1]));
    config.providers.sinch.webhook_secret = Some("s".into());
    config.providers.infobip.basic_auth = Some("u:p".into());
    config.providers.plivo.auth_token = Some("t".into());
    config.signatures.public_base_url = Some(url::Url::parse(PUBLIC_BASE).expect("url"));
    let ingest = app.start_ingest(config, WAIT).await;
    let worker = app.start_worker(worker_cfg, WAIT).await;
    let h = Harness { app, ingest };

    assert_eq!(h.send(telnyx_request(&h, TELNYX_DELIVERED, 1, now())).await.0, 200);
    let url = format!("{PUBLIC_BASE}/dlr/plivo");
    let v3 = plivo_sig::sign_v3(plivo_sig::Method::Post, &url, &plivo_pairs(PLIVO_DELIVERED), "n", "t");
    let plivo = h
        .post("/dlr/plivo", "application/x-www-form-urlencoded", PLIVO_DELIVERED)
        .header("X-Plivo-Signature-V3", v3)
        .header("X-Plivo-Signature-V3-Nonce", "n");
    assert_eq!(h.send(plivo).await.0, 200);
    assert_eq!(h.send(sinch_request(&h, SINCH_FULL, "s", now())).await.0, 200);
    assert_eq!(h.send(infobip(&h, INFOBIP_RESULTS, "u:p")).await.0, 200);

    let pool = db.pool().await;
    let expected = 1 + 1 + 3 + 3;
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    eventually(WAIT, async || {
        rows = sqlx::query_as(
            "SELECT provider, message_id, outcome, status FROM message_status ORDER BY provider, message_id",
        )
        .fetch_all(&pool)
        .await
        .expect("status query");
        rows.len() >= expected
    })
    .await;
    let providers: BTreeSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(providers, BTreeSet::from(["infobip", "plivo", "sinch", "telnyx"]), "{rows:?}");
    assert_eq!(rows.len(), expected, "{rows:?}");
    assert!(rows.contains(&(
        "infobip".into(),
        "c9f2a6d1-0b3e-4f7a-9e58-1d2c3b4a5f60".into(),
        "pending".into(),
        "DELIVERED_TO_OPERATOR".into()
    )));
    assert!(rows.contains(&(
        "sinch".into(),
        "01W4FFL35P4NC4K35SMSBATCH1:12019999999".into(),
        "failed".into(),
        "Failed".into()
    )));
    let routed = metric_value(
        &worker.metrics().await,
        "dlr_worker_handler_results_total",
        &[("handler", "postgres"), ("result", "ok")],
    );
    assert_eq!(routed, expected as f64);

    pool.close().await;
    worker.stop().await;
    h.finish().await;
}
