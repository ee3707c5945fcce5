//! Forgeries a stranger on the internet could send, each as a black-box
//! test against a real ingest and RabbitMQ: none of them may reach the
//! receipts queue unless an operator opted out of verification.
//!
//! Each one was accepted (200 and a new event) before ingest denied by
//! default, refused ambiguous signed input and followed the providers'
//! documented schemes; see the README's "Signatures" section.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use dlr_ingest::providers::{
    plivo::signature as plivo_sig, sinch::signature as sinch_sig, twilio::signature as twilio_sig,
};
use dlr_ingest::signature::SignatureMode;
use dlr_tests::OneIngest;
use dlr_tests::one_ingest::SETTLE;
use serde_json::Value;

const PUBLIC_BASE: &str = "https://dlr.example.com";
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// One ingest with the default configuration (no opt-outs), the public
/// base URL set, adjusted by `configure`.
struct Ingest;

impl Ingest {
    async fn start(configure: impl FnOnce(&mut dlr_ingest::Config)) -> OneIngest {
        OneIngest::start(|config| {
            config.signatures.public_base_url = Some(url::Url::parse(PUBLIC_BASE).expect("url"));
            configure(config);
        })
        .await
    }

    async fn start_on(
        topology: dlr_shared::amqp::Topology,
        configure: impl FnOnce(&mut dlr_ingest::Config),
    ) -> OneIngest {
        OneIngest::start_on(topology, |config| {
            config.signatures.public_base_url = Some(url::Url::parse(PUBLIC_BASE).expect("url"));
            configure(config);
        })
        .await
    }
}

fn pairs(form: &str) -> Vec<(String, String)> {
    dlr_ingest::providers::decode_urlencoded(form.as_bytes(), "form").expect("form").pairs().to_vec()
}

/// A form body with each pair percent-encoded as a browser would.
fn encode(pairs: &[(String, String)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        out.append_pair(name, value);
    }
    out.finish()
}

/// Started with defaults, a provider without credentials is not served:
/// an unsigned Infobip batch (and the same for every other provider) gets
/// 404, no event and no quarantine copy.
#[tokio::test]
async fn unsigned_batch_on_an_unconfigured_provider_is_not_served() {
    let h = Ingest::start(|_| {}).await;
    let batch = include_str!("../ingest/src/providers/infobip/samples/infobip-results.json");
    for (path, content_type) in [
        ("/dlr/infobip", JSON),
        ("/dlr/sinch", JSON),
        ("/dlr/telnyx", JSON),
        ("/dlr/plivo", FORM),
        ("/dlr/twilio", FORM),
        ("/dlr/vonage", FORM),
        ("/dlr/vonage-messages", JSON),
    ] {
        let (status, _) = h.send(h.post(path, content_type, batch)).await;
        assert_eq!(status, 404, "{path} is served without credentials or an explicit mode");
    }
    h.events(0).await;
    assert!(h.app.quarantined(SETTLE).await.is_empty(), "nothing is copied for a route that is not served");
    h.finish().await;
}

/// A secret set and no mode means enforce, for Vonage as for the others.
#[tokio::test]
async fn unsigned_vonage_with_a_secret_set_is_refused() {
    let h = Ingest::start(|c| c.providers.vonage_sms.secret = Some("vonage-secret".into())).await;
    let unsigned = "messageId=0A0000001234567B&status=delivered&msisdn=447700900000&to=AcmeInc&err-code=0";
    let (status, body) = h.send(h.post("/dlr/vonage", FORM, unsigned)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body, serde_json::json!({"error": "signature check failed", "reason": "missing"}));
    h.events(0).await;
    h.finish().await;
}

