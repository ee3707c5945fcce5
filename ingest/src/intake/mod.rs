//! One receipt's way through ingest: decode, verify, parse, publish.
//!
//! The order matters. Decoding comes first because signatures cover the
//! decoded fields; the signature comes before parsing so that a forged
//! request never reaches the parser's error messages; publishing is last,
//! and its confirm is what allows the 200.

use crate::providers::{self, Fields, ReceiptError};
use crate::signature::{self, SignatureError, SignatureMode};
use axum::http::{HeaderMap, Method, header};
use bytes::Bytes;
use chrono::Utc;
use dlr_shared::Provider;
use dlr_shared::amqp::{Outgoing, PublishError, receipt_properties};
use dlr_shared::event::ReceiptEvent;
use std::time::Instant;

use crate::error::IngestError;
use crate::state::AppState;

pub mod batch;
mod quarantine;

pub use quarantine::QuarantineLimits;
pub(crate) use quarantine::quarantine;

/// A webhook request as received, before any interpretation.
#[derive(Debug)]
pub struct WebhookRequest {
    /// HTTP method.
    pub method: Method,
    /// Path as routed (`/dlr/vonage`), for Twilio's URL signature.
    pub path: String,
    /// Raw query string, without `?`.
    pub query: Option<String>,
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw body bytes.
    pub body: Bytes,
}

/// Result of a signature check that did not reject the request; written
/// into every event. `Verified`: a parse failure afterwards is probably our bug.
pub(crate) use dlr_shared::event::Authenticity;

/// Accepts a Vonage SMS API receipt (GET query, POST form or POST JSON).
pub async fn vonage_sms(state: &AppState, request: WebhookRequest) -> Result<ReceiptEvent, IngestError> {
    let provider = Provider::VonageSms;
    let fields = match decode_fields(&request) {
        Ok(Decoded::Fields(fields)) => fields,
        // An account switched to the Messages API sends Messages-format JSON
        // to the same URL (Vonage sends inbound SMS and receipts to whatever URL the account names): take it rather than 400 it away.
        Ok(Decoded::MessagesApi) => return vonage_messages(state, request).await,
        Err(error) => return Err(reject(state, provider, error)),
    };
    unambiguous_vonage_names(&fields).map_err(|e| reject(state, provider, e.into()))?;
    let authenticity = check(state, provider, &request, state.signatures.vonage_mode, || {
        let secrets = state.signatures.accounts.secrets_for(
            "vonage",
            fields.get("api-key"),
            state.signatures.vonage_secrets.as_ref(),
        )?;
        secrets.first_match(|secret| {
            signature::vonage_sms::verify(
                fields.pairs(),
                secret,
                state.signatures.vonage_method,
                state.signatures.freshness,
                Utc::now().timestamp(),
            )
        })
    })
    .await?;
    let parsed = providers::vonage_sms::parse(&fields, Utc::now());
    finish(state, provider, &request, authenticity, parsed).await
}

/// Accepts a Vonage Messages API status webhook (POST JSON, JWT-signed).
pub async fn vonage_messages(state: &AppState, request: WebhookRequest) -> Result<ReceiptEvent, IngestError> {
    let provider = Provider::VonageMessages;
    require_body(&request, &["application/json"]).map_err(|e| reject(state, provider, e))?;
    let authorization = request.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if state.signatures.vonage_mode == Some(SignatureMode::Enforce) && authorization.is_none() {
        // Counted as a missing signature, answered 503 so that Vonage
        // retries, and not quarantined: the retry is the genuine copy.
        state.metrics.signature_failures.with_label_values(&[provider.as_str(), "missing"]).inc();
        return Err(reject(state, provider, IngestError::UnsignedRetry));
    }
    let authenticity = check(state, provider, &request, state.signatures.vonage_mode, || {
        let account = signature::vonage_jwt::unverified_api_key(authorization);
        let secrets = state.signatures.accounts.secrets_for(
            "vonage",
            account.as_deref(),
            state.signatures.vonage_secrets.as_ref(),
        )?;
        secrets.first_match(|secret| {
            signature::vonage_jwt::verify(
                authorization,
                &request.body,
                secret,
                state.signatures.freshness,
                Utc::now().timestamp(),
            )
            .map(|_| ())
        })
    })
    .await?;
    let parsed = providers::vonage_messages::parse(&request.body, Utc::now());
    finish(state, provider, &request, authenticity, parsed).await
}

