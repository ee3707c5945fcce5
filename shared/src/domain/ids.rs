//! Identifiers: the provider's message id and our deterministic event id.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

use super::Provider;

/// The provider's id for one sent message (Vonage `messageId`/`message_uuid`,
/// Twilio `MessageSid`). It is the correlation key for everything downstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId(String);

impl MessageId {
    /// Longest id we accept; real ids are 16 (Vonage SMS), 36 (UUID) or 34
    /// (Twilio) characters, so anything far longer is garbage, not a receipt.
    pub const MAX_LEN: usize = 128;

    /// Accepts a non-empty id of printable ASCII without spaces.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let id = raw.trim();
        if id.is_empty() {
            return Err("must not be empty");
        }
        if id.len() > Self::MAX_LEN {
            return Err("is longer than 128 characters");
        }
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces");
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MessageId {
    type Error = &'static str;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> Self {
        id.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Deterministic id of one receipt *event* (one status change of one message).
///
/// Derived from the fields that identify the event (provider, message id,
/// status, error code, provider timestamps) and nothing that changes between
/// a provider's retries (signature, nonce, transport). A retried webhook thus
/// gets the same id, which is what every downstream de-duplication keys on:
/// the AMQP `message_id`, the HTTP `webhook-id`, the status store's history.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventId(String);

impl EventId {
    /// Hashes the identifying parts. Parts are length-prefixed so that
    /// `("ab","c")` and `("a","bc")` cannot collide.
    pub fn derive(provider: Provider, parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(provider.as_str().as_bytes());
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        Self(hex::encode(&digest[..16]))
    }

    /// The id as text (32 lower-case hex characters).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EventId {
    type Error = &'static str;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(value.to_ascii_lowercase()))
        } else {
            Err("event id must be 32 hex characters")
        }
    }
}

impl From<EventId> for String {
    fn from(id: EventId) -> Self {
        id.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_rejects_empty_and_spaces() {
        assert!(MessageId::parse("").is_err());
        assert!(MessageId::parse("   ").is_err());
        assert!(MessageId::parse("AB CD").is_err());
        assert_eq!(
            MessageId::parse(" 02000000FEA5EE9B ").map(|m| m.to_string()),
            Ok("02000000FEA5EE9B".to_owned())
        );
    }

    #[test]
    fn event_id_is_stable_and_separates_parts() {
        let a = EventId::derive(Provider::VonageSms, &["ab", "c"]);
        let b = EventId::derive(Provider::VonageSms, &["a", "bc"]);
        assert_ne!(a, b);
        assert_eq!(a, EventId::derive(Provider::VonageSms, &["ab", "c"]));
        assert_ne!(a, EventId::derive(Provider::Twilio, &["ab", "c"]));
        assert_eq!(a.as_str().len(), 32);
    }
}
