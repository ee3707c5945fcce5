//! Counts and times every request by route template and status code.
//!
//! A plain tower layer rather than `axum::middleware::from_fn`: the latter
//! boxes a future and clones the inner router for every request, which
//! measurably cost about a tenth of ingest's throughput on two cores.
//! Labels use the route template (`MatchedPath`), never the raw path, so
//! the number of series stays bounded.

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tower::{Layer, Service};

use crate::metrics::IngestMetrics;

/// Adds request counting and timing to every route it wraps.
#[derive(Clone)]
pub struct HttpMetricsLayer {
    metrics: Arc<IngestMetrics>,
}

impl HttpMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<IngestMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics { inner, metrics: self.metrics.clone() }
    }
}

/// The service [`HttpMetricsLayer`] produces.
#[derive(Clone)]
pub struct HttpMetrics<S> {
    inner: S,
    metrics: Arc<IngestMetrics>,
}

impl<S, B> Service<Request<B>> for HttpMetrics<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        ResponseFuture {
            inner: self.inner.call(request),
            route,
            started: Instant::now(),
            metrics: self.metrics.clone(),
        }
    }
}

pin_project! {
    /// Records the response's status and the elapsed time when it is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        route: Option<MatchedPath>,
        started: Instant,
        metrics: Arc<IngestMetrics>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let route = this.route.as_ref().map_or("unmatched", |p| p.as_str());
            this.metrics.http_requests.with_label_values(&[route, response.status().as_str()]).inc();
            this.metrics
                .http_duration
                .with_label_values(&[route])
                .observe(this.started.elapsed().as_secs_f64());
        }
        Poll::Ready(result)
    }
}
