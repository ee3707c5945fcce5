//! The http handler: POSTs events to webhook endpoints, signed the
//! Standard Webhooks way.
//!
//! Headers `webhook-id` (the event id, so receivers can de-duplicate our
//! at-least-once deliveries), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature` (`v1,` + base64 HMAC-SHA256 over `id.timestamp.body`,
//! one per secret) follow <https://www.standardwebhooks.com>, for which
//! receivers in most languages already have a verifier.
//!
//! Each event goes to every endpoint whose filters match it. The dispatcher
//! treats each endpoint as a step of its own ([`crate::envelope::Step`]):
//! one endpoint failing is retried alone, never re-sending to another that
//! succeeded, and each endpoint has its own circuit breaker, in-flight cap
//! and rate limit, so one dead receiver does not slow down the others.
//!
//! - [`endpoints`]: the endpoints file and the one-URL shorthand.
//! - [`signing`]: secrets and signatures.
//! - [`endpoint`]: one endpoint's request, limits and metrics.
//! - [`breaker`]: the per-endpoint circuit breaker.
//! - [`pacing`]: the per-endpoint rate limit.

pub mod breaker;
pub mod endpoint;
pub mod endpoints;
pub mod pacing;
pub mod signing;

use async_trait::async_trait;
use dlr_shared::{Outcome, ReceiptEvent};
use futures_util::future::join_all;
use secrecy::ExposeSecret;
use std::time::Duration;

pub use endpoint::{Attempt, BreakerSettings, Endpoint};
pub use endpoints::{EndpointDefaults, EndpointSpec, EndpointsError};

use super::{Handler, HandlerError, HandlerKind};
use crate::config::Config;
use crate::metrics::WorkerMetrics;

/// Forwards events over HTTP to its endpoints.
pub struct HttpHandler {
    endpoints: Vec<Endpoint>,
}

impl HttpHandler {
    /// The handler for `specs`.
    pub fn new(
        specs: Vec<EndpointSpec>,
        connect_timeout: Duration,
        breaker: BreakerSettings,
        metrics: &WorkerMetrics,
    ) -> Result<Self, EndpointsError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .user_agent(concat!("dlr-worker/", env!("CARGO_PKG_VERSION")))
            // A 3xx is an answer to judge (endpoint::failure_for_status), not a hop to take.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| EndpointsError::Variable { variable: "WORKER_HTTP_URL", problem: e.to_string() })?;
        let endpoints = specs
            .into_iter()
            .map(|spec| Endpoint::new(spec, client.clone(), breaker, metrics.clone()))
            .collect();
        Ok(Self { endpoints })
    }

    /// The handler the configuration describes: the endpoints file if
    /// set, else the `WORKER_HTTP_URL` shorthand.
    pub fn from_config(config: &Config, metrics: &WorkerMetrics) -> Result<Self, EndpointsError> {
        let defaults =
            EndpointDefaults { timeout: config.http_timeout, max_in_flight: config.http_max_in_flight };
        let specs = match &config.webhooks_file {
            Some(path) => endpoints::load_file(path, defaults)?,
            None => {
                let secret =
                    config.http_secret.as_ref().map(|s| s.expose_secret().to_owned()).unwrap_or_default();
                let per_outcome: Vec<(Outcome, Option<&url::Url>)> = Outcome::ALL
                    .iter()
                    .map(|&outcome| (outcome, config.http_url_override(outcome)))
                    .collect();
                endpoints::shorthand(config.http_url.as_ref(), &per_outcome, &secret, defaults)?
            }
        };
        for spec in &specs {
            // The origin only: a URL's path or query may carry a token.
            tracing::info!(
                endpoint = spec.name.as_str(),
                origin = %spec.url.origin().ascii_serialization(),
                secrets = spec.keys.len(),
                "webhook endpoint configured"
            );
        }
        let breaker = BreakerSettings {
            failures: config.webhook_breaker_failures,
            cooldown: config.webhook_breaker_cooldown,
        };
        Self::new(specs, config.http_timeout.min(Duration::from_secs(3)), breaker, metrics)
    }
}

#[async_trait]
impl Handler for HttpHandler {
    fn kind(&self) -> HandlerKind {
        HandlerKind::Http
    }

    /// Delivers to every matching endpoint; the first failure is the
    /// answer. The dispatcher does not come here: it runs the endpoints as
    /// steps of their own ([`Handler::endpoints`]).
    async fn handle(&self, event: &ReceiptEvent) -> Result<(), HandlerError> {
        let attempts =
            join_all(self.endpoints.iter().filter(|e| e.wants(event)).map(|e| e.deliver(event))).await;
        attempts.into_iter().try_for_each(|attempt| attempt.result)
    }

    fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}
