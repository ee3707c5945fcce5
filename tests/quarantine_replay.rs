//! Replays of quarantined requests after a secret is fixed, through the
//! real `worker replay-quarantine` code and a real ingest and RabbitMQ.
//!
//! With `INGEST_QUARANTINE_REPLAY_KEY`, ingest seals every copy; a replay
//! carrying the seal is verified as of its first receipt (a Telnyx
//! signature older than 300 s passes) with its Basic credential restored
//! (Infobip), and the provider signature is checked all the same. The
//! replay headers sent from outside gain nothing.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use dlr_ingest::providers::telnyx::signature as telnyx_sig;
use dlr_ingest::signature::basic;
use dlr_shared::quarantine::{QuarantinedRequest, REPLAY_HEADER, REPLAY_SEAL_HEADER};
use dlr_tests::{TestApp, TestIngest, amqp_url, ingest_config};
use dlr_worker::replay::{ReplayReport, replay_quarantine};
use ed25519_dalek::SigningKey;
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_millis(300);
const REPLAY_KEY: &str = "replay-key-0123456789abcdef-0123456789";
const TELNYX_DELIVERED: &str =
    include_str!("../ingest/src/providers/telnyx/samples/telnyx-message-finalized-delivered.json");
const INFOBIP_RESULTS: &str = include_str!("../ingest/src/providers/infobip/samples/infobip-results.json");