/// Accepts a Twilio message status callback (POST form).
pub async fn twilio(state: &AppState, request: WebhookRequest) -> Result<ReceiptEvent, IngestError> {
    let provider = Provider::Twilio;
    let fields = require_body(&request, &["application/x-www-form-urlencoded"])
        .and_then(|()| Ok(providers::decode_urlencoded(&request.body, "form")?))
        .map_err(|e| reject(state, provider, e))?;
    let signature_header = request.headers.get("x-twilio-signature").and_then(|v| v.to_str().ok());
    let settings_header =
        request.headers.get("x-twilio-webhooks-signature-settings").and_then(|v| v.to_str().ok());
    let authenticity = check(state, provider, &request, state.signatures.twilio_mode, || {
        let tokens = state.signatures.accounts.secrets_for(
            "twilio",
            fields.get("AccountSid"),
            state.signatures.twilio_tokens.as_ref(),
        )?;
        let url = public_url(state, &request);
        tokens.first_match(|token| {
            signature::twilio::verify(&url, fields.pairs(), signature_header, settings_header, token)
        })
    })
    .await?;
    let parsed =
        providers::twilio::unambiguous(&fields).and_then(|()| providers::twilio::parse(&fields, Utc::now()));
    finish(state, provider, &request, authenticity, parsed).await
}

/// The URL the provider called (Twilio, Plivo): the configured public base plus our path and query.
pub(crate) fn public_url(state: &AppState, request: &WebhookRequest) -> String {
    let base =
        state.signatures.public_base_url.as_ref().map(|u| u.as_str().trim_end_matches('/')).unwrap_or("");
    match &request.query {
        Some(q) if !q.is_empty() => format!("{base}{}?{q}", request.path),
        _ => format!("{base}{}", request.path),
    }
}

/// Runs a signature check according to `mode`; `verify` returns which
/// secret matched (0: the current one). In enforce mode a failure
/// is quarantined and rejected; in log-only mode it is counted and logged.
pub(crate) async fn check(
    state: &AppState,
    provider: Provider,
    request: &WebhookRequest,
    mode: Option<SignatureMode>,
    verify: impl FnOnce() -> Result<usize, SignatureError>,
) -> Result<Authenticity, IngestError> {
    let mode = match mode {
        // The router does not route to a provider that is not served; this
        // keeps it so should a route be added by hand.
        None => return Err(IngestError::NotServed),
        Some(SignatureMode::Off) => return Ok(Authenticity::NotChecked),
        Some(mode) => mode,
    };
    match verify() {
        Ok(entry) => {
            let entry = if entry == 0 { "current" } else { "previous" };
            state.metrics.signature_verified.with_label_values(&[provider.as_str(), entry]).inc();
            Ok(Authenticity::Verified)
        }
        Err(error) => {
            state.metrics.signature_failures.with_label_values(&[provider.as_str(), error.reason()]).inc();
            if mode == SignatureMode::LogOnly {
                tracing::warn!(provider = %provider, reason = error.reason(), %error, "signature check failed (log-only: accepted)");
                return Ok(Authenticity::FailedLogOnly);
            }
            // Only a request carrying a well-formed signature of the provider's
            // scheme can be a genuine one refused by our mistake (a rotated
            // secret, a clock): one with none, or garbage, is just refused.
            let copy = !matches!(error, SignatureError::Missing(_) | SignatureError::Malformed(_));
            let error = IngestError::Signature(error);
            if copy && state.quarantine_limits.allow_signature_copy(provider, std::time::Instant::now()) {
                quarantine(state, provider, request, &error).await;
            }
            Err(reject(state, provider, error))
        }
    }
}

