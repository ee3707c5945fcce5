//! Per-account credentials (`PROVIDER_ACCOUNTS_FILE`) for the providers
//! whose accounts are named by a signed body field (Telnyx
//! `organization_id`) or only by the callback URL (`/dlr/sinch/{account}`,
//! `/dlr/infobip/{account}`), each against a real ingest and RabbitMQ: one
//! account's credential never verifies a receipt naming another account,
//! its own does, a previous one of a rotation does and is counted as such,
//! and a quarantined copy is replayed with the same account's credentials.
//!
//! Requests are made as the providers make them, with the helpers the other
//! tests use (Telnyx: Ed25519 over `"{timestamp}|{body}"`; Sinch: the SDK's
//! `calculate_sinch_event_signature`; Infobip: HTTP Basic).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use dlr_ingest::providers::{sinch::signature as sinch_sig, telnyx::signature as telnyx_sig};
use dlr_ingest::signature::basic;
use dlr_tests::corpus::{INFOBIP_RESULTS, SINCH_RECIPIENT, TELNYX_DELIVERED};
use dlr_tests::{OneIngest, TestApp, TestIngest, amqp_url, ingest_config};
use dlr_worker::replay::replay_quarantine;
use ed25519_dalek::SigningKey;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const JSON: &str = "application/json";
const VERIFIED: &str = "dlr_ingest_signature_verified_total";

/// An accounts file holding `text`, removed when dropped.
struct AccountsFile(PathBuf);

impl AccountsFile {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("dlr-accounts-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, text).expect("write the accounts file");
        Self(path)
    }
}

impl Drop for AccountsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn start(file: &AccountsFile, configure: impl FnOnce(&mut dlr_ingest::Config)) -> OneIngest {
    let path = file.0.clone();
    OneIngest::start(|c| {
        c.signatures.accounts_file = Some(path);
        configure(c);
    })
    .await
}

/// `(reason, status)` of a refused request, for one assertion.
fn refused(answer: (u16, Value)) -> (u16, Value) {
    (answer.0, answer.1["reason"].clone())
}

fn unauthorized(reason: &str) -> (u16, Value) {
    (401, Value::from(reason))
}

/// (current, previous) verifications counted for `provider`.
async fn entries(h: &OneIngest, provider: &str) -> (f64, f64) {
    let current = h.metric(VERIFIED, &[("provider", provider), ("entry", "current")]).await;
    let previous = h.metric(VERIFIED, &[("provider", provider), ("entry", "previous")]).await;
    (current, previous)
}

fn now() -> String {
    chrono::Utc::now().timestamp().to_string()
}

// ---------------------------------------------------------------------------
// Telnyx: `data.payload.organization_id`, covered by the Ed25519 signature.

const ORG_A: &str = "aaaaaaaa-a842-4784-98e9-03c1a5872950";
const ORG_B: &str = "bbbbbbbb-a842-4784-98e9-03c1a5872950";

fn telnyx_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn telnyx_public(seed: u8) -> String {
    STANDARD.encode(telnyx_key(seed).verifying_key().to_bytes())
}

/// The documentation sample as sent by the organization `org`.
fn telnyx_body(org: &str) -> String {
    let with = TELNYX_DELIVERED.replacen(
        "\"messaging_profile_id\"",
        &format!("\"organization_id\":\"{org}\",\"messaging_profile_id\""),
        1,
    );
    assert_ne!(with, TELNYX_DELIVERED, "the sample names a messaging profile");
    with
}

fn telnyx(h: &OneIngest, body: String, seed: u8) -> reqwest::RequestBuilder {
    let ts = now();
    let signature = telnyx_sig::sign(&telnyx_key(seed), &ts, body.as_bytes());
    h.post("/dlr/telnyx", JSON, body)
        .header("telnyx-signature-ed25519", signature)
        .header("telnyx-timestamp", ts)
}

