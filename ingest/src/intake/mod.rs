//! One request's way through ingest, the same for every provider:
//! method and media type, decode, admit, verify, parse, publish.
//!
//! The order matters. Decoding comes first because signatures cover the
//! decoded fields; the signature comes before parsing so that a forged
//! request never reaches the parser's error messages; publishing is last,
//! and its confirm is what allows the 200. Each provider supplies the steps
//! ([`ProviderApi`]); this module is the only sequence of them.

use crate::providers::{Answer, Configured, ProviderApi, ReceiptError, Route, Verb};
use crate::signature::{SignatureError, SignatureMode};
use axum::Json;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use dlr_shared::Provider;
use dlr_shared::telemetry::spans;
use serde::Serialize;
use tracing::Instrument;

use crate::error::IngestError;
use crate::state::AppState;

mod publish;
mod quarantine;
mod replay;

pub use publish::Stored;
pub use quarantine::QuarantineLimits;
pub(crate) use quarantine::quarantine;
pub use replay::ReplayKeys;
pub(crate) use replay::open as open_replay;

/// Takes one request of provider `P` all the way: 200 (the [`Stored`]
/// receipts) only once the broker has confirmed every one of them.
pub async fn receive<P: ProviderApi>(
    state: &AppState,
    configured: &Configured<P::Credentials>,
    request: Result<WebhookRequest, IngestError>,
) -> Result<Stored, IngestError> {
    let request = request.map_err(|error| reject(state, P::PROVIDER, error))?;
    let decoding = spans::step("decode");
    let decoded = decoding
        .in_scope(|| accept(&P::ROUTE, &request).and_then(|()| P::decode(&request)))
        .inspect_err(|_| spans::failed(&decoding))
        .map_err(|error| reject(state, P::PROVIDER, error))?;
    drop(decoding);
    let provider = P::provider_of(&decoded);
    if let Err(error) = P::admit(configured, &request, &decoded) {
        if matches!(error, IngestError::UnsignedRetry) {
            // Counted as a missing signature, answered 503 so that the
            // provider retries, and not quarantined: the retry is the
            // genuine copy.
            state.metrics.signature_failures.with_label_values(&[provider.as_str(), "missing"]).inc();
        }
        return Err(reject(state, provider, error));
    }
    let verifying = spans::step("verify");
    let authenticity = check(state, provider, &request, configured.mode, || {
        P::verify(&configured.credentials, &state.common, &request, &decoded)
    })
    .instrument(verifying.clone())
    .await
    .inspect_err(|_| spans::failed(&verifying))?;
    drop(verifying);
    let parsed = P::parse(&decoded, Utc::now());
    publish::store(state, provider, &request, authenticity, parsed).await
}

/// Checks the method and media type against the provider's route: a GET
/// needs a query string, a POST a non-blank body of an accepted type.
pub(crate) fn accept(route: &Route, request: &WebhookRequest) -> Result<(), IngestError> {
    if request.method == Method::GET && route.methods.contains(&Verb::Get) {
        if request.query.as_deref().unwrap_or("").is_empty() {
            return Err(IngestError::Empty("query string"));
        }
        return Ok(());
    }
    if request.method != Method::POST {
        // HEAD is routed with GET by axum; it must not have side effects.
        return Err(IngestError::MethodNotAllowed);
    }
    require_body(request, route.media_types)
}

/// The 200 body of a route that answers for one receipt (a typed struct,
/// not a `json!` map, because this is built once per accepted receipt).
#[derive(Serialize)]
struct Accepted {
    status: &'static str,
    event_id: dlr_shared::EventId,
    outcome: dlr_shared::Outcome,
}

/// The HTTP answer: 200 with the route's documented body, or the error's.
pub fn respond(answer: Answer, result: Result<Stored, IngestError>) -> Response {
    match result {
        Ok(mut stored) if answer == Answer::Receipt && stored.receipts.len() == 1 => {
            let one = stored.receipts.remove(0);
            let accepted = Accepted { status: "accepted", event_id: one.event_id, outcome: one.outcome };
            (StatusCode::OK, Json(accepted)).into_response()
        }
        Ok(stored) => (StatusCode::OK, Json(stored)).into_response(),
        Err(error) => error.into_response(),
    }
}

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
    /// When ingest received it: now, or for a sealed replay the time of its
    /// first receipt. Signature freshness is checked against this time.
    pub received_at: DateTime<Utc>,
    /// A replay whose quarantine seal opened ([`replay`]): freshness as of
    /// `received_at`, no nonce memory, no second quarantine copy.
    pub sealed_replay: bool,
}

/// Result of a signature check that did not reject the request; written
/// into every event. `Verified`: a parse failure afterwards is probably our bug.
pub(crate) use dlr_shared::event::Authenticity;

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
            if copy
                && state.quarantine_limits.allow_signature_copy(
                    provider,
                    request.body.len(),
                    std::time::Instant::now(),
                )
            {
                quarantine(state, provider, request, &error).await;
            }
            Err(reject(state, provider, error))
        }
    }
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

/// True when the media type is JSON (`application/json` or `application/*+json`).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let essence = media_type(headers);
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}