/// Twilio signs `name + value` without separators: a genuine callback
/// re-split so that `ErrorCode` disappears into `ApiVersion` keeps its
/// signature, and must be refused rather than become a second event.
#[tokio::test]
async fn twilio_re_split_is_refused() {
    let token = "twilio-token";
    let h = Ingest::start(|c| c.providers.twilio.auth_token = Some(token.into())).await;
    let genuine = pairs(dlr_tests::corpus::S7);
    let url = format!("{PUBLIC_BASE}/dlr/twilio");
    let signature = twilio_sig::sign(&url, &genuine, token, twilio_sig::Algorithm::HmacSha1);
    let send = |fields: Vec<(String, String)>| {
        h.post("/dlr/twilio", FORM, encode(&fields)).header("x-twilio-signature", signature.clone())
    };
    assert_eq!(h.send(send(genuine.clone())).await.0, 200, "the genuine callback");
    let mut re_split: Vec<(String, String)> =
        genuine.iter().filter(|(n, _)| n != "ApiVersion" && n != "ErrorCode").cloned().collect();
    re_split.push(("ApiVersion".into(), "2010-04-01ErrorCode30003".into()));
    let (status, body) = h.send(send(re_split)).await;
    assert_eq!(status, 400, "the re-split verifies but is ambiguous: {body}");
    // The other split of the same text: `ErrorCode3=0003`.
    let mut shifted: Vec<(String, String)> =
        genuine.iter().filter(|(n, _)| n != "ErrorCode").cloned().collect();
    shifted.push(("ErrorCode3".into(), "0003".into()));
    assert_eq!(h.send(send(shifted)).await.0, 400);
    let events = h.events(1).await;
    assert_eq!(events[0].error.as_ref().map(|e| e.code.as_str()), Some("30003"));
    h.finish().await;
}

/// Plivo V3 signs a POST form as `name + value` too.
#[tokio::test]
async fn plivo_re_split_is_refused() {
    let token = "plivo-token";
    let h = Ingest::start(|c| c.providers.plivo.auth_token = Some(token.into())).await;
    let mut genuine = pairs(include_str!("../ingest/src/providers/plivo/samples/plivo-undelivered.query"));
    genuine.push(("DeliveryReportTime".into(), "2024-05-01 10:00:05.000000".into()));
    let url = format!("{PUBLIC_BASE}/dlr/plivo");
    let signature = plivo_sig::sign_v3(plivo_sig::Method::Post, &url, &genuine, "n1", token);
    let send = |fields: Vec<(String, String)>| {
        h.post("/dlr/plivo", FORM, encode(&fields))
            .header("X-Plivo-Signature-V3", signature.clone())
            .header("X-Plivo-Signature-V3-Nonce", "n1")
    };
    assert_eq!(h.send(send(genuine.clone())).await.0, 200, "the genuine callback");
    let mut re_split: Vec<(String, String)> =
        genuine.iter().filter(|(n, _)| n != "DeliveryReportTime" && n != "ErrorCode").cloned().collect();
    re_split.push(("DeliveryReportTime".into(), "2024-05-01 10:00:05.000000ErrorCode80".into()));
    let (status, body) = h.send(send(re_split)).await;
    assert_eq!(status, 400, "{body}");
    let events = h.events(1).await;
    assert_eq!(events[0].error.as_ref().map(|e| e.code.as_str()), Some("80"));
    h.finish().await;
}

/// Vonage's `sig` string is `&name=value...` and only values are escaped: a
/// name holding `=` and `&` swallows the fields after it.
#[tokio::test]
async fn vonage_re_split_is_refused() {
    let secret = "vonage-secret";
    let method = dlr_ingest::providers::vonage_sms::signature::SigMethod::Sha256Hmac;
    let h = Ingest::start(|c| {
        c.providers.vonage_sms.secret = Some(secret.into());
        c.providers.vonage_sms.method = method;
    })
    .await;
    let ts = chrono::Utc::now().timestamp().to_string();
    let mut genuine = pairs(&format!(
        "client-ref=x&err-code=5&messageId=0A0000001234567B&msisdn=447700900000&status=failed&timestamp={ts}&to=AcmeInc&nonce=aa"
    ));
    let sig = dlr_ingest::providers::vonage_sms::signature::sign(&genuine, secret, method);
    genuine.push(("sig".into(), sig.clone()));
    assert_eq!(h.send(h.post("/dlr/vonage", FORM, encode(&genuine))).await.0, 200, "genuine");
    let mut re_split: Vec<(String, String)> =
        genuine.iter().filter(|(n, _)| n != "client-ref" && n != "err-code").cloned().collect();
    re_split.push(("client-ref=x&err-code".into(), "5".into()));
    let (status, body) = h.send(h.post("/dlr/vonage", FORM, encode(&re_split))).await;
    assert_eq!(status, 400, "{body}");
    h.events(1).await;
    h.finish().await;
}

