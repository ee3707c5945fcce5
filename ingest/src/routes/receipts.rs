//! The webhook routes, one per provider API.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use dlr_shared::{EventId, Outcome, Provider};

use crate::config::SignaturePolicy;
use crate::error::IngestError;
use crate::intake::{self, WebhookRequest};
use crate::state::AppState;

/// `/dlr/vonage` (GET and POST), `/dlr/vonage-messages` and `/dlr/twilio` (POST),
/// each only when its provider is served (otherwise 404).
/// Other methods get 405 from the router.
pub fn router(policy: &SignaturePolicy) -> Router<AppState> {
    let mut router = Router::new();
    if policy.serves("/dlr/vonage") {
        router = router.route("/dlr/vonage", get(vonage_sms).post(vonage_sms));
    }
    if policy.serves("/dlr/vonage-messages") {
        router = router.route("/dlr/vonage-messages", post(vonage_messages));
    }
    if policy.serves("/dlr/twilio") {
        router = router.route("/dlr/twilio", post(twilio));
    }
    router
}

async fn vonage_sms(State(state): State<AppState>, request: Result<WebhookRequest, IngestError>) -> Response {
    let result = match request {
        Ok(request) => intake::vonage_sms(&state, request).await,
        Err(error) => Err(intake::reject(&state, Provider::VonageSms, error)),
    };
    respond(result)
}

async fn vonage_messages(
    State(state): State<AppState>,
    request: Result<WebhookRequest, IngestError>,
) -> Response {
    let result = match request {
        Ok(request) => intake::vonage_messages(&state, request).await,
        Err(error) => Err(intake::reject(&state, Provider::VonageMessages, error)),
    };
    respond(result)
}

async fn twilio(State(state): State<AppState>, request: Result<WebhookRequest, IngestError>) -> Response {
    let result = match request {
        Ok(request) => intake::twilio(&state, request).await,
        Err(error) => Err(intake::reject(&state, Provider::Twilio, error)),
    };
    respond(result)
}

impl FromRequest<AppState> for WebhookRequest {
    type Rejection = IngestError;

    /// Keeps the raw parts: signatures are computed over exactly these.
    /// The body is read under the router's `DefaultBodyLimit` and within
    /// `INGEST_REQUEST_TIMEOUT_MS`: a client too slow to send it gets 408,
    /// which is right, since nothing was accepted yet. After the body, only
    /// the publish's own timeout applies (503, never 408).
    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let method = parts.method.clone();
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().map(str::to_owned);
        let headers = std::mem::take(&mut parts.headers);
        let read = Bytes::from_request(Request::from_parts(parts, body), state);
        let body = tokio::time::timeout(state.body_timeout, read)
            .await
            .map_err(|_| IngestError::BodyTimeout)?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    IngestError::PayloadTooLarge
                } else {
                    IngestError::UnreadableBody(rejection.body_text())
                }
            })?;
        let mut request = WebhookRequest {
            method,
            path,
            query,
            headers,
            body,
            received_at: chrono::Utc::now(),
            sealed_replay: false,
        };
        intake::open_replay(state, &mut request)?;
        Ok(request)
    }
}

/// The 200 body: which event the receipt became (a typed struct, not a
/// `json!` map, because this is built once per accepted receipt).
#[derive(Serialize)]
struct Accepted {
    status: &'static str,
    event_id: EventId,
    outcome: Outcome,
}

fn respond(result: Result<dlr_shared::ReceiptEvent, IngestError>) -> Response {
    match result {
        Ok(event) => (
            StatusCode::OK,
            Json(Accepted { status: "accepted", event_id: event.event_id, outcome: event.outcome }),
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}
