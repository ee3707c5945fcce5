//! Copies of refused requests, kept so that an operator can replay them.
//!
//! A receipt refused with a 4xx is never sent again by its provider. When
//! the cause is ours (a rotated secret not yet configured, a parser that is
//! too strict), the copy in the bounded quarantine queue is all that is left
//! of it; `worker replay-quarantine` sends it back through ingest once the
//! cause is fixed. The format is [`dlr_shared::quarantine`]; with a replay
//! key each copy is sealed ([`super::replay`]).

use axum::http::{HeaderMap, header};
use chrono::Utc;
use dlr_shared::Provider;
use dlr_shared::quarantine::{QuarantinedRequest, REPLAY_HEADER, RequestCopy};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::WebhookRequest;
use crate::error::IngestError;
use crate::state::AppState;

/// What a refused request may cost the quarantine: a body cap per copy and,
/// for requests that failed their signature check (anyone on the internet
/// can send those), a number of copies and of body bytes per provider and
/// minute. Both budgets, because a flood of small requests would turn the
/// queue's count bound over and one of large requests its byte bound.
#[derive(Debug)]
pub struct QuarantineLimits {
    body_limit_bytes: usize,
    per_minute: u32,
    bytes_per_minute: usize,
    windows: Mutex<HashMap<Provider, Window>>,
}

/// One provider's current minute of signature-failure copies.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    copies: u32,
    bytes: usize,
}

impl QuarantineLimits {
    /// Limits from `INGEST_QUARANTINE_BODY_LIMIT_BYTES`,
    /// `INGEST_QUARANTINE_COPIES_PER_MINUTE` and `INGEST_QUARANTINE_BYTES_PER_MINUTE`.
    pub fn new(body_limit_bytes: usize, per_minute: u32, bytes_per_minute: usize) -> Self {
        Self { body_limit_bytes, per_minute, bytes_per_minute, windows: Mutex::new(HashMap::new()) }
    }

    /// True, and counted, while `provider`'s current minute has room for one
    /// more copy of a failed signature with a body of `body_len` bytes (as
    /// cut to the body limit).
    pub(crate) fn allow_signature_copy(&self, provider: Provider, body_len: usize, now: Instant) -> bool {
        let kept = body_len.min(self.body_limit_bytes);
        let mut windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let window = windows.entry(provider).or_insert(Window { start: now, copies: 0, bytes: 0 });
        if now.saturating_duration_since(window.start) >= Duration::from_secs(60) {
            *window = Window { start: now, copies: 0, bytes: 0 };
        }
        if window.copies >= self.per_minute || window.bytes.saturating_add(kept) > self.bytes_per_minute {
            return false;
        }
        window.copies += 1;
        window.bytes += kept;
        true
    }
}

/// Copies a rejected request to the quarantine queue. Best effort: the
/// answer is a 4xx either way, and a broker problem must not turn it into a 5xx.
pub(crate) async fn quarantine(
    state: &AppState,
    provider: Provider,
    request: &WebhookRequest,
    error: &IngestError,
) {
    if request.sealed_replay || request.headers.contains_key(REPLAY_HEADER) {
        // `worker replay-quarantine` keeps its copy when we refuse it again.
        return;
    }
    let limit = state.quarantine_limits.body_limit_bytes;
    let mut copy = QuarantinedRequest {
        quarantined_at: Utc::now(),
        provider,
        reason: error.reason().to_owned(),
        detail: error.to_string(),
        request: RequestCopy {
            method: request.method.as_str().to_owned(),
            path: request.path.clone(),
            query: request.query.clone(),
            headers: copied_headers(&request.headers),
            body: request.body.get(..limit).unwrap_or(&request.body).to_vec(),
            body_truncated: request.body.len() > limit,
            seal: None,
        },
    };
    copy.request.seal = super::replay::seal(
        state.replay_keys.as_deref(),
        &copy.request,
        &request.headers,
        request.received_at,
    );
    match state
        .publisher
        .publish("", &state.topology.quarantine_queue, &copy.to_json(), copy.properties())
        .await
    {
        Ok(()) => {
            state.metrics.quarantined.with_label_values(&[provider.as_str(), error.reason()]).inc();
        }
        Err(publish_error) => {
            tracing::warn!(provider = %provider, %publish_error, "could not copy a rejected request to quarantine");
        }
    }
}

