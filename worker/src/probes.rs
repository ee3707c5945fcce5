//! The worker's small HTTP surface: probes and metrics.

use crate::consumer::Consuming;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;

use crate::metrics::WorkerMetrics;

/// What the probes look at.
#[derive(Clone)]
pub struct ProbeState {
    /// Which receipts queues (shards) have a consumer registered.
    pub consuming: Arc<Consuming>,
    /// Metrics to render.
    pub metrics: WorkerMetrics,
    /// The consuming connection, whose last failure `/readyz` shows.
    pub broker: dlr_shared::amqp::BrokerConnection,
}

/// `/healthz` (process alive), `/readyz` (consuming), `/metrics`.
pub fn router(state: ProbeState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<ProbeState>) -> impl IntoResponse {
    if state.consuming.all() {
        (StatusCode::OK, "consuming".to_owned())
    } else {
        let reason = match state.broker.last_error() {
            Some(cause) => format!("not consuming: {cause}"),
            None if state.consuming.count() > 0 => {
                format!("not consuming every shard: {} consumer(s) registered", state.consuming.count())
            }
            None => "not consuming".to_owned(),
        };
        (StatusCode::SERVICE_UNAVAILABLE, reason)
    }
}

async fn metrics(State(state): State<ProbeState>) -> impl IntoResponse {
    let (content_type, body) = dlr_shared::metrics::render(&state.metrics.registry);
    ([(header::CONTENT_TYPE, content_type)], body)
}