/// Plivo V2 signs the URL without the parameters: with V3 only (the
/// default), a captured V2 header and nonce authenticates nothing.
#[tokio::test]
async fn plivo_v2_downgrade_is_refused() {
    let token = "plivo-token";
    let h = Ingest::start(|c| c.providers.plivo.auth_token = Some(token.into())).await;
    let url = format!("{PUBLIC_BASE}/dlr/plivo");
    let v2 = plivo_sig::sign_v2(&url, "12345", token);
    let forged = include_str!("../ingest/src/providers/plivo/samples/plivo-delivered.form")
        .replace("delivered", "failed");
    let request = h
        .post("/dlr/plivo", FORM, forged)
        .header("X-Plivo-Signature-V2", v2)
        .header("X-Plivo-Signature-V2-Nonce", "12345");
    let (status, body) = h.send(request).await;
    assert_eq!((status, &body["reason"]), (401, &Value::from("algorithm")), "{body}");
    h.events(0).await;
    h.finish().await;
}

/// Sinch documents `x-sinch-webhook-signature-algorithm: HmacSHA512`.
#[tokio::test]
async fn sinch_sha512_signatures_verify() {
    let secret = "sinch-secret";
    let h = Ingest::start(|c| c.providers.sinch.webhook_secret = Some(secret.into())).await;
    let body = include_str!("../ingest/src/providers/sinch/samples/sinch-recipient-delivered.json");
    let ts = chrono::Utc::now().timestamp().to_string();
    let signature = sinch_sig::sign_with(sinch_sig::Algorithm::Sha512, body.as_bytes(), "n1", &ts, secret);
    let request = h
        .post("/dlr/sinch", JSON, body)
        .header(sinch_sig::SIGNATURE_HEADER, signature)
        .header(sinch_sig::NONCE_HEADER, "n1")
        .header(sinch_sig::TIMESTAMP_HEADER, ts)
        .header(sinch_sig::ALGORITHM_HEADER, "HmacSHA512");
    let (status, body) = h.send(request).await;
    assert_eq!(status, 200, "{body}");
    let events = h.events(1).await;
    assert_eq!(events[0].authenticity, Some(dlr_shared::event::Authenticity::Verified));
    h.finish().await;
}

/// Sinch also offers HTTP Basic for SMS callback URLs; credentials may hold commas.
#[tokio::test]
async fn sinch_basic_auth_verifies() {
    let h = Ingest::start(|c| c.providers.sinch.basic_auth = Some("sinch:pa,ss".into())).await;
    let body = include_str!("../ingest/src/providers/sinch/samples/sinch-recipient-delivered.json");
    let basic = dlr_ingest::signature::basic::header_value;
    let good = h.post("/dlr/sinch", JSON, body).header("authorization", basic("sinch:pa,ss"));
    assert_eq!(h.send(good).await.0, 200);
    let wrong = h.post("/dlr/sinch", JSON, body).header("authorization", basic("sinch:pa"));
    assert_eq!(h.send(wrong).await.0, 401);
    h.events(1).await;
    h.finish().await;
}

/// Vonage documents that a Messages callback may be sent unsigned after an
/// internal error and retried on a 5xx: 503 with Retry-After, not 401.
#[tokio::test]
async fn unsigned_vonage_messages_callback_gets_503() {
    let h = Ingest::start(|c| c.providers.vonage_sms.secret = Some("vonage-secret".into())).await;
    let body = r#"{"message_uuid":"aaaaaaaa-0000-4000-8000-000000000001","to":"447700900000","from":"AcmeInc","timestamp":"2025-03-14T09:26:41.000Z","status":"delivered","channel":"sms"}"#;
    let response = h.post("/dlr/vonage-messages", JSON, body).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    h.events(0).await;
    assert!(h.app.quarantined(SETTLE).await.is_empty(), "the retry is the genuine copy");
    h.finish().await;
}

/// Explicit `off` and `log-only` still serve, and the event says so.
#[tokio::test]
async fn events_say_how_they_were_authenticated() {
    let h = Ingest::start(|c| {
        c.providers.vonage_sms.mode = Some(SignatureMode::Off);
        c.providers.twilio.mode = Some(SignatureMode::LogOnly);
        c.providers.twilio.auth_token = Some("twilio-token".into());
    })
    .await;
    let vonage = "messageId=0A0000001234567B&status=delivered&msisdn=447700900000&to=AcmeInc&err-code=0";
    assert_eq!(h.send(h.post("/dlr/vonage", FORM, vonage)).await.0, 200);
    let events = h.events(1).await;
    assert_eq!(events[0].authenticity, Some(dlr_shared::event::Authenticity::NotChecked));
    assert_eq!(h.send(h.post("/dlr/twilio", FORM, dlr_tests::corpus::S7)).await.0, 200);
    let events = h.events(1).await;
    assert_eq!(events[0].authenticity, Some(dlr_shared::event::Authenticity::FailedLogOnly));
    h.finish().await;
}

