//! One webhook endpoint at run time: its filter, limits, breaker and
//! metrics, and the signed POST of one event to it.

use dlr_shared::ReceiptEvent;
use prometheus::{Histogram, IntCounter};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use super::breaker::{Admission, Breaker, Health};
use super::endpoints::EndpointSpec;
use super::pacing::Pacer;
use crate::envelope::{EndpointName, Step};
use crate::handlers::{CallResult, Failure, HandlerError};
use crate::metrics::WorkerMetrics;

/// How the circuit breakers are set (`WORKER_WEBHOOK_BREAKER_*`).
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive failures that open a circuit; 0 never opens.
    pub failures: u32,
    /// How long an open circuit waits before a probe.
    pub cooldown: Duration,
}

/// The answer to one delivery attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Success, or why not.
    pub result: Result<(), HandlerError>,
    /// What the receiver asked for with `Retry-After` (429 and 503 only).
    pub retry_after: Option<Duration>,
}

impl Attempt {
    fn failed(error: HandlerError, retry_after: Option<Duration>) -> Self {
        Self { result: Err(error), retry_after }
    }
}

/// An endpoint's series, looked up once: the label lookup (a hash of the
/// label values under a lock) would otherwise run on every request.
struct EndpointMetrics {
    ok: IntCounter,
    transient: IntCounter,
    permanent: IntCounter,
    duration: Histogram,
    skipped: IntCounter,
}

impl EndpointMetrics {
    fn new(metrics: &WorkerMetrics, name: &str) -> Self {
        let result = |result: CallResult| metrics.webhook_requests.with_label_values(&[name, result.into()]);
        Self {
            ok: result(CallResult::Ok),
            transient: result(CallResult::Transient),
            permanent: result(CallResult::Permanent),
            duration: metrics.webhook_duration.with_label_values(&[name]),
            skipped: metrics.webhook_skipped.with_label_values(&[name]),
        }
    }

    fn count(&self, result: &Result<(), HandlerError>) {
        match result {
            Ok(()) => self.ok.inc(),
            Err(HandlerError::Transient(_)) => self.transient.inc(),
            Err(HandlerError::Permanent(_)) => self.permanent.inc(),
        }
    }
}

/// A configured endpoint, ready to send to.
pub struct Endpoint {
    spec: EndpointSpec,
    client: reqwest::Client,
    /// Permits for requests in flight, when capped.
    in_flight: Option<Semaphore>,
    pacer: Option<Pacer>,
    breaker: Breaker,
    metrics: EndpointMetrics,
}

impl Endpoint {
    /// `client` is shared by all endpoints (it pools connections per host).
    pub fn new(
        spec: EndpointSpec,
        client: reqwest::Client,
        breaker: BreakerSettings,
        metrics: WorkerMetrics,
    ) -> Self {
        let name = spec.name.as_str();
        let endpoint_metrics = EndpointMetrics::new(&metrics, name);
        let breaker = Breaker::new(
            breaker.failures,
            breaker.cooldown,
            spec.timeout,
            metrics.webhook_circuit.clone(),
            name,
        );
        Self {
            in_flight: spec.max_in_flight.map(|max| Semaphore::new(max.get())),
            pacer: spec.max_per_second.map(Pacer::per_second),
            client,
            breaker,
            metrics: endpoint_metrics,
            spec,
        }
    }

    /// Its name.
    pub fn name(&self) -> EndpointName {
        self.spec.name
    }

    /// What the done list and park headers call it.
    pub fn step(&self) -> Step {
        self.spec.step
    }

    /// Whether `event` goes to this endpoint.
    pub fn wants(&self, event: &ReceiptEvent) -> bool {
        self.spec.filter.matches(event)
    }