/// The headers a re-verification needs (every provider's signature headers,
/// from the registry), copied when present. A Basic password (Infobip,
/// Sinch) is copied redacted: unlike a signature it is the secret itself
/// (the seal keeps a keyed digest of it instead). Also what a replay's seal
/// is checked against.
pub(super) fn copied_headers(headers: &HeaderMap) -> BTreeMap<String, Option<String>> {
    static COPIED: std::sync::LazyLock<Vec<&'static str>> =
        std::sync::LazyLock::new(crate::providers::registry::copied_headers);
    COPIED
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            let value = if *name == header::AUTHORIZATION.as_str() && is_basic(value) {
                "Basic [redacted]"
            } else {
                value
            };
            Some(((*name).to_owned(), Some(value.to_owned())))
        })
        .collect()
}

fn is_basic(authorization: &str) -> bool {
    authorization.get(..6).is_some_and(|scheme| scheme.eq_ignore_ascii_case("basic "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn signature_copies_are_limited_per_provider_and_minute() {
        let limits = QuarantineLimits::new(10, 2, 1000);
        let t0 = Instant::now();
        assert!(limits.allow_signature_copy(Provider::Sinch, 5, t0));
        assert!(limits.allow_signature_copy(Provider::Sinch, 5, t0));
        assert!(!limits.allow_signature_copy(Provider::Sinch, 5, t0));
        assert!(limits.allow_signature_copy(Provider::Twilio, 5, t0), "per provider");
        assert!(limits.allow_signature_copy(Provider::Sinch, 5, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn signature_copies_are_limited_in_bytes_as_cut_to_the_body_limit() {
        let limits = QuarantineLimits::new(400, 100, 1000);
        let t0 = Instant::now();
        // Counted as 400 each (the part kept), not as their 10 000 bytes.
        assert!(limits.allow_signature_copy(Provider::Infobip, 10_000, t0));
        assert!(limits.allow_signature_copy(Provider::Infobip, 10_000, t0));
        assert!(!limits.allow_signature_copy(Provider::Infobip, 10_000, t0), "1200 > 1000");
        assert!(limits.allow_signature_copy(Provider::Infobip, 200, t0), "a small one still fits");
        assert!(!limits.allow_signature_copy(Provider::Infobip, 1, t0), "1000 used");
        assert!(limits.allow_signature_copy(Provider::Infobip, 400, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn basic_credentials_are_redacted_and_signatures_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("basic dXNlcjpwYXNz"));
        headers.insert("x-twilio-signature", HeaderValue::from_static("sig="));
        headers.insert("x-sinch-webhook-signature-algorithm", HeaderValue::from_static("HmacSHA256"));
        headers.insert("cookie", HeaderValue::from_static("not copied"));
        let copied = copied_headers(&headers);
        assert_eq!(copied.get("authorization"), Some(&Some("Basic [redacted]".to_owned())));
        assert_eq!(copied.get("x-twilio-signature"), Some(&Some("sig=".to_owned())));
        assert_eq!(copied.get("x-sinch-webhook-signature-algorithm"), Some(&Some("HmacSHA256".to_owned())));
        assert!(!copied.contains_key("cookie"));
    }

    #[test]
    fn a_bearer_token_is_kept_for_re_verification() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer eyJhbGciOi"));
        assert_eq!(
            copied_headers(&headers).get("authorization"),
            Some(&Some("Bearer eyJhbGciOi".to_owned()))
        );
    }
}