fn telnyx_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn telnyx_public(seed: u8) -> String {
    STANDARD.encode(telnyx_key(seed).verifying_key().to_bytes())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An ingest on `app`'s topology configured by `configure`, with the replay key.
async fn ingest(app: &TestApp, configure: impl FnOnce(&mut dlr_ingest::Config)) -> TestIngest {
    let mut config = ingest_config(&app.topology, &amqp_url());
    config.quarantine_replay_key = Some(REPLAY_KEY.into());
    configure(&mut config);
    app.start_ingest(config, WAIT).await
}

/// A Telnyx webhook signed by key `seed` at `timestamp`.
fn telnyx(ingest: &TestIngest, body: &str, seed: u8, timestamp: i64) -> reqwest::RequestBuilder {
    let ts = timestamp.to_string();
    ingest
        .client
        .post(format!("{}/dlr/telnyx", ingest.base_url))
        .header("content-type", "application/json")
        .header("telnyx-signature-ed25519", telnyx_sig::sign(&telnyx_key(seed), &ts, body.as_bytes()))
        .header("telnyx-timestamp", ts)
        .body(body.to_owned())
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn replay(app: &TestApp, ingest: &TestIngest) -> ReplayReport {
    let url = url::Url::parse(&ingest.base_url).expect("url");
    replay_quarantine(&app.broker.channel, &app.topology, &url, None).await.expect("the replay runs")
}

/// Posts `body` to `route` with the HTTP Basic `credential` to an ingest
/// configured by `configure` with another one: refused (401) and copied.
/// Checks that the copy holds no password, puts it back in the quarantine
/// for a replay and returns it.
async fn refused_basic_copy(
    app: &TestApp,
    route: &str,
    configure: impl FnOnce(&mut dlr_ingest::Config),
    credential: &str,
    body: &str,
) -> QuarantinedRequest {
    let old = ingest(app, configure).await;
    let request = old
        .client
        .post(format!("{}{route}", old.base_url))
        .header("content-type", "application/json")
        .header("authorization", basic::header_value(credential))
        .body(body.to_owned());
    assert_eq!(send(request).await.0, 401);
    old.stop().await;
    let copies = app.broker.drain(&app.topology.quarantine_queue, SETTLE).await;
    assert_eq!(copies.len(), 1);
    let copy = QuarantinedRequest::from_json(&copies[0].delivery.data).expect("a copy");
    assert_eq!(copy.request.headers.get("authorization"), Some(&Some("Basic [redacted]".to_owned())));
    let password = credential.split_once(':').map_or(credential, |(_, p)| p);
    assert!(!String::from_utf8_lossy(&copies[0].delivery.data).contains(password));
    app.broker.publish_raw(&app.topology.quarantine_queue, &copies[0].delivery.data).await;
    copy
}

/// Replays the quarantine's one copy through an ingest configured by
/// `configure` (the credential fixed): it must be replayed and leave the
/// quarantine. Returns the `events` it stored.
async fn replayed_once_fixed(
    app: &TestApp,
    configure: impl FnOnce(&mut dlr_ingest::Config),
    events: usize,
) -> Vec<dlr_shared::ReceiptEvent> {
    let fixed = ingest(app, configure).await;
    let report = replay(app, &fixed).await;
    assert_eq!((report.replayed, report.kept), (1, 0), "{report:?}");
    let stored = app.receipts(events, WAIT, SETTLE).await;
    assert!(app.quarantined(SETTLE).await.is_empty());
    fixed.stop().await;
    stored
}

/// A genuine Telnyx webhook refused because ingest had the wrong public key
/// is replayed after the key is fixed, when its signature is more than
/// 300 s old: the seal lets ingest check freshness as of the first receipt.
/// A forged request quarantined next to it is still refused on replay (the
/// signature check is never skipped) and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telnyx_copy_older_than_300_s_is_replayed_once_the_key_is_fixed() {
    let app = TestApp::new().await;
    let wrong = ingest(&app, |c| c.providers.telnyx.public_key = Some(telnyx_public(9))).await;
    // 298 s old when it arrives (fresh), more than 300 s old at the replay.
    let signed_at = now() - 298;
    assert_eq!(send(telnyx(&wrong, TELNYX_DELIVERED, 1, signed_at)).await.0, 401, "wrong key configured");
    let forged = TELNYX_DELIVERED.replace("delivered", "delivery_failed");
    assert_eq!(send(telnyx(&wrong, &forged, 3, now())).await.0, 401, "signed by nobody we know");
    wrong.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let fixed = ingest(&app, |c| c.providers.telnyx.public_key = Some(telnyx_public(1))).await;
    // Sent again now by anyone, it is too old (and copied: that copy was
    // stale when received, so it stays refused on replay too).
    let (status, body) = send(telnyx(&fixed, TELNYX_DELIVERED, 1, signed_at)).await;
    assert_eq!((status, &body["reason"]), (401, &Value::from("stale")), "sent again by anyone: too old");
    let report = replay(&app, &fixed).await;
    assert_eq!((report.examined, report.replayed, report.kept), (3, 1, 2), "{report:?}");
    let events = app.receipts(1, WAIT, SETTLE).await;
    assert_eq!(events[0].status, "delivered");
    let left = app.quarantined(SETTLE).await;
    assert_eq!(left.len(), 2, "the forged copy and the one stale on arrival stay, once each: {left:?}");
    let bodies: Vec<Vec<u8>> = left
        .iter()
        .map(|c| STANDARD.decode(c["request"]["body_base64"].as_str().unwrap_or("")).expect("base64"))
        .collect();
    assert!(bodies.contains(&forged.into_bytes()), "the forged copy is kept");
    fixed.stop().await;
    app.cleanup().await;
}

/// An Infobip batch refused because ingest had the old Basic credential is
/// replayed after the new one is configured: the copy keeps no password,
/// only a digest under the replay key, from which ingest restores the
/// configured credential it matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infobip_copy_is_replayed_with_its_credential_once_it_is_configured() {
    let app = TestApp::new().await;
    let old_pass =
        |c: &mut dlr_ingest::Config| c.providers.infobip.basic_auth = Some("infobip:old-pass".into());
    refused_basic_copy(&app, "/dlr/infobip", old_pass, "infobip:new, pass", INFOBIP_RESULTS).await;

    // Still the old credential: refused again, kept.
    let unchanged = ingest(&app, |c| c.providers.infobip.basic_auth = Some("infobip:old-pass".into())).await;
    let report = replay(&app, &unchanged).await;
    assert_eq!((report.replayed, report.kept), (0, 1), "{report:?}");
    unchanged.stop().await;

    let both = |c: &mut dlr_ingest::Config| {
        c.providers.infobip.basic_auth = Some("infobip:new, pass\ninfobip:old-pass".into());
    };
    let events = replayed_once_fixed(&app, both, 3).await;
    assert!(events.iter().all(|e| e.provider == dlr_shared::Provider::Infobip));
    app.cleanup().await;
}

