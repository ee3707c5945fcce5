//! HTTP routes. Each module owns its routes; [`router`] merges them and
//! applies the layers once.

mod health;
mod http_metrics;
mod trace_context;
mod webhooks;

pub use webhooks::BATCH_BODY_LIMIT_BYTES;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use tower::BoxError;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;

use crate::error::RETRY_AFTER_SECONDS;
use crate::providers::Served;
use crate::state::AppState;
use http_metrics::HttpMetricsLayer;
use trace_context::TraceContextLayer;

/// Router settings that come from configuration.
#[derive(Debug, Clone, Copy)]
pub struct RouterLimits {
    /// Largest body accepted.
    pub body_limit_bytes: usize,
    /// Deadline for the request head (hyper) and body (the extractor).
    pub request_timeout: Duration,
    /// Concurrent requests before shedding with 429.
    pub max_concurrency: usize,
}

/// The complete application router: the routes of the `served` providers,
/// the probes and `/metrics`.
pub fn router(state: AppState, served: &[Served], limits: RouterLimits) -> Router {
    let shed_counter = state.metrics.load_shed.clone();
    // Receipts are shed with 429 + Retry-After (providers retry it) once the
    // concurrency limit is reached, instead of queueing without bound. The
    // limit is one semaphore for the process: axum applies a layer to each
    // route and method separately, and a per-service limit would admit the
    // limit once per webhook endpoint.
    let load_shedding = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(move |error: BoxError| {
            let shed_counter = shed_counter.clone();
            async move { overload_response(&error, &shed_counter) }
        }))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::new(limits.max_concurrency));

    // RequestBodyLimitLayer refuses an oversize Content-Length before any
    // byte is read; DefaultBodyLimit covers chunked bodies as they arrive.
    let webhooks = webhooks::router(served, false)
        .layer(DefaultBodyLimit::max(limits.body_limit_bytes))
        .layer(RequestBodyLimitLayer::new(limits.body_limit_bytes))
        .layer(load_shedding.clone())
        .layer(TraceContextLayer);
    // Infobip and Sinch `full` batch up to 100 reports per request.
    let batch_limit = limits.body_limit_bytes.max(BATCH_BODY_LIMIT_BYTES);
    let batch_webhooks = webhooks::router(served, true)
        .layer(DefaultBodyLimit::max(batch_limit))
        .layer(RequestBodyLimitLayer::new(batch_limit))
        .layer(load_shedding)
        .layer(TraceContextLayer);

    // No whole-request timeout layer: it would also cut the confirm wait and
    // answer 408 (final for a provider) for a receipt the broker may yet
    // store. The head has hyper's header-read timeout, the body the
    // extractor's deadline (both INGEST_REQUEST_TIMEOUT_MS), and the publish
    // the confirm timeout, which start-up checks is the shorter one.
    Router::new()
        .merge(webhooks)
        .merge(batch_webhooks)
        .merge(health::router())
        .layer(HttpMetricsLayer::new(state.metrics.clone()))
        .with_state(state)
}

fn overload_response(error: &BoxError, shed_counter: &prometheus::IntCounter) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        shed_counter.inc();
        let mut response = (StatusCode::TOO_MANY_REQUESTS, "overloaded; retry later").into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        return response;
    }
    tracing::error!(%error, "unexpected middleware error");
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable").into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    response
}
