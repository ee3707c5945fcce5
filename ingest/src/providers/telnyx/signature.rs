//! Telnyx `telnyx-signature-ed25519` (messaging webhooks v2).
//!
//! Telnyx signs `"{telnyx-timestamp}|{raw body}"` with the account's Ed25519
//! key; the public half is shown in the portal. Public keys are not secrets,
//! but a rotation still needs the old and the new key side by side, so the
//! configuration is a list like the HMAC secrets. The official SDK refuses a
//! timestamp older than 300 s, and so does this check.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::fmt;
use std::time::Duration;

use crate::signature::{ConfigError, Freshness, SignatureError};

/// The SDK's tolerance: older timestamps are replays.
pub const TOLERANCE: Duration = Duration::from_secs(300);

/// Telnyx public keys to verify with, current first.
#[derive(Clone)]
pub struct PublicKeys(Vec<VerifyingKey>);

impl PublicKeys {
    /// No key: what a request naming no configured account is checked
    /// with, only to tell a missing or malformed signature.
    pub(crate) fn none() -> Self {
        Self(Vec::new())
    }

    /// Parses a comma-separated list of base64 32-byte Ed25519 public keys.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        if s.trim().is_empty() {
            return Err(ConfigError::EmptySecretList);
        }
        s.split(',')
            .enumerate()
            .map(|(i, item)| {
                let item = item.trim();
                if item.is_empty() {
                    return Err(ConfigError::EmptySecret { position: i + 1 });
                }
                let bytes: [u8; 32] = STANDARD.decode(item).ok().and_then(|b| b.try_into().ok()).ok_or(
                    ConfigError::BadKey { position: i + 1, expected: "base64 of 32 bytes (Ed25519)" },
                )?;
                VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| ConfigError::BadKey { position: i + 1, expected: "an Ed25519 public key" })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

impl fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKeys").field("len", &self.0.len()).finish_non_exhaustive()
    }
}

/// Signs a body as Telnyx does; returns the `telnyx-signature-ed25519` value.
/// Exists for tests and the test client.
pub fn sign(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
    STANDARD.encode(key.sign(&signed_message(timestamp, body)).to_bytes())
}

fn signed_message(timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(timestamp.len() + 1 + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'|');
    message.extend_from_slice(body);
    message
}

/// Verifies a Telnyx webhook: signature over `"{timestamp}|{body}"` by any
/// of `keys`, timestamp no older than [`TOLERANCE`] and no further ahead than
/// `max_future` (clock skew).
pub fn verify(
    body: &[u8],
    signature_header: Option<&str>,
    timestamp_header: Option<&str>,
    keys: &PublicKeys,
    max_future: Duration,
    now_unix: i64,
) -> Result<(), SignatureError> {
    verify_entry(body, signature_header, timestamp_header, keys, max_future, now_unix).map(|_| ())
}