#[tokio::test]
async fn telnyx_keys_are_selected_by_the_signed_organization_id() {
    // B is rotating: key 3 current, key 2 previous.
    let file = AccountsFile::new(&format!(
        "[telnyx]\n\"{ORG_A}\" = [\"{}\"]\n\"{ORG_B}\" = [\"{}\", \"{}\"]\n",
        telnyx_public(1),
        telnyx_public(3),
        telnyx_public(2)
    ));
    let h = start(&file, |_| {}).await;
    assert_eq!(
        refused(h.send(telnyx(&h, telnyx_body(ORG_B), 1)).await),
        unauthorized("mismatch"),
        "A's key, B's"
    );
    let unknown = telnyx_body("cccccccc-a842-4784-98e9-03c1a5872950");
    assert_eq!(refused(h.send(telnyx(&h, unknown.clone(), 1)).await), unauthorized("unknown_account"));
    let unsigned = h.post("/dlr/telnyx", JSON, unknown);
    assert_eq!(
        refused(h.send(unsigned).await),
        unauthorized("missing"),
        "no signature: not a well-formed one"
    );
    assert_eq!(refused(h.send(telnyx(&h, TELNYX_DELIVERED.to_owned(), 1)).await), unauthorized("missing"));

    let (status, body) = h.send(telnyx(&h, telnyx_body(ORG_A), 1)).await;
    assert_eq!(status, 200, "A's own key: {body}");
    let (status, body) = h.send(telnyx(&h, telnyx_body(ORG_B), 2)).await;
    assert_eq!(status, 200, "B's previous key during the rotation: {body}");
    let accounts: Vec<Option<String>> = h.events(2).await.into_iter().map(|e| e.account).collect();
    assert_eq!(
        accounts,
        [Some(ORG_A.to_owned()), Some(ORG_B.to_owned())],
        "the event names the signing account"
    );
    assert_eq!(entries(&h, "telnyx").await, (1.0, 1.0));
    h.finish().await;
}

// ---------------------------------------------------------------------------
// Sinch: `/dlr/sinch/{service plan}`; reports name no account.

fn sinch(h: &OneIngest, path: &str, secret: &str) -> reqwest::RequestBuilder {
    let ts = now();
    let signature = sinch_sig::sign(SINCH_RECIPIENT.as_bytes(), "nonce-1", &ts, secret);
    h.post(path, JSON, SINCH_RECIPIENT)
        .header(sinch_sig::SIGNATURE_HEADER, signature)
        .header(sinch_sig::NONCE_HEADER, "nonce-1")
        .header(sinch_sig::TIMESTAMP_HEADER, ts)
}

#[tokio::test]
async fn sinch_secrets_are_selected_by_the_callback_path() {
    let file = AccountsFile::new(
        "[sinch]\nplan-a = [\"secret-a\"]\nplan-b = [\"secret-b-new\", \"secret-b-old\"]\n",
    );
    let h = start(&file, |c| c.providers.sinch.webhook_secret = Some("flat-secret".into())).await;
    assert_eq!(refused(h.send(sinch(&h, "/dlr/sinch/plan-b", "secret-a")).await), unauthorized("mismatch"));
    assert_eq!(
        refused(h.send(sinch(&h, "/dlr/sinch/plan-b", "flat-secret")).await),
        unauthorized("mismatch"),
        "the variable's secret does not sign for an account either"
    );
    assert_eq!(
        refused(h.send(sinch(&h, "/dlr/sinch/plan-c", "secret-a")).await),
        unauthorized("unknown_account")
    );
    let unsigned = h.post("/dlr/sinch/plan-c", JSON, SINCH_RECIPIENT);
    assert_eq!(refused(h.send(unsigned).await), unauthorized("missing"));

    assert_eq!(h.send(sinch(&h, "/dlr/sinch/plan-a", "secret-a")).await.0, 200, "A's own secret");
    assert_eq!(h.send(sinch(&h, "/dlr/sinch/plan-b", "secret-b-old")).await.0, 200, "B's previous secret");
    assert_eq!(h.send(sinch(&h, "/dlr/sinch", "flat-secret")).await.0, 200, "no segment: the variable");
    let accounts: Vec<Option<String>> = h.events(3).await.into_iter().map(|e| e.account).collect();
    assert_eq!(accounts, [Some("plan-a".to_owned()), Some("plan-b".to_owned()), None]);
    assert_eq!(entries(&h, "sinch").await, (2.0, 1.0));
    h.finish().await;
}

// ---------------------------------------------------------------------------
// Infobip: `/dlr/infobip/{account}`; Basic covers no byte of the body.

fn infobip(h: &OneIngest, path: &str, credentials: &str) -> reqwest::RequestBuilder {
    h.post(path, JSON, INFOBIP_RESULTS).header("authorization", basic::header_value(credentials))
}

