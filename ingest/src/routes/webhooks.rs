//! The webhook routes: one per provider, from the registry, each added
//! only when its provider is served (otherwise 404). A provider whose
//! requests name their account only in the URL (Sinch, Infobip) also gets
//! `<route>/{account}`; the same handler selects that account's credentials,
//! and an account it does not know gets 401 `unknown_account`, not 404, so
//! the answer tells nothing about which accounts exist.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;

use crate::error::IngestError;
use crate::intake::{self, WebhookRequest};
use crate::providers::Served;
use crate::providers::api::AccountKey;
use crate::state::AppState;

/// Smallest body limit of the routes whose requests carry up to a hundred
/// receipts (`/dlr/infobip`, `/dlr/sinch`): a default Infobip request holds
/// 100 reports of up to a few KiB each, more than the 64 KiB default of
/// `INGEST_BODY_LIMIT_BYTES`.
pub const BATCH_BODY_LIMIT_BYTES: usize = 1 << 20;

/// The routes of the served providers whose route's `large_bodies` is
/// `large_bodies`. Methods a route does not take get 405 from the router.
pub fn router(served: &[Served], large_bodies: bool) -> Router<AppState> {
    let mut router = Router::new();
    for one in served.iter().filter(|one| one.entry.route().large_bodies == large_bodies) {
        let Some(handler) = one.handler.clone() else { continue };
        let path = one.entry.route().path;
        if one.entry.settings().account == Some(AccountKey::PathSegment) {
            // One segment: the template, not the raw path, labels the metrics.
            router = router.route(&format!("{path}/{{account}}"), handler.clone());
        }
        router = router.route(path, handler);
    }
    router
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
