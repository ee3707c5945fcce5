//! The routes of Telnyx, Plivo, Sinch and Infobip, whose requests may
//! carry several receipts: each answers with the [`Stored`] list (200) or
//! the request's error.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dlr_shared::Provider;

use crate::config::SignaturePolicy;
use crate::error::IngestError;
use crate::intake::batch::{Stored, infobip, plivo, sinch, telnyx};
use crate::intake::{WebhookRequest, reject};
use crate::state::AppState;

/// Smallest body limit of the batch routes (`/dlr/infobip`, `/dlr/sinch`):
/// a default Infobip request holds 100 reports of up to a few KiB each,
/// more than the 64 KiB default of `INGEST_BODY_LIMIT_BYTES`.
pub const BATCH_BODY_LIMIT_BYTES: usize = 1 << 20;

/// `/dlr/telnyx`, `/dlr/plivo` (GET and POST), each only when served.
pub fn router(policy: &SignaturePolicy) -> Router<AppState> {
    let mut router = Router::new();
    if policy.serves("/dlr/telnyx") {
        router = router.route("/dlr/telnyx", post(telnyx_route));
    }
    if policy.serves("/dlr/plivo") {
        router = router.route("/dlr/plivo", get(plivo_route).post(plivo_route));
    }
    router
}

/// The routes whose requests carry up to a hundred receipts and need
/// [`BATCH_BODY_LIMIT_BYTES`]: `/dlr/sinch`, `/dlr/infobip`, each only when served.
pub fn batch_router(policy: &SignaturePolicy) -> Router<AppState> {
    let mut router = Router::new();
    if policy.serves("/dlr/sinch") {
        router = router.route("/dlr/sinch", post(sinch_route));
    }
    if policy.serves("/dlr/infobip") {
        router = router.route("/dlr/infobip", post(infobip_route));
    }
    router
}

async fn telnyx_route(
    State(state): State<AppState>,
    request: Result<WebhookRequest, IngestError>,
) -> Response {
    answer(&state, Provider::Telnyx, request, telnyx).await
}

async fn plivo_route(
    State(state): State<AppState>,
    request: Result<WebhookRequest, IngestError>,
) -> Response {
    answer(&state, Provider::Plivo, request, plivo).await
}

async fn sinch_route(
    State(state): State<AppState>,
    request: Result<WebhookRequest, IngestError>,
) -> Response {
    answer(&state, Provider::Sinch, request, sinch).await
}

async fn infobip_route(
    State(state): State<AppState>,
    request: Result<WebhookRequest, IngestError>,
) -> Response {
    answer(&state, Provider::Infobip, request, infobip).await
}

async fn answer<'a, F, Fut>(
    state: &'a AppState,
    provider: Provider,
    request: Result<WebhookRequest, IngestError>,
    intake: F,
) -> Response
where
    F: FnOnce(&'a AppState, WebhookRequest) -> Fut,
    Fut: Future<Output = Result<Stored, IngestError>>,
{
    let result = match request {
        Ok(request) => intake(state, request).await,
        Err(error) => Err(reject(state, provider, error)),
    };
    match result {
        Ok(stored) => (StatusCode::OK, Json(stored)).into_response(),
        Err(error) => error.into_response(),
    }
}
