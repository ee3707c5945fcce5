//! Telnyx, Plivo, Sinch and Infobip: the same way through ingest as the
//! other providers (decode, verify, parse, publish), for requests that may
//! carry several receipts.
//!
//! The rule does not change with the count: 200 only when the broker has
//! confirmed every receipt of the request. All of them are published at
//! once and every confirm is awaited; if any is missing the answer is 503
//! and the provider retries the whole request, whose receipts keep their
//! event ids, so the ones already stored are de-duplicated downstream. An
//! authenticated request whose elements are partly malformed is answered
//! 200 with the valid ones stored and a copy in the quarantine: a 4xx
//! would make the provider drop the valid siblings too (Sinch never retries
//! a 4xx).

use crate::providers::{self, Batch, FieldProblem, Fields, ReceiptError};
use crate::signature::{self, SignatureError};
use axum::http::{Method, header};
use chrono::Utc;
use dlr_shared::{EventId, Outcome, Provider};
use serde::Serialize;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::error::IngestError;
use crate::intake::{
    Authenticity, WebhookRequest, check, public_url, publish_all, quarantine, refuse, reject, require_body,
};
use crate::state::AppState;

/// Seconds between two log lines about ignored Sinch summary reports: a
/// batch configured for summaries sends one per batch, which must not
/// flood the log; the counter has every one.
const IGNORED_LOG_INTERVAL_SECS: i64 = 60;
static LAST_IGNORED_LOG: AtomicI64 = AtomicI64::new(i64::MIN);

/// The 200 body: the event each receipt became, and what was set aside.
#[derive(Debug, Serialize)]
pub struct Stored {
    status: &'static str,
    receipts: Vec<StoredReceipt>,
    quarantined: usize,
    ignored: usize,
}

#[derive(Debug, Serialize)]
struct StoredReceipt {
    event_id: EventId,
    outcome: Outcome,
}

fn header<'r>(request: &'r WebhookRequest, name: &str) -> Option<&'r str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Accepts a Telnyx messaging webhook (POST JSON, Ed25519-signed).
pub async fn telnyx(state: &AppState, request: WebhookRequest) -> Result<Stored, IngestError> {
    let provider = Provider::Telnyx;
    require_body(&request, &["application/json"]).map_err(|e| reject(state, provider, e))?;
    let policy = &state.signatures.providers.telnyx;
    let authenticity = check(state, provider, &request, policy.mode, || {
        let keys = policy.secrets.as_ref().ok_or(SignatureError::Missing("secret"))?;
        signature::telnyx::verify(
            &request.body,
            header(&request, "telnyx-signature-ed25519"),
            header(&request, "telnyx-timestamp"),
            keys,
            state.signatures.freshness.max_future,
            request.received_at.timestamp(),
        )
        .map(|()| 0)
    })
    .await?;
    let parsed = providers::telnyx::parse(&request.body, Utc::now());
    store(state, provider, &request, authenticity, parsed).await
}

