//! Probes and metrics.
//!
//! `/healthz` only says the process serves HTTP: tying liveness to the broker
//! would make Kubernetes restart every pod during a broker outage. `/readyz`
//! is what takes a pod out of the load balancer: draining, or this pod's
//! broker connection lost for longer than the grace (see [`crate::readiness`]).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

/// Probe and metrics routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.readiness() {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (content_type, body) = dlr_shared::metrics::render(&state.metrics.registry);
    ([(header::CONTENT_TYPE, content_type)], body)
}