/// Publishes a parsed receipt, or rejects a parse failure (quarantining it
/// when the request was authentic: then the fault is probably ours).
async fn finish(
    state: &AppState,
    provider: Provider,
    request: &WebhookRequest,
    authenticity: Authenticity,
    parsed: Result<ReceiptEvent, ReceiptError>,
) -> Result<ReceiptEvent, IngestError> {
    let mut event = match parsed {
        Ok(event) => event,
        Err(error) => return Err(refuse(state, provider, request, authenticity, error).await),
    };
    event.authenticity = Some(authenticity);
    if !event.status_recognised {
        tracing::warn!(provider = %provider, status = %event.status, "unrecognised status word; accepted as pending");
    }
    publish(state, &event).await?;
    state.metrics.accepted.with_label_values(&[provider.as_str(), event.outcome.as_str()]).inc();
    Ok(event)
}

/// Rejects a receipt that cannot be parsed, quarantining it when the
/// request was authentic (then the fault is probably ours).
pub(crate) async fn refuse(
    state: &AppState,
    provider: Provider,
    request: &WebhookRequest,
    authenticity: Authenticity,
    error: ReceiptError,
) -> IngestError {
    let error = IngestError::Receipt(error);
    if authenticity == Authenticity::Verified {
        quarantine(state, provider, request, &error).await;
    }
    reject(state, provider, error)
}

/// Publishes the event and waits for the broker's confirm.
pub(crate) async fn publish(state: &AppState, event: &ReceiptEvent) -> Result<(), IngestError> {
    publish_all(state, std::slice::from_ref(event)).await
}

/// Publishes the events of one request, in order, and waits for every
/// confirm: `Ok` only if every one of them is stored.
pub(crate) async fn publish_all(state: &AppState, events: &[ReceiptEvent]) -> Result<(), IngestError> {
    let bodies: Vec<Vec<u8>> = events.iter().map(ReceiptEvent::to_json).collect();
    let messages: Vec<Outgoing<'_>> = events
        .iter()
        .zip(&bodies)
        .map(|(event, body)| Outgoing {
            exchange: &state.topology.exchange,
            routing_key: state.topology.receipt_routing_key(event.message_id.as_str()),
            body,
            properties: receipt_properties(event),
        })
        .collect();
    let metrics = &state.metrics;
    let in_flight = InFlight::start(&metrics.publishes_in_flight, events.len());
    let started = Instant::now();
    let result = state.publisher.publish_all(&messages).await;
    drop(in_flight);
    match result {
        Ok(()) => {
            metrics.confirm_duration.observe(started.elapsed().as_secs_f64());
            for event in events {
                tracing::debug!(event_id = %event.event_id, provider = %event.provider, outcome = %event.outcome, "receipt stored");
            }
            Ok(())
        }
        Err(error) => {
            if matches!(error, PublishError::Returned { .. }) {
                // Our queue or binding is gone (deleted by hand?): declare it
                // again so that the provider's retry succeeds.
                state.publisher.broker().request_redeclare();
            }
            metrics.publish_failures.with_label_values(&[error.reason()]).inc();
            for event in events {
                tracing::warn!(event_id = %event.event_id, provider = %event.provider, reason = error.reason(), %error, "receipt not stored; answering 503");
            }
            Err(IngestError::Unavailable(error))
        }
    }
}

/// Counts a publish as in flight until it is dropped: a request future can
/// be dropped mid-confirm (client gone, drain timeout), and the gauge must
/// come down then too.
struct InFlight<'a>(&'a prometheus::IntGauge, i64);

impl<'a> InFlight<'a> {
    fn start(gauge: &'a prometheus::IntGauge, publishes: usize) -> Self {
        let publishes = i64::try_from(publishes).unwrap_or(i64::MAX);
        gauge.add(publishes);
        Self(gauge, publishes)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.sub(self.1);
    }
}