/// With V2 accepted explicitly (`PLIVO_ACCEPT_V2`), a captured V2 header
/// and nonce verify once: the genuine request, not a forgery made from it.
#[tokio::test]
async fn plivo_v2_nonce_verifies_once() {
    let token = "plivo-token";
    let h = Ingest::start(|c| {
        c.providers.plivo.auth_token = Some(token.into());
        c.providers.plivo.accept_v2 = true;
    })
    .await;
    let url = format!("{PUBLIC_BASE}/dlr/plivo");
    let v2 = plivo_sig::sign_v2(&url, "12345", token);
    let genuine = include_str!("../ingest/src/providers/plivo/samples/plivo-delivered.form");
    let send = |body: String| {
        h.post("/dlr/plivo", FORM, body)
            .header("X-Plivo-Signature-V2", v2.clone())
            .header("X-Plivo-Signature-V2-Nonce", "12345")
    };
    assert_eq!(h.send(send(genuine.to_owned())).await.0, 200, "the genuine callback");
    let (status, body) = h.send(send(genuine.replace("delivered", "failed&ErrorCode=30"))).await;
    assert_eq!((status, &body["reason"]), (401, &Value::from("replayed")), "{body}");
    h.events(1).await;
    h.finish().await;
}

/// With per-account secrets (`PROVIDER_ACCOUNTS_FILE`), a receipt naming
/// account B verifies only with B's secrets: whoever holds A's token cannot
/// sign for B. B's previous token still verifies during a rotation, and the
/// metric says which entry matched.
#[tokio::test]
async fn account_a_secret_does_not_sign_account_b_receipts() {
    const A: &str = "AC0123456789abcdef0123456789abcdef";
    const B: &str = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let file = std::env::temp_dir().join(format!("dlr-accounts-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &file,
        format!("[twilio]\n{A} = [\"token-a\"]\n{B} = [\"token-b-new\", \"token-b-old\"]\n"),
    )
    .expect("write the accounts file");
    let h = Ingest::start(|c| c.signatures.accounts_file = Some(file.clone())).await;
    let url = format!("{PUBLIC_BASE}/dlr/twilio");
    let receipt_b = dlr_tests::corpus::S7.replace(A, B);
    let signed = |token: &str| {
        let sig = twilio_sig::sign(&url, &pairs(&receipt_b), token, twilio_sig::Algorithm::HmacSha1);
        h.post("/dlr/twilio", FORM, receipt_b.clone()).header("x-twilio-signature", sig)
    };
    let (status, body) = h.send(signed("token-a")).await;
    assert_eq!(
        (status, &body["reason"]),
        (401, &Value::from("mismatch")),
        "A's token on B's receipt: {body}"
    );
    let unknown = dlr_tests::corpus::S7.replace(A, "ACcccccccccccccccccccccccccccccccc");
    let sig = twilio_sig::sign(&url, &pairs(&unknown), "token-a", twilio_sig::Algorithm::HmacSha1);
    let (status, body) = h.send(h.post("/dlr/twilio", FORM, unknown).header("x-twilio-signature", sig)).await;
    assert_eq!((status, &body["reason"]), (401, &Value::from("unknown_account")), "{body}");
    // Unsigned and naming an account the file does not list: refused for
    // the missing signature, like any unsigned request, and not copied to
    // the quarantine (only a well-formed signature can be a genuine
    // receipt refused by our mistake).
    let unsigned = dlr_tests::corpus::S7.replace(A, "ACdddddddddddddddddddddddddddddddd");
    let (status, body) = h.send(h.post("/dlr/twilio", FORM, unsigned)).await;
    assert_eq!((status, &body["reason"]), (401, &Value::from("missing")), "{body}");
    assert_eq!(h.send(signed("token-b-old")).await.0, 200, "B's previous token during a rotation");
    h.events(1).await;
    let metrics = h.ingest.metrics().await;
    let verified = |entry| {
        dlr_tests::metric_value(
            &metrics,
            "dlr_ingest_signature_verified_total",
            &[("provider", "twilio"), ("entry", entry)],
        )
    };
    assert_eq!((verified("current"), verified("previous")), (0.0, 1.0));
    // Copied: the two well-formed signatures refused (A's token on B's
    // receipt, the unknown account); not the unsigned request.
    let bodies: Vec<String> = h
        .quarantined()
        .await
        .iter()
        .map(|copy| {
            let body =
                STANDARD.decode(copy["request"]["body_base64"].as_str().unwrap_or("")).expect("base64");
            String::from_utf8_lossy(&body).into_owned()
        })
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(bodies.iter().all(|b| !b.contains("ACdddd")), "the unsigned request was not copied: {bodies:?}");
    let _ = std::fs::remove_file(&file);
    h.finish().await;
}

/// Quarantine byte bound of the flood tests: about eleven copies cut to 64 KiB.
const FLOOD_BOUND: u64 = 1 << 20;

/// Takes every quarantine copy: the bytes of their message bodies (what
/// `x-max-length-bytes` counts) and each copy with its request body decoded.
async fn quarantine_contents(h: &OneIngest) -> (usize, Vec<(Value, String)>) {
    let messages = h.app.broker.drain(&h.app.topology.quarantine_queue, SETTLE).await;
    let bytes = messages.iter().map(|m| m.delivery.data.len()).sum();
    let copies = messages
        .iter()
        .map(|m| {
            let copy: Value = serde_json::from_slice(&m.delivery.data).expect("a copy is JSON");
            let body =
                STANDARD.decode(copy["request"]["body_base64"].as_str().unwrap_or("")).expect("base64");
            (copy, String::from_utf8_lossy(&body).into_owned())
        })
        .collect();
    (bytes, copies)
}

/// A Sinch request signed with `secret` (the nonce and time as Sinch sends them).
fn sinch_signed(h: &OneIngest, body: String, secret: &str) -> reqwest::RequestBuilder {
    let ts = chrono::Utc::now().timestamp().to_string();
    let signature = sinch_sig::sign(body.as_bytes(), "n", &ts, secret);
    h.post("/dlr/sinch", JSON, body)
        .header(sinch_sig::SIGNATURE_HEADER, signature)
        .header(sinch_sig::NONCE_HEADER, "n")
        .header(sinch_sig::TIMESTAMP_HEADER, ts)
}

/// Authenticated but not a receipt ingest can parse: copied for replay.
fn genuine_copy(tag: &str) -> String {
    format!(r#"{{"type":"recipient_delivery_report_sms","batch_id":"{tag}"}}"#)
}

fn forged_megabyte() -> String {
    format!(r#"{{"type":"recipient_delivery_report_sms","padding":"{}"}}"#, "x".repeat((1 << 20) - 100))
}

/// 200 forged 1 MiB Sinch requests (a well-formed signature made with a
/// wrong secret), each answered 401, and halfway a genuine request ingest
/// cannot parse (400, copied): the minutes started meanwhile, and what the
/// quarantine holds then (its bytes, its copies).
async fn flood_with_a_genuine_copy(h: &OneIngest, secret: &str) -> (u64, usize, Vec<(Value, String)>) {
    let started = std::time::Instant::now();
    let forged = forged_megabyte();
    for i in 0..200 {
        assert_eq!(h.send(sinch_signed(h, forged.clone(), "guessed")).await.0, 401, "forged request {i}");
        if i == 100 {
            assert_eq!(h.send(sinch_signed(h, genuine_copy("genuine-copy"), secret)).await.0, 400);
        }
    }
    let minutes = started.elapsed().as_secs() / 60 + 1;
    let (bytes, copies) = quarantine_contents(h).await;
    (minutes, bytes, copies)
}

/// A flood of forged 1 MiB Sinch requests (a well-formed signature made with
/// a wrong secret) costs the quarantine at most the per-minute copies, each
/// cut to the body limit, within the queue's byte bound, and a genuine copy
/// made during the flood survives: at this rate the bound holds several
/// minutes of forged copies (README, "Quarantine", has the arithmetic).
#[tokio::test]
async fn forged_megabyte_floods_stay_within_the_quarantine_bounds() {
    const PER_MINUTE: u32 = 2;
    const BODY_LIMIT: usize = 65_536;
    let secret = "sinch-secret";
    let topology =
        dlr_shared::amqp::Topology { quarantine_max_bytes: FLOOD_BOUND, ..dlr_tests::unique_topology() };
    let h = Ingest::start_on(topology, |c| {
        c.providers.sinch.webhook_secret = Some(secret.into());
        c.quarantine_copies_per_minute = PER_MINUTE;
        c.quarantine_body_limit_bytes = BODY_LIMIT;
    })
    .await;
    let (minutes, bytes, copies) = flood_with_a_genuine_copy(&h, secret).await;
    let forged_copies: Vec<&Value> =
        copies.iter().map(|(c, _)| c).filter(|c| c["reason"] == "signature").collect();
    assert!(
        forged_copies.len() as u64 <= u64::from(PER_MINUTE) * minutes,
        "{} copies of failed signatures in {minutes} started minutes",
        forged_copies.len()
    );
    assert!(bytes as u64 <= FLOOD_BOUND, "{bytes} bytes in a quarantine bounded at {FLOOD_BOUND}");
    assert!(forged_copies.iter().all(|c| c["request"]["body_truncated"] == true));
    assert!(
        copies.iter().any(|(_, body)| body.contains("genuine-copy")),
        "the genuine copy survives: {} copies",
        copies.len()
    );
    h.events(0).await;
    h.finish().await;
}

/// The same flood with the default limits: copies are whole (nothing a
/// route accepts is cut, so every copy can be replayed), and the body bytes
/// per provider and minute (4 MiB) are what hold forged megabytes back, to
/// four copies a minute here; the genuine copy made during the flood survives.
#[tokio::test]
async fn forged_megabyte_floods_are_held_back_by_the_byte_budget_by_default() {
    const BYTE_BUDGET: u64 = 4 << 20;
    const BOUND: u64 = 16 << 20;
    let secret = "sinch-secret";
    let topology = dlr_shared::amqp::Topology { quarantine_max_bytes: BOUND, ..dlr_tests::unique_topology() };
    let h = Ingest::start_on(topology, |c| c.providers.sinch.webhook_secret = Some(secret.into())).await;
    let (minutes, bytes, copies) = flood_with_a_genuine_copy(&h, secret).await;
    let forged_copies: Vec<&Value> =
        copies.iter().map(|(c, _)| c).filter(|c| c["reason"] == "signature").collect();
    let per_minute = BYTE_BUDGET / forged_megabyte().len() as u64;
    assert!(
        !forged_copies.is_empty() && forged_copies.len() as u64 <= per_minute * minutes,
        "{} copies of failed signatures in {minutes} started minutes",
        forged_copies.len()
    );
    assert!(forged_copies.iter().all(|c| c["request"]["body_truncated"] != true), "whole copies");
    assert!(bytes as u64 <= BOUND, "{bytes} bytes in a quarantine bounded at {BOUND}");
    assert!(copies.iter().any(|(_, body)| body.contains("genuine-copy")), "the genuine copy survives");
    h.events(0).await;
    h.finish().await;
}

/// What the byte bound alone does (the per-minute limit set out of the
/// way): the quarantine stays within it by dropping its oldest copies, so a
/// genuine copy made before a flood larger than the bound is lost and one
/// made after it survives. The per-minute limit is what protects genuine
/// copies during a flood; README, "Quarantine", says so.
#[tokio::test]
async fn a_flood_larger_than_the_byte_bound_drops_the_oldest_copies() {
    let secret = "sinch-secret";
    let topology =
        dlr_shared::amqp::Topology { quarantine_max_bytes: FLOOD_BOUND, ..dlr_tests::unique_topology() };
    let h = Ingest::start_on(topology, |c| {
        c.providers.sinch.webhook_secret = Some(secret.into());
        c.quarantine_copies_per_minute = 1000;
        c.quarantine_body_limit_bytes = 65_536;
        c.quarantine_bytes_per_minute = usize::MAX;
    })
    .await;
    assert_eq!(h.send(sinch_signed(&h, genuine_copy("before-the-flood"), secret)).await.0, 400);
    let forged = forged_megabyte();
    // Twice what the bound holds.
    for i in 0..24 {
        assert_eq!(h.send(sinch_signed(&h, forged.clone(), "guessed")).await.0, 401, "forged request {i}");
    }
    assert_eq!(h.send(sinch_signed(&h, genuine_copy("after-the-flood"), secret)).await.0, 400);
    let (bytes, copies) = quarantine_contents(&h).await;
    assert!(bytes as u64 <= FLOOD_BOUND, "{bytes} bytes in a quarantine bounded at {FLOOD_BOUND}");
    let kept = |tag: &str| copies.iter().any(|(_, body)| body.contains(tag));
    assert!(!kept("before-the-flood"), "drop-head: the oldest copy went first");
    assert!(kept("after-the-flood"), "the newest copy is kept");
    assert!((8..=12).contains(&copies.len()), "{} copies of about 88 KiB in 1 MiB", copies.len());
    h.events(0).await;
    h.finish().await;
}