/// The replay headers sent from outside gain nothing: a stale genuine
/// request stays stale with `x-dlr-replay`, a made-up seal is refused, and
/// so is a real seal moved onto another request or kept on an altered one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_headers_from_outside_gain_nothing() {
    let app = TestApp::new().await;
    let h = ingest(&app, |c| c.providers.telnyx.public_key = Some(telnyx_public(1))).await;
    let stale = now() - 400;
    let (status, body) = send(telnyx(&h, TELNYX_DELIVERED, 1, stale).header(REPLAY_HEADER, "1")).await;
    assert_eq!((status, &body["reason"]), (401, &Value::from("stale")));
    let made_up = format!("v1:{}::{}", chrono::Utc::now().timestamp_micros(), "A".repeat(43));
    let (status, body) =
        send(telnyx(&h, TELNYX_DELIVERED, 1, stale).header(REPLAY_SEAL_HEADER, made_up)).await;
    assert_eq!((status, &body["reason"]), (401, &Value::from("replay_seal")));

    // A real seal: ingest's copy of a request it refused (stale).
    assert_eq!(send(telnyx(&h, TELNYX_DELIVERED, 1, stale)).await.0, 401);
    let copies = app.quarantined(SETTLE).await;
    assert_eq!(copies.len(), 1, "only the request without replay headers was copied: {copies:?}");
    let seal = copies[0]["request"]["seal"].as_str().expect("a sealed copy").to_owned();
    // On the same request it opens, and the request is still stale as of its first receipt.
    let (status, body) = send(telnyx(&h, TELNYX_DELIVERED, 1, stale).header(REPLAY_SEAL_HEADER, &seal)).await;
    assert_eq!((status, &body["reason"]), (401, &Value::from("stale")), "stale then, stale now");
    // On an altered body, or on another (fresh, validly signed) request, it does not.
    let altered = TELNYX_DELIVERED.replace("delivered", "delivery_failed");
    let (status, body) = send(telnyx(&h, &altered, 1, stale).header(REPLAY_SEAL_HEADER, &seal)).await;
    assert_eq!((status, &body["reason"]), (401, &Value::from("replay_seal")));
    let (status, body) = send(telnyx(&h, &altered, 1, now()).header(REPLAY_SEAL_HEADER, &seal)).await;
    assert_eq!((status, &body["reason"]), (401, &Value::from("replay_seal")));
    app.assert_no_receipts(SETTLE).await;
    assert!(app.quarantined(SETTLE).await.is_empty(), "refused seals are not copied");
    h.stop().await;
    app.cleanup().await;
}