#[tokio::test]
async fn infobip_credentials_are_selected_by_the_report_path() {
    let file = AccountsFile::new(
        "[infobip]\nacme = [\"acme:new\", \"acme:old\"]\nbeta = [\"beta:pass, with comma\"]\n",
    );
    let h = start(&file, |_| {}).await;
    let beta = "beta:pass, with comma";
    assert_eq!(refused(h.send(infobip(&h, "/dlr/infobip/acme", beta)).await), unauthorized("mismatch"));
    assert_eq!(
        refused(h.send(infobip(&h, "/dlr/infobip/gamma", beta)).await),
        unauthorized("unknown_account")
    );
    assert_eq!(
        refused(h.send(h.post("/dlr/infobip/gamma", JSON, INFOBIP_RESULTS)).await),
        unauthorized("missing")
    );
    assert_eq!(
        refused(h.send(infobip(&h, "/dlr/infobip", beta)).await),
        unauthorized("missing"),
        "no segment and no INFOBIP_BASIC_AUTH: nothing verifies"
    );

    assert_eq!(h.send(infobip(&h, "/dlr/infobip/beta", beta)).await.0, 200, "B's own credential");
    assert_eq!(h.send(infobip(&h, "/dlr/infobip/acme", "acme:old")).await.0, 200, "A's previous credential");
    let accounts: Vec<Option<String>> = h.events(6).await.into_iter().map(|e| e.account).collect();
    assert_eq!(accounts[..3], [Some("beta".to_owned()), Some("beta".to_owned()), Some("beta".to_owned())]);
    assert!(accounts[3..].iter().all(|a| a.as_deref() == Some("acme")), "{accounts:?}");
    assert_eq!(entries(&h, "infobip").await, (1.0, 1.0));
    assert!(h.quarantined().await.iter().all(|c| c["request"]["path"] != "/dlr/infobip"));
    h.finish().await;
}

/// A quarantined `/dlr/infobip/acme` batch is replayed with acme's
/// credentials only: while its credential is listed under another account
/// it stays refused; once acme lists it, it is stored as acme's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infobip_account_copy_is_replayed_with_the_same_accounts_credentials() {
    const WAIT: Duration = Duration::from_secs(10);
    const SETTLE: Duration = Duration::from_millis(300);
    let app = TestApp::new().await;
    let ingest = async |file: &AccountsFile| -> TestIngest {
        let mut config = ingest_config(&app.topology, &amqp_url());
        config.quarantine_replay_key = Some("replay-key-0123456789abcdef-0123456789".into());
        config.signatures.accounts_file = Some(file.0.clone());
        app.start_ingest(config, WAIT).await
    };
    let replay = async |ingest: &TestIngest| {
        let url = url::Url::parse(&ingest.base_url).expect("url");
        replay_quarantine(&app.broker.channel, &app.topology, &url, None).await.expect("the replay runs")
    };

    let old = AccountsFile::new("[infobip]\nacme = [\"acme:old\"]\n");
    let h = ingest(&old).await;
    let request = h
        .client
        .post(format!("{}/dlr/infobip/acme", h.base_url))
        .header("content-type", JSON)
        .header("authorization", basic::header_value("acme:new"))
        .body(INFOBIP_RESULTS);
    assert_eq!(
        request.send().await.expect("request").status().as_u16(),
        401,
        "acme's new credential, not yet known"
    );
    h.stop().await;

    let elsewhere = AccountsFile::new("[infobip]\nacme = [\"acme:old\"]\nbeta = [\"acme:new\"]\n");
    let h = ingest(&elsewhere).await;
    let report = replay(&h).await;
    assert_eq!((report.replayed, report.kept), (0, 1), "listed under beta only: {report:?}");
    h.stop().await;

    let fixed = AccountsFile::new("[infobip]\nacme = [\"acme:new\", \"acme:old\"]\n");
    let h = ingest(&fixed).await;
    let report = replay(&h).await;
    assert_eq!((report.replayed, report.kept), (1, 0), "{report:?}");
    let events = app.receipts(3, WAIT, SETTLE).await;
    assert!(events.iter().all(|e| e.account.as_deref() == Some("acme")), "{events:?}");
    assert!(app.quarantined(SETTLE).await.is_empty());
    h.stop().await;
    app.cleanup().await;
}