/// [`verify`], returning which key verified (0: the current one, more: a
/// previous one), for the metric that tells when an old key can go.
pub fn verify_entry(
    body: &[u8],
    signature_header: Option<&str>,
    timestamp_header: Option<&str>,
    keys: &PublicKeys,
    max_future: Duration,
    now_unix: i64,
) -> Result<usize, SignatureError> {
    let header = signature_header
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(SignatureError::Missing("telnyx-signature-ed25519"))?;
    let timestamp = timestamp_header
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(SignatureError::Missing("telnyx-timestamp"))?;
    let seconds: i64 =
        timestamp.parse().map_err(|_| SignatureError::Malformed("telnyx-timestamp: not Unix seconds"))?;
    let signature: [u8; 64] = STANDARD
        .decode(header)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(SignatureError::Malformed("telnyx-signature-ed25519: not base64 of 64 bytes"))?;
    let signature = Signature::from_bytes(&signature);
    // The signature first: a forged request learns nothing from a freshness error.
    let message = signed_message(timestamp, body);
    let entry = keys
        .0
        .iter()
        .position(|key| key.verify_strict(&message, &signature).is_ok())
        .ok_or(SignatureError::Mismatch)?;
    Freshness { max_age: TOLERANCE, max_future }.check(seconds, now_unix).map(|()| entry)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const SKEW: Duration = Duration::from_secs(60);

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn public(keys: &[&SigningKey]) -> PublicKeys {
        let list: Vec<String> = keys.iter().map(|k| STANDARD.encode(k.verifying_key().to_bytes())).collect();
        PublicKeys::parse(&list.join(",")).unwrap()
    }

    #[test]
    fn signed_bodies_verify_and_tampering_fails() {
        let body = br#"{"data":{"id":"x"}}"#;
        let ts = NOW.to_string();
        let sig = sign(&key(1), &ts, body);
        let keys = public(&[&key(1)]);
        assert_eq!(verify(body, Some(&sig), Some(&ts), &keys, SKEW, NOW), Ok(()));
        assert_eq!(
            verify(br#"{"data":{"id":"y"}}"#, Some(&sig), Some(&ts), &keys, SKEW, NOW),
            Err(SignatureError::Mismatch)
        );
        let other_ts = (NOW - 1).to_string();
        assert_eq!(
            verify(body, Some(&sig), Some(&other_ts), &keys, SKEW, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(body, Some(&sig), Some(&ts), &public(&[&key(2)]), SKEW, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    /// Made with PyNaCl (`SigningKey(bytes([1] * 32)).sign(b"1700000000|" + body)`),
    /// the library the official SDK verifies with, over the corpus sample.
    #[test]
    fn pynacl_produced_signature() {
        let body = include_bytes!("samples/telnyx-message-finalized-delivered.json");
        let keys = PublicKeys::parse("iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=").unwrap();
        assert_eq!(
            STANDARD.encode(key(1).verifying_key().to_bytes()),
            "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w="
        );
        let signature =
            "MHk3LVKdZTJETeIJYriID7Gyxwi11r8DFg/V/IC0FtJkw2cUNZbPGaU6R/T2datuvwrlObV0aecI+IoBCFXEDA==";
        assert_eq!(sign(&key(1), "1700000000", body), signature);
        assert_eq!(verify(body, Some(signature), Some("1700000000"), &keys, SKEW, NOW), Ok(()));
    }

    #[test]
    fn rotation_list_and_window() {
        let body = b"{}";
        let keys = public(&[&key(2), &key(1)]);
        let old = (NOW - 300).to_string();
        assert_eq!(verify(body, Some(&sign(&key(1), &old, body)), Some(&old), &keys, SKEW, NOW), Ok(()));
        let stale = (NOW - 301).to_string();
        let err =
            verify(body, Some(&sign(&key(1), &stale, body)), Some(&stale), &keys, SKEW, NOW).unwrap_err();
        assert_eq!(err.reason(), "stale");
        let ahead = (NOW + 61).to_string();
        let err =
            verify(body, Some(&sign(&key(2), &ahead, body)), Some(&ahead), &keys, SKEW, NOW).unwrap_err();
        assert_eq!(err.reason(), "future");
    }

    #[test]
    fn the_matching_key_is_named() {
        let body = b"{}";
        let ts = NOW.to_string();
        let keys = public(&[&key(2), &key(1)]);
        let entry = |seed| verify_entry(body, Some(&sign(&key(seed), &ts, body)), Some(&ts), &keys, SKEW, NOW);
        assert_eq!((entry(2), entry(1)), (Ok(0), Ok(1)));
    }

    #[test]
    fn missing_and_malformed_inputs_are_named() {
        let keys = public(&[&key(1)]);
        assert_eq!(verify(b"{}", None, Some("1"), &keys, SKEW, NOW).unwrap_err().reason(), "missing");
        assert_eq!(verify(b"{}", Some("AAAA"), None, &keys, SKEW, NOW).unwrap_err().reason(), "missing");
        assert_eq!(
            verify(b"{}", Some("AAAA"), Some("1"), &keys, SKEW, NOW).unwrap_err().reason(),
            "malformed"
        );
        assert_eq!(
            verify(b"{}", Some("AAAA"), Some("soon"), &keys, SKEW, NOW).unwrap_err().reason(),
            "malformed"
        );
    }

    #[test]
    fn key_list_parsing() {
        assert!(PublicKeys::parse("not-base64!").is_err());
        assert!(PublicKeys::parse(&STANDARD.encode([0u8; 31])).is_err());
        let good = STANDARD.encode(key(1).verifying_key().to_bytes());
        assert_eq!(
            PublicKeys::parse(&format!("{good},,{good}")).unwrap_err(),
            ConfigError::EmptySecret { position: 2 }
        );
        let list =
            format!("{},{}", STANDARD.encode(key(1).verifying_key().to_bytes()), STANDARD.encode([7u8; 3]));
        assert_eq!(
            PublicKeys::parse(&list).unwrap_err(),
            ConfigError::BadKey { position: 2, expected: "base64 of 32 bytes (Ed25519)" }
        );
        assert!(!format!("{:?}", public(&[&key(1)])).contains('='));
    }
}
