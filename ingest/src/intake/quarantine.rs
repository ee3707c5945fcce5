//! Copies of refused requests, kept so that an operator can replay them.
//!
//! A receipt refused with a 4xx is never sent again by its provider. When
//! the cause is ours (a rotated secret not yet configured, a parser that is
//! too strict), the copy in the bounded quarantine queue is all that is left
//! of it; `worker replay-quarantine` sends it back through ingest once the
//! cause is fixed. The format is [`dlr_shared::quarantine`].

use axum::http::{HeaderMap, header};
use chrono::Utc;
use dlr_shared::Provider;
use dlr_shared::quarantine::{QuarantinedRequest, REPLAY_HEADER, RequestCopy};
use std::collections::BTreeMap;

use super::WebhookRequest;
use crate::error::IngestError;
use crate::signature;
use crate::state::AppState;

/// The headers a re-verification needs, copied when present. A Basic
/// password (Infobip) is copied redacted: unlike a signature it is the
/// secret itself.
const COPIED_HEADERS: [&str; 16] = [
    "content-type",
    "authorization",
    "x-twilio-signature",
    "x-twilio-webhooks-signature-settings",
    "telnyx-signature-ed25519",
    "telnyx-timestamp",
    "x-plivo-signature-v3",
    "x-plivo-signature-ma-v3",
    "x-plivo-signature-v3-nonce",
    "x-plivo-signature-v2",
    "x-plivo-signature-ma-v2",
    "x-plivo-signature-v2-nonce",
    signature::sinch::SIGNATURE_HEADER,
    signature::sinch::NONCE_HEADER,
    signature::sinch::TIMESTAMP_HEADER,
    "x-sinch-webhook-signature-algorithm",
];

/// Copies a rejected request to the quarantine queue. Best effort: the
/// answer is a 4xx either way, and a broker problem must not turn it into a 5xx.
pub(crate) async fn quarantine(
    state: &AppState,
    provider: Provider,
    request: &WebhookRequest,
    error: &IngestError,
) {
    if request.headers.contains_key(REPLAY_HEADER) {
        // `worker replay-quarantine` keeps its copy when we refuse it again.
        return;
    }
    let copy = QuarantinedRequest {
        quarantined_at: Utc::now(),
        provider,
        reason: error.reason().to_owned(),
        detail: error.to_string(),
        request: RequestCopy {
            method: request.method.as_str().to_owned(),
            path: request.path.clone(),
            query: request.query.clone(),
            headers: copied_headers(&request.headers),
            body: request.body.to_vec(),
        },
    };
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

fn copied_headers(headers: &HeaderMap) -> BTreeMap<String, Option<String>> {
    COPIED_HEADERS
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