/// Accepts a Plivo status callback (GET query or POST form).
pub async fn plivo(state: &AppState, request: WebhookRequest) -> Result<Stored, IngestError> {
    let provider = Provider::Plivo;
    let (method, fields) = plivo_fields(&request).map_err(|e| reject(state, provider, e))?;
    let policy = &state.signatures.providers.plivo;
    let authenticity = check(state, provider, &request, policy.mode, || {
        let tokens = state.signatures.accounts.secrets_for(
            "plivo",
            fields.get("ParentAuthID"),
            policy.secrets.as_ref(),
        )?;
        let headers = signature::plivo::Headers {
            v3: header(&request, "x-plivo-signature-v3"),
            ma_v3: header(&request, "x-plivo-signature-ma-v3"),
            v3_nonce: header(&request, "x-plivo-signature-v3-nonce"),
            v2: header(&request, "x-plivo-signature-v2"),
            ma_v2: header(&request, "x-plivo-signature-ma-v2"),
            v2_nonce: header(&request, "x-plivo-signature-v2-nonce"),
            accept_v2: state.signatures.providers.plivo_accept_v2,
        };
        // A GET's parameters are in the URL, which is signed as such.
        let form = if method == signature::plivo::Method::Post { fields.clone() } else { Fields::default() };
        let url = public_url(state, &request);
        let entry =
            tokens.first_match(|token| signature::plivo::verify(method, &url, &form, headers, token))?;
        let v3 = [headers.v3, headers.ma_v3].iter().flatten().any(|v| !v.trim().is_empty());
        match headers.v2_nonce {
            // V2 signs no parameters and no time: its nonce verifies once
            // (a sealed replay is a copy ingest made, maybe after the nonce was used).
            Some(nonce) if !v3 && !request.sealed_replay => {
                let nonces = &state.signatures.providers.plivo_v2_nonces;
                if nonces.first_use(nonce.trim(), std::time::Instant::now()) {
                    Ok(entry)
                } else {
                    Err(SignatureError::Replayed)
                }
            }
            _ => Ok(entry),
        }
    })
    .await?;
    let parsed = providers::plivo::unambiguous(&fields)
        .and_then(|()| providers::plivo::parse(&fields, Utc::now()))
        .map(Batch::one);
    store(state, provider, &request, authenticity, parsed).await
}

fn plivo_fields(request: &WebhookRequest) -> Result<(signature::plivo::Method, Fields), IngestError> {
    if request.method == Method::GET {
        let query = request.query.as_deref().unwrap_or("");
        if query.is_empty() {
            return Err(IngestError::Empty("query string"));
        }
        return Ok((signature::plivo::Method::Get, providers::decode_urlencoded(query.as_bytes(), "query")?));
    }
    if request.method != Method::POST {
        // HEAD is routed with GET by axum; it must not have side effects.
        return Err(IngestError::MethodNotAllowed);
    }
    require_body(request, &["application/x-www-form-urlencoded"])?;
    Ok((signature::plivo::Method::Post, providers::decode_urlencoded(&request.body, "form")?))
}

/// Accepts a Sinch delivery report (POST JSON, optionally HMAC-signed).
pub async fn sinch(state: &AppState, request: WebhookRequest) -> Result<Stored, IngestError> {
    let provider = Provider::Sinch;
    require_body(&request, &["application/json"]).map_err(|e| reject(state, provider, e))?;
    let policy = &state.signatures.providers.sinch;
    let authenticity = check(state, provider, &request, policy.mode, || {
        let credentials = policy.secrets.as_ref().ok_or(SignatureError::Missing("secret"))?;
        let authorization = header(&request, header::AUTHORIZATION.as_str());
        let signature = header(&request, signature::sinch::SIGNATURE_HEADER);
        // A request is checked by the scheme it carries; Basic only when
        // it carries no HMAC signature (or no secret is configured).
        let signed = signature::sinch::is_signed(signature);
        match (&credentials.basic, &credentials.hmac) {
            (Some(basic), None) => basic.first_match(|one| signature::basic::verify(authorization, one)),
            (Some(basic), Some(_)) if !signed => {
                basic.first_match(|one| signature::basic::verify(authorization, one))
            }
            (_, Some(secrets)) => {
                let algorithm = signature::sinch::Algorithm::from_header(header(
                    &request,
                    signature::sinch::ALGORITHM_HEADER,
                ))?;
                secrets.first_match(|secret| {
                    signature::sinch::verify_with(
                        algorithm,
                        &request.body,
                        signature,
                        header(&request, signature::sinch::NONCE_HEADER),
                        header(&request, signature::sinch::TIMESTAMP_HEADER),
                        secret,
                        state.signatures.freshness,
                        request.received_at.timestamp(),
                    )
                })
            }
            (None, None) => Err(SignatureError::Missing("secret")),
        }
    })
    .await?;
    let parsed = providers::sinch::parse(&request.body, Utc::now());
    store(state, provider, &request, authenticity, parsed).await
}

