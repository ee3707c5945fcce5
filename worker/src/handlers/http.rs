//! The http handler: POSTs events to a URL, signed the Standard Webhooks way.
//!
//! Headers `webhook-id` (the event id, so receivers can de-duplicate our
//! at-least-once deliveries), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature` (`v1,` + base64 HMAC-SHA256 over `id.timestamp.body`)
//! follow <https://www.standardwebhooks.com>, for which receivers in most
//! languages already have a verifier.

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use dlr_shared::{Outcome, ReceiptEvent};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use sha2::Sha256;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use tokio::sync::Semaphore;
use url::Url;

use super::{Failure, Handler, HandlerError, HandlerKind};

/// Signing key decoded from a `whsec_<base64>` secret.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Standard Webhooks secrets are `whsec_` + base64; a secret without
    /// the prefix is used as raw bytes.
    pub fn parse(secret: &str) -> Result<Self, String> {
        match secret.strip_prefix("whsec_") {
            Some(encoded) => STANDARD
                .decode(encoded)
                .map(Self)
                .map_err(|_| "WORKER_HTTP_SECRET: the part after whsec_ must be base64".to_owned()),
            None if secret.is_empty() => Err("WORKER_HTTP_SECRET must not be empty".to_owned()),
            None => Ok(Self(secret.as_bytes().to_vec())),
        }
    }

    /// `v1,<base64 signature>` for the given id, timestamp and body.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length, so construction cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// Forwards events over HTTP.
pub struct HttpHandler {
    client: reqwest::Client,
    urls: HashMap<Outcome, Url>,
    key: SigningKey,
    /// Permits for requests in flight, when capped (`WORKER_HTTP_MAX_IN_FLIGHT`).
    in_flight: Option<Semaphore>,
}

impl HttpHandler {
    /// `urls` maps each routed outcome to its target; `max_in_flight` caps
    /// concurrent requests (without it, the events in flight bound them).
    pub fn new(
        client: reqwest::Client,
        urls: HashMap<Outcome, Url>,
        key: SigningKey,
        max_in_flight: Option<NonZeroUsize>,
    ) -> Self {
        let in_flight = max_in_flight.map(|max| Semaphore::new(max.get()));
        Self { client, urls, key, in_flight }
    }
}

/// 408, 429 and 5xx may succeed later; any other non-2xx will not.
///
/// Redirects are never followed (the client is built without a redirect
/// policy): following one turns our POST into a GET on 301/302/303, and a
/// login or maintenance page answering 200 would count as delivered. A
/// temporary redirect (302, 303, 307) is retried like an outage, since
/// maintenance pages redirect; a permanent one (301, 308) parks the event:
/// the configured URL is wrong, and after fixing it an operator replays.
fn failure_for_status(status: StatusCode) -> Option<HandlerError> {
    if status.is_success() {
        None
    } else if status == StatusCode::MOVED_PERMANENTLY || status == StatusCode::PERMANENT_REDIRECT {
        Some(HandlerError::Permanent(Failure::new(format!(
            "receiver answered {status} (moved for good: fix the URL)"
        ))))
    } else if status.is_redirection()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Some(HandlerError::Transient(Failure::new(format!("receiver answered {status}"))))
    } else {
        Some(HandlerError::Permanent(Failure::new(format!("receiver answered {status}"))))
    }
}

/// A request that got no answer: worth retrying. The URL is left out of
/// the text (it can carry credentials or a token); the cause chain is kept.
fn request_failure(error: reqwest::Error) -> HandlerError {
    HandlerError::transient("request failed", error.without_url())
}

#[async_trait]
impl Handler for HttpHandler {
    fn kind(&self) -> HandlerKind {
        HandlerKind::Http
    }

    async fn handle(&self, event: &ReceiptEvent) -> Result<(), HandlerError> {
        let url = self.urls.get(&event.outcome).ok_or_else(|| {
            HandlerError::Permanent(Failure::new(format!("no URL configured for {} events", event.outcome)))
        })?;
        // The semaphore is never closed, so acquiring only fails if it were;
        // the permit is held until the answer is in.
        let _permit = match &self.in_flight {
            Some(semaphore) => Some(semaphore.acquire().await.map_err(|error| {
                HandlerError::Transient(Failure::new(format!("request limiter closed: {error}")))
            })?),
            None => None,
        };
        let body = event.to_json();
        // Taken after the wait for a permit: the receiver checks its age.
        let timestamp = chrono::Utc::now().timestamp();
        let response = self
            .client
            .post(url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", event.event_id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", self.key.sign(event.event_id.as_str(), timestamp, &body))
            .body(body)
            .send()
            .await
            // Connect errors, timeouts, resets: the receiver may be back soon.
            .map_err(request_failure)?;
        match failure_for_status(response.status()) {
            None => Ok(()),
            Some(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_errors_show_the_cause_without_the_url() {
        let client = reqwest::Client::new();
        let error =
            client.post("http://user:url-password@127.0.0.1:1/hook?token=query-token").send().await.err();
        let text = error.map(|e| request_failure(e).to_string()).unwrap_or_default();
        assert!(text.contains("refused"), "{text}");
        assert!(!text.contains("url-password") && !text.contains("query-token"), "{text}");
    }

    #[test]
    fn classifies_statuses() {
        assert!(failure_for_status(StatusCode::NO_CONTENT).is_none());
        for s in [408, 429, 500, 502, 503] {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::OK);
            assert!(matches!(failure_for_status(status), Some(HandlerError::Transient(_))), "{s}");
        }
        for s in [302, 303, 307] {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::OK);
            assert!(matches!(failure_for_status(status), Some(HandlerError::Transient(_))), "{s}");
        }
        for s in [301, 308, 400, 401, 404, 410, 422] {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::OK);
            assert!(matches!(failure_for_status(status), Some(HandlerError::Permanent(_))), "{s}");
        }
    }

    #[test]
    fn signs_like_the_standard_webhooks_reference() {
        // Test vector of the Standard Webhooks reference libraries.
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_or(SigningKey(vec![]));
        let signature = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rejects_bad_secrets() {
        assert!(SigningKey::parse("whsec_***").is_err());
        assert!(SigningKey::parse("").is_err());
    }
}
