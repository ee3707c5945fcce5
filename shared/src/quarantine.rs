//! The quarantine copy of a refused webhook request.
//!
//! Ingest writes one when it refuses a request (a bad signature, a receipt it
//! cannot parse) so that an operator can fix the cause and have
//! `worker replay-quarantine` send the request again. Writer and reader are
//! different binaries released together, so the format is this one type and
//! neither side builds or picks apart JSON by hand.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

use crate::amqp::insert_str;
use crate::domain::Provider;

/// AMQP `type` of a quarantine copy; bump with an incompatible change.
pub const MESSAGE_TYPE: &str = "quarantine.v1";

/// Request header set by `worker replay-quarantine` on what it re-sends.
///
/// Ingest writes no second copy of a replayed request it refuses again: the
/// replay run keeps the original, and a copy per run would multiply it.
/// Anyone can set the header; all it does is skip the copy (the request is
/// verified like any other, freshness included).
pub const REPLAY_HEADER: &str = "x-dlr-replay";

/// Request header carrying a copy's [`RequestCopy::seal`] on a replay.
///
/// Only a seal that ingest's own key opens for exactly this request lets
/// ingest verify it as of the time it was first received (and restore a
/// Basic credential); a seal that does not open is refused.
pub const REPLAY_SEAL_HEADER: &str = "x-dlr-replay-seal";

/// One refused request, as kept in the quarantine queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedRequest {
    /// When ingest refused it.
    pub quarantined_at: DateTime<Utc>,
    /// The route it came in on.
    pub provider: Provider,
    /// Low-cardinality reason (the metrics label), e.g. `signature_invalid`.
    pub reason: String,
    /// The full error text the provider was answered with.
    pub detail: String,
    /// What is needed to send the request again.
    pub request: RequestCopy,
}

/// The parts of an HTTP request that a re-verification needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCopy {
    /// `GET` or `POST`.
    pub method: String,
    /// Path as received (`/dlr/vonage`); signatures cover it.
    pub path: String,
    /// Raw query string, if any; signatures cover it too.
    pub query: Option<String>,
    /// Content type and signature headers, by lower-case name. Copies written
    /// before this type existed hold `null` for absent headers.
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    /// The body, byte for byte (base64 in JSON): a signature covers bytes,
    /// not a re-encoding.
    #[serde(rename = "body_base64", serialize_with = "to_base64", deserialize_with = "from_base64")]
    pub body: Vec<u8>,
    /// True when the body was longer than ingest's copy limit and only its
    /// start is kept (for diagnosis; such a copy cannot verify on replay).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
    /// Ingest's seal over this copy and the time it received the request
    /// (`INGEST_QUARANTINE_REPLAY_KEY`), sent back verbatim in
    /// [`REPLAY_SEAL_HEADER`] on a replay. Absent without a key, on a cut
    /// body and in copies written before seals existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

impl QuarantinedRequest {
    /// The message body.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising strings, a map of strings and a timestamp cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a copy back.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// How a copy travels: persistent, JSON, with provider and reason as
    /// headers so that an operator can filter without parsing bodies.
    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        insert_str(&mut headers, "x-provider", self.provider.as_str());
        insert_str(&mut headers, "x-quarantine-reason", &self.reason);
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_type(MESSAGE_TYPE.into())
            .with_headers(headers)
    }
}

fn to_base64<S: Serializer>(body: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&STANDARD.encode(body))
}

fn from_base64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    STANDARD.decode(text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> QuarantinedRequest {
        QuarantinedRequest {
            quarantined_at: Utc::now(),
            provider: Provider::Twilio,
            reason: "signature_invalid".into(),
            detail: "signature does not verify".into(),
            request: RequestCopy {
                method: "POST".into(),
                path: "/dlr/twilio".into(),
                query: None,
                headers: BTreeMap::from([("x-twilio-signature".into(), Some("abc=".into()))]),
                body: b"MessageSid=SM1&MessageStatus=delivered\xff".to_vec(),
                body_truncated: false,
                seal: Some("v1:1::AAAA".into()),
            },
        }
    }

    #[test]
    fn a_copy_reads_back_byte_for_byte() {
        let copy = sample();
        assert_eq!(QuarantinedRequest::from_json(&copy.to_json()).expect("reads back"), copy);
    }

    #[test]
    fn copies_written_with_null_headers_still_read() {
        let old = br#"{"quarantined_at":"2026-11-01T10:00:00Z","provider":"vonage-sms","reason":"signature_invalid",
            "detail":"x","request":{"method":"GET","path":"/dlr/vonage","query":"a=1",
            "headers":{"content-type":null,"authorization":null},"body_base64":""}}"#;
        let copy = QuarantinedRequest::from_json(old).expect("old format reads");
        assert_eq!(copy.provider, Provider::VonageSms);
        assert_eq!(copy.request.headers.get("content-type"), Some(&None));
        assert_eq!(copy.request.seal, None, "copies written before seals have none");
        assert!(copy.request.body.is_empty());
    }

    #[test]
    fn a_body_that_is_not_base64_is_an_error() {
        let bad = br#"{"quarantined_at":"2026-11-01T10:00:00Z","provider":"twilio","reason":"r","detail":"d",
            "request":{"method":"POST","path":"/dlr/twilio","query":null,"body_base64":"***"}}"#;
        assert!(QuarantinedRequest::from_json(bad).is_err());
    }
}
