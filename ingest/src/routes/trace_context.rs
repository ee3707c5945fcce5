//! The span of one webhook request, continuing the caller's trace.
//!
//! A W3C `traceparent` (and `tracestate`) on the request makes the span
//! its child; without one the request starts a trace. Everything the
//! request does runs inside the span, so the receipt's AMQP message carries
//! its context on to the worker. With export off the span is never built
//! and an incoming context is only passed through (see
//! `dlr_shared::telemetry::context`). A plain tower layer, like
//! [`super::http_metrics`], for the same reason: no boxed future per request.

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use dlr_shared::telemetry::context::Continued;
use dlr_shared::telemetry::{SPAN_TARGET, TraceHeaders, continued, spans};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};
use tracing::field::Empty;

/// Wraps every webhook route in its request span.
#[derive(Clone, Copy, Default)]
pub struct TraceContextLayer;

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContext { inner }
    }
}

/// The service [`TraceContextLayer`] produces.
#[derive(Clone)]
pub struct TraceContext<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for TraceContext<S>
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
        let headers = request.headers();
        let incoming = TraceHeaders::read(|name| headers.get(name).and_then(|v| v.to_str().ok()));
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "request",
            otel.name = Empty,
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = %request.method(),
            http.route = Empty,
            http.response.status_code = Empty,
            dlr.event_id = Empty,
            dlr.provider = Empty,
            dlr.outcome = Empty,
        );
        if !span.is_disabled() {
            let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
            span.record("otel.name", format!("{} {route}", request.method()));
            span.record("http.route", route);
        }
        ResponseFuture { inner: continued(span.clone(), incoming, self.inner.call(request)), span }
    }
}

pin_project! {
    /// Records the response's status on the span when it is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Continued<F>,
        span: tracing::Span,
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
        if let Ok(response) = &result
            && !this.span.is_disabled()
        {
            this.span.record("http.response.status_code", response.status().as_u16());
            // A 4xx is the caller's mistake, not a failure of the server span.
            if response.status().is_server_error() {
                spans::failed(this.span);
            }
        }
        Poll::Ready(result)
    }
}