/// Counts and logs a rejected request: one line each, with the reason.
/// Returns the error so callers can pass it on.
///
/// A 405 is not counted here: it is about the request line, not a receipt,
/// and the router answers most 405s before any handler runs. One rule for
/// every 405, HEAD included: `dlr_ingest_http_requests_total` only.
pub fn reject(state: &AppState, provider: Provider, error: IngestError) -> IngestError {
    if !matches!(error, IngestError::Unavailable(_) | IngestError::MethodNotAllowed) {
        state.metrics.rejected.with_label_values(&[provider.as_str(), error.reason()]).inc();
        tracing::warn!(provider = %provider, status = error.status().as_u16(), reason = error.reason(), error = %error, "receipt rejected");
    }
    error
}

/// What a `/dlr/vonage` request turned out to be.
enum Decoded {
    /// SMS API receipt fields.
    Fields(Fields),
    /// A Messages API JSON body (top-level `message_uuid`, no `messageId`).
    MessagesApi,
}

/// Decodes the query (GET) or body (POST) of a `/dlr/vonage` request. For
/// POST the query string is ignored: Vonage does not support mixing the two.
fn decode_fields(request: &WebhookRequest) -> Result<Decoded, IngestError> {
    if request.method == Method::GET {
        let query = request.query.as_deref().unwrap_or("");
        if query.is_empty() {
            return Err(IngestError::Empty("query string"));
        }
        return Ok(Decoded::Fields(providers::decode_urlencoded(query.as_bytes(), "query")?));
    }
    if request.method != Method::POST {
        // HEAD is routed with GET by axum; it must not have side effects.
        return Err(IngestError::MethodNotAllowed);
    }
    require_body(request, &["application/x-www-form-urlencoded", "application/json"])?;
    if !is_json(&request.headers) {
        return Ok(Decoded::Fields(providers::decode_urlencoded(&request.body, "form")?));
    }
    let object = match serde_json::from_slice::<serde_json::Value>(&request.body) {
        Ok(serde_json::Value::Object(object)) => object,
        Ok(_) => {
            return Err(ReceiptError::Malformed {
                format: "json",
                detail: "expected a JSON object".to_owned(),
            }
            .into());
        }
        Err(e) => return Err(ReceiptError::Malformed { format: "json", detail: e.to_string() }.into()),
    };
    if object.contains_key("message_uuid") && !object.contains_key("messageId") {
        return Ok(Decoded::MessagesApi);
    }
    Ok(Decoded::Fields(providers::fields_from_json_object(object)?))
}

/// Refuses Vonage field names containing `&` or `=`: the `sig` string
/// joins `&name=value` pairs, so such a name would let the signed text of
/// one request be re-split into different fields with the same signature.
fn unambiguous_vonage_names(fields: &Fields) -> Result<(), ReceiptError> {
    let problems: Vec<providers::FieldProblem> = fields
        .pairs()
        .iter()
        .filter(|(name, _)| name.contains(['&', '=']))
        .map(|(name, _)| providers::FieldProblem::new(name, "field names must not contain '&' or '='"))
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(ReceiptError::InvalidFields(problems)) }
}

/// Checks that a POST has a body of one of the `allowed` media types.
pub(crate) fn require_body(request: &WebhookRequest, allowed: &[&str]) -> Result<(), IngestError> {
    let essence = media_type(&request.headers);
    let accepted = allowed.iter().any(|a| {
        essence == *a
            || (*a == "application/json" && essence.starts_with("application/") && essence.ends_with("+json"))
    });
    if !accepted {
        return Err(IngestError::UnsupportedMediaType { got: essence, accepted: allowed.join(" or ") });
    }
    if request.body.iter().all(u8::is_ascii_whitespace) {
        return Err(IngestError::Empty("body"));
    }
    Ok(())
}

/// The media type without parameters, lower-cased (`application/json`).
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn is_json(headers: &HeaderMap) -> bool {
    let essence = media_type(headers);
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}