/// Accepts an Infobip report batch (POST JSON, HTTP Basic).
pub async fn infobip(state: &AppState, request: WebhookRequest) -> Result<Stored, IngestError> {
    let provider = Provider::Infobip;
    require_body(&request, &["application/json"]).map_err(|e| reject(state, provider, e))?;
    let policy = &state.signatures.providers.infobip;
    let authenticity = check(state, provider, &request, policy.mode, || {
        let credentials = policy.secrets.as_ref().ok_or(SignatureError::Missing("secret"))?;
        let authorization = header(&request, header::AUTHORIZATION.as_str());
        credentials.first_match(|one| signature::basic::verify(authorization, one))
    })
    .await?;
    let parsed = providers::infobip::parse(&request.body, Utc::now());
    store(state, provider, &request, authenticity, parsed).await
}

/// Publishes a parsed request's receipts and quarantines its bad elements.
async fn store(
    state: &AppState,
    provider: Provider,
    request: &WebhookRequest,
    authenticity: Authenticity,
    parsed: Result<Batch, ReceiptError>,
) -> Result<Stored, IngestError> {
    let mut batch = match parsed {
        Ok(batch) if !(batch.events.is_empty() && batch.ignored == 0 && !batch.rejected.is_empty()) => batch,
        // Nothing usable at all: the same answer as one bad receipt.
        Ok(batch) => return Err(refuse(state, provider, request, authenticity, combined(&batch)).await),
        Err(error) => return Err(refuse(state, provider, request, authenticity, error).await),
    };
    for event in &mut batch.events {
        event.authenticity = Some(authenticity);
    }
    if !batch.rejected.is_empty() {
        // The request is answered 200, so the provider will not send these
        // elements again: the quarantine copy is all that is left of them,
        // whatever the signature mode.
        for problem in &batch.rejected {
            state.metrics.rejected.with_label_values(&[provider.as_str(), problem.error.reason()]).inc();
        }
        let error = IngestError::Receipt(combined(&batch));
        tracing::warn!(provider = %provider, bad = batch.rejected.len(), good = batch.events.len(), %error, "malformed reports quarantined; their siblings are stored");
        quarantine(state, provider, request, &error).await;
    }
    if batch.ignored > 0 {
        state.metrics.reports_ignored.with_label_values(&[provider.as_str()]).inc_by(batch.ignored as u64);
        let now = Utc::now().timestamp();
        let last = LAST_IGNORED_LOG.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= IGNORED_LOG_INTERVAL_SECS
            && LAST_IGNORED_LOG.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::info!(provider = %provider, "summary delivery report ignored: it names no recipient (configure per_recipient or full reports); logged once a minute, counted in dlr_ingest_reports_ignored_total");
        }
    }
    for event in batch.events.iter().filter(|e| !e.status_recognised) {
        tracing::warn!(provider = %provider, status = %event.status, "unrecognised status word; accepted as pending");
    }
    // Every receipt at once, in order, on one channel: the confirms arrive
    // together, so a batch costs about one round trip, not one per receipt,
    // and its receipts reach the queue in the provider's order.
    publish_all(state, &batch.events).await?;
    for event in &batch.events {
        state.metrics.accepted.with_label_values(&[provider.as_str(), event.outcome.as_str()]).inc();
    }
    Ok(Stored {
        status: "accepted",
        receipts: batch
            .events
            .into_iter()
            .map(|e| StoredReceipt { event_id: e.event_id, outcome: e.outcome })
            .collect(),
        quarantined: batch.rejected.len(),
        ignored: batch.ignored,
    })
}

/// Every bad element's problems in one error, each field named by where
/// its element is (`results[3].messageId`).
fn combined(batch: &Batch) -> ReceiptError {
    let problems = batch
        .rejected
        .iter()
        .flat_map(|element| match element.error.problems() {
            [] => vec![FieldProblem::new(&element.location, element.error.to_string())],
            problems => problems
                .iter()
                .map(|p| FieldProblem::new(&format!("{}.{}", element.location, p.field), p.problem.clone()))
                .collect(),
        })
        .collect();
    ReceiptError::InvalidFields(problems)
}