/// A Vonage SMS receipt (GET, signed query) refused because ingest lacked
/// the account's current secret is replayed after the secret is added,
/// when its `timestamp` is older than `SIGNATURE_MAX_AGE_SECONDS` (2 s here):
/// the query is sealed as the replay sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vonage_get_copy_older_than_the_window_is_replayed_once_the_secret_is_added() {
    use dlr_ingest::providers::vonage_sms::signature::{self as vonage_sms, SigMethod};
    use dlr_ingest::signature::SignatureMode;
    let app = TestApp::new().await;
    let vonage = |secrets: &'static str| {
        move |c: &mut dlr_ingest::Config| {
            c.providers.vonage_sms.mode = Some(SignatureMode::Enforce);
            c.providers.vonage_sms.method = SigMethod::Sha256Hmac;
            c.providers.vonage_sms.secret = Some(secrets.into());
            c.signatures.max_age = Duration::from_secs(2);
        }
    };
    let old = ingest(&app, vonage("old-secret")).await;
    let mut fields: Vec<(String, String)> =
        url::form_urlencoded::parse(dlr_tests::vonage_form("0B000000000000C1", "delivered").as_bytes())
            .into_owned()
            .collect();
    fields.push(("timestamp".into(), now().to_string()));
    let sig = vonage_sms::sign(&fields, "new-secret", SigMethod::Sha256Hmac);
    fields.push(("sig".into(), sig));
    let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&fields).finish();
    let (status, body) = send(old.client.get(format!("{}/dlr/vonage?{query}", old.base_url))).await;
    assert_eq!((status, &body["reason"]), (401, &Value::from("mismatch")), "{body}");
    old.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let fixed = ingest(&app, vonage("new-secret,old-secret")).await;
    let (status, body) = send(fixed.client.get(format!("{}/dlr/vonage?{query}", fixed.base_url))).await;
    assert_eq!((status, &body["reason"]), (401, &Value::from("stale")), "sent again by anyone: too old");
    let report = replay(&app, &fixed).await;
    assert_eq!((report.examined, report.replayed, report.kept), (2, 1, 1), "{report:?}");
    let events = app.receipts(1, WAIT, SETTLE).await;
    assert_eq!(events[0].message_id.as_str(), "0B000000000000C1");
    fixed.stop().await;
    app.cleanup().await;
}

/// A genuine batch larger than the single-receipt routes' body limit (an
/// Infobip report of 600 results, about 330 KiB) is copied whole, not cut,
/// and replayed in full once the credential is fixed: with the default
/// limits every request a route accepts can come back from the quarantine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_genuine_batch_is_copied_whole_and_replayed() {
    const RESULTS: usize = 600;
    let app = TestApp::new().await;
    let sample: Value = serde_json::from_str(INFOBIP_RESULTS).expect("the sample parses");
    let one = sample["results"][0].clone();
    let results: Vec<Value> = (0..RESULTS)
        .map(|n| {
            let mut result = one.clone();
            result["messageId"] = Value::from(format!("LARGE-BATCH-{n:04}"));
            result
        })
        .collect();
    let batch = serde_json::json!({ "results": results }).to_string();
    assert!(batch.len() > 256 * 1024, "{} bytes", batch.len());

    let old_pass =
        |c: &mut dlr_ingest::Config| c.providers.infobip.basic_auth = Some("infobip:old-pass".into());
    let copy = refused_basic_copy(&app, "/dlr/infobip", old_pass, "infobip:new-pass", &batch).await;
    assert!(!copy.request.body_truncated, "copied whole");
    assert_eq!(copy.request.body, batch.as_bytes());

    let new_pass =
        |c: &mut dlr_ingest::Config| c.providers.infobip.basic_auth = Some("infobip:new-pass".into());
    let events = replayed_once_fixed(&app, new_pass, RESULTS).await;
    let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(ids.len(), RESULTS, "every result of the batch is stored");
    app.cleanup().await;
}

/// Sinch's Basic credential is restored on replay as Infobip's is: a
/// delivery report refused under the old password is replayed once the new
/// one is configured, and the copy never holds the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinch_basic_copy_is_replayed_with_its_credential_once_it_is_configured() {
    const SINCH_DELIVERED: &str =
        include_str!("../ingest/src/providers/sinch/samples/sinch-recipient-delivered.json");
    let app = TestApp::new().await;
    let old_pass = |c: &mut dlr_ingest::Config| c.providers.sinch.basic_auth = Some("sinch:old-pass".into());
    refused_basic_copy(&app, "/dlr/sinch", old_pass, "sinch:rotated-pass", SINCH_DELIVERED).await;

    let both = |c: &mut dlr_ingest::Config| {
        c.providers.sinch.basic_auth = Some("sinch:rotated-pass\nsinch:old-pass".into());
    };
    let events = replayed_once_fixed(&app, both, 1).await;
    assert_eq!(events[0].provider, dlr_shared::Provider::Sinch);
    app.cleanup().await;
}