    /// Posts `event`, unless the circuit is open.
    pub async fn deliver(&self, event: &ReceiptEvent) -> Attempt {
        let name = self.spec.name.as_str();
        let admission = self.breaker.admit();
        if admission == Admission::Skip {
            self.metrics.skipped.inc();
            return Attempt::failed(
                HandlerError::Transient(Failure::new(format!(
                    "endpoint {name}: circuit open after {} consecutive failures; not called",
                    self.breaker.threshold()
                ))),
                None,
            );
        }
        // The semaphore is never closed; the permit is held until the answer is in.
        let _permit = match &self.in_flight {
            Some(semaphore) => semaphore.acquire().await.ok(),
            None => None,
        };
        if let Some(pacer) = &self.pacer {
            pacer.wait().await;
        }
        let body = event.to_json();
        // Taken after the waits: the receiver checks its age.
        let timestamp = chrono::Utc::now().timestamp();
        let signature = self.spec.keys.signature_header(event.event_id.as_str(), timestamp, &body);
        let started = Instant::now();
        let mut request = self
            .client
            .post(self.spec.url.clone())
            .timeout(self.spec.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", event.event_id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
        // W3C trace context, so the receiver's trace joins this event's.
        if let Some(trace) = dlr_shared::telemetry::context::current() {
            for (name, value) in trace.pairs() {
                request = request.header(name, value);
            }
        }
        let sent = request.body(body).send().await;
        self.metrics.duration.observe(started.elapsed().as_secs_f64());
        let attempt = match sent {
            // Connect errors, timeouts, resets: the receiver may be back soon.
            Err(error) => {
                self.breaker.record(admission, Health::Down);
                Attempt::failed(request_failure(name, error), None)
            }
            Ok(response) => {
                let status = response.status();
                let health = if status.is_server_error() { Health::Down } else { Health::Up };
                self.breaker.record(admission, health);
                let retry_after = asks_to_wait(status, response.headers());
                match failure_for_status(name, status) {
                    None => Attempt { result: Ok(()), retry_after: None },
                    Some(error) => Attempt::failed(error, retry_after),
                }
            }
        };
        self.metrics.count(&attempt.result);
        attempt
    }
}

/// `Retry-After` of a 429 or 503, in seconds or as an HTTP date
/// (RFC 9110, section 10.2.3); anything unreadable is ignored.
fn asks_to_wait(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?, chrono::Utc::now())
}

fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((date.with_timezone(&chrono::Utc) - now).to_std().unwrap_or(Duration::ZERO))
}

/// 408, 429 and 5xx may succeed later; any other non-2xx will not.
///
/// Redirects are never followed (the client is built without a redirect
/// policy): following one turns our POST into a GET on 301/302/303, and a
/// login or maintenance page answering 200 would count as delivered. A
/// temporary redirect (302, 303, 307) is retried like an outage, since
/// maintenance pages redirect; a permanent one (301, 308) parks the event:
/// the configured URL is wrong, and after fixing it an operator replays.
fn failure_for_status(endpoint: &str, status: StatusCode) -> Option<HandlerError> {
    if status.is_success() {
        None
    } else if status == StatusCode::MOVED_PERMANENTLY || status == StatusCode::PERMANENT_REDIRECT {
        Some(HandlerError::Permanent(Failure::new(format!(
            "endpoint {endpoint}: receiver answered {status} (moved for good: fix the URL)"
        ))))
    } else if status.is_redirection()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Some(HandlerError::Transient(Failure::new(format!(
            "endpoint {endpoint}: receiver answered {status}"
        ))))
    } else {
        Some(HandlerError::Permanent(Failure::new(format!(
            "endpoint {endpoint}: receiver answered {status}"
        ))))
    }
}

/// A request that got no answer: worth retrying. The URL is left out of
/// the text (it can carry credentials or a token); the cause chain is kept.
fn request_failure(endpoint: &str, error: reqwest::Error) -> HandlerError {
    HandlerError::transient(format!("endpoint {endpoint}: request failed"), error.without_url())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_errors_show_the_cause_without_the_url() {
        let client = reqwest::Client::new();
        let error =
            client.post("http://user:url-password@127.0.0.1:1/hook?token=query-token").send().await.err();
        let text = error.map(|e| request_failure("crm", e).to_string()).unwrap_or_default();
        assert!(text.contains("refused") && text.contains("crm"), "{text}");
        assert!(!text.contains("url-password") && !text.contains("query-token"), "{text}");
    }

    #[test]
    fn classifies_statuses() {
        assert!(failure_for_status("e", StatusCode::NO_CONTENT).is_none());
        for s in [408, 429, 500, 502, 503, 302, 303, 307] {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::OK);
            assert!(matches!(failure_for_status("e", status), Some(HandlerError::Transient(_))), "{s}");
        }
        for s in [301, 308, 400, 401, 404, 410, 422] {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::OK);
            assert!(matches!(failure_for_status("e", status), Some(HandlerError::Permanent(_))), "{s}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .map(|d| d.with_timezone(&chrono::Utc))
            .unwrap_or_default();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn retry_after_only_counts_on_429_and_503() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, reqwest::header::HeaderValue::from_static("7"));
        assert_eq!(asks_to_wait(StatusCode::SERVICE_UNAVAILABLE, &headers), Some(Duration::from_secs(7)));
        assert_eq!(asks_to_wait(StatusCode::TOO_MANY_REQUESTS, &headers), Some(Duration::from_secs(7)));
        assert_eq!(asks_to_wait(StatusCode::INTERNAL_SERVER_ERROR, &headers), None);
    }
}
