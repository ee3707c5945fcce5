//! Every way a webhook request can fail, and the HTTP status it gets.
//!
//! The status is the contract with the provider: 4xx means "never send this
//! again" (so only for requests that can never succeed), 429/503 mean "retry
//! later" (so for anything that is our problem). Internal details are
//! logged, not sent.

use crate::providers::{FieldProblem, ReceiptError};
use crate::signature::SignatureError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dlr_shared::amqp::PublishError;
use serde_json::json;

/// Seconds a provider is asked to wait after a 503/429.
pub const RETRY_AFTER_SECONDS: &str = "5";

/// Why ingest did not accept a request.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Content type this route cannot decode.
    #[error("unsupported content type {got:?}: this route accepts {accepted}")]
    UnsupportedMediaType {
        /// The media type sent.
        got: String,
        /// What the route accepts (`application/json`, ...).
        accepted: String,
    },
    /// The provider is not served (no credentials, no explicit mode).
    #[error("not found")]
    NotServed,
    /// A Vonage Messages callback without its JWT while signatures are
    /// enforced: Vonage documents that a callback may go out unsigned after
    /// an internal error, and that a 5xx makes it retry (signed, we hope).
    #[error("unsigned callback; retry later")]
    UnsignedRetry,
    /// A method the route does not serve (HEAD on a receipt route).
    #[error("method not allowed: use GET or POST")]
    MethodNotAllowed,
    /// Body over the configured limit.
    #[error("request body exceeds the configured size limit (INGEST_BODY_LIMIT_BYTES)")]
    PayloadTooLarge,
    /// The client did not send its body within the request timeout.
    #[error("the request body did not arrive within INGEST_REQUEST_TIMEOUT_MS")]
    BodyTimeout,
    /// The body could not be read (client aborted, bad chunking).
    #[error("could not read the request body: {0}")]
    UnreadableBody(String),
    /// Nothing was sent.
    #[error("empty request: no receipt fields in the {0}")]
    Empty(&'static str),
    /// Decoded but not a valid receipt.
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    /// Signature check failed in enforce mode.
    #[error("signature check failed: {0}")]
    Signature(#[from] SignatureError),
    /// A replay seal (`x-dlr-replay-seal`) that ingest's replay keys do not
    /// open for this request: forged, altered, or a key that was removed.
    #[error("the replay seal does not verify")]
    ReplaySeal,
    /// The broker did not confirm the receipt.
    #[error("receipt not stored: {0}")]
    Unavailable(#[from] PublishError),
}

impl IngestError {
    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::NotServed => StatusCode::NOT_FOUND,
            IngestError::UnsignedRetry => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            IngestError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            IngestError::UnreadableBody(_) => StatusCode::BAD_REQUEST,
            IngestError::Empty(_) | IngestError::Receipt(_) => StatusCode::BAD_REQUEST,
            IngestError::Signature(_) | IngestError::ReplaySeal => StatusCode::UNAUTHORIZED,
            IngestError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Low-cardinality reason for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::UnsupportedMediaType { .. } => "unsupported_media_type",
            IngestError::NotServed => "not_served",
            IngestError::UnsignedRetry => "unsigned_retry",
            IngestError::MethodNotAllowed => "method_not_allowed",
            IngestError::PayloadTooLarge => "payload_too_large",
            IngestError::BodyTimeout => "body_timeout",
            IngestError::UnreadableBody(_) => "unreadable_body",
            IngestError::Empty(_) => "empty",
            IngestError::Receipt(e) => e.reason(),
            IngestError::Signature(_) => "signature",
            IngestError::ReplaySeal => "replay_seal",
            IngestError::Unavailable(e) => e.reason(),
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            // The caller learns that we could not store it, not why: broker
            // details are for our logs.
            IngestError::Unavailable(_) => json!({
                "error": "temporarily unable to store the receipt; retry later",
            }),
            IngestError::Receipt(e) => {
                let fields: &[FieldProblem] = e.problems();
                json!({ "error": e.to_string(), "reason": e.reason(), "fields": fields })
            }
            // The reason code only: which secret, method or header did not
            // fit is configuration detail for our log and metrics.
            IngestError::Signature(e) => json!({ "error": "signature check failed", "reason": e.reason() }),
            other => json!({ "error": other.to_string(), "reason": other.reason() }),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }
}
