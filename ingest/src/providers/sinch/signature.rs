//! Sinch `x-sinch-webhook-signature` (HMAC-SHA256 with nonce and timestamp).
//!
//! The SMS documentation names no signature (only Basic, OAuth, mTLS by
//! request); the official SDKs (Python `authentication_validation.py`,
//! .NET `HmacAuthenticationValidation`) verify this scheme for Sinch event
//! callbacks, and it is what a callback secret turns on: base64 of
//! HMAC-SHA256(secret, `"{raw body}.{nonce}.{timestamp}"`), the nonce and the
//! Unix-seconds timestamp in `x-sinch-webhook-signature-nonce` and
//! `x-sinch-webhook-signature-timestamp`. The SDK checks no freshness; we do.
//! `x-sinch-webhook-signature-algorithm` names the HMAC (`HmacSHA256`, the
//! default when absent, or `HmacSHA512`), as Sinch's webhook documentation
//! (<https://developers.sinch.com/docs/conversation/callbacks/#validating-callbacks>) describes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::Hmac;
use secrecy::ExposeSecret;
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::signature::{Freshness, SecretList, SignatureError, hmac};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-sinch-webhook-signature";
/// The nonce header.
pub const NONCE_HEADER: &str = "x-sinch-webhook-signature-nonce";
/// The timestamp header (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-sinch-webhook-signature-timestamp";
/// The algorithm header (`HmacSHA256` or `HmacSHA512`).
pub const ALGORITHM_HEADER: &str = "x-sinch-webhook-signature-algorithm";

/// The HMAC a callback names in [`ALGORITHM_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `HmacSHA256` (also when the header is absent).
    Sha256,
    /// `HmacSHA512`.
    Sha512,
}

impl Algorithm {
    /// Reads the header; an unknown name is refused rather than guessed.
    pub fn from_header(value: Option<&str>) -> Result<Self, SignatureError> {
        match present(value) {
            None => Ok(Self::Sha256),
            Some(v) if v.eq_ignore_ascii_case("HmacSHA256") => Ok(Self::Sha256),
            Some(v) if v.eq_ignore_ascii_case("HmacSHA512") => Ok(Self::Sha512),
            Some(_) => Err(SignatureError::Algorithm),
        }
    }

    fn mac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => hmac::<Hmac<Sha256>>(key, data),
            Self::Sha512 => hmac::<Hmac<Sha512>>(key, data),
        }
    }

    fn len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }
}

fn signed_data(body: &[u8], nonce: &str, timestamp: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(body.len() + nonce.len() + timestamp.len() + 2);
    data.extend_from_slice(body);
    data.push(b'.');
    data.extend_from_slice(nonce.as_bytes());
    data.push(b'.');
    data.extend_from_slice(timestamp.as_bytes());
    data
}

fn present(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// Computes the signature header value as the SDK does. For tests and the
/// test client.
pub fn sign(body: &[u8], nonce: &str, timestamp: &str, secret: &str) -> String {
    sign_with(Algorithm::Sha256, body, nonce, timestamp, secret)
}

/// [`sign`] with the HMAC named by `algorithm`.
pub fn sign_with(algorithm: Algorithm, body: &[u8], nonce: &str, timestamp: &str, secret: &str) -> String {
    STANDARD.encode(algorithm.mac(secret.as_bytes(), &signed_data(body, nonce, timestamp)))
}

/// True when the request carries this scheme's signature header at all.
pub fn is_signed(signature: Option<&str>) -> bool {
    present(signature).is_some()
}

/// Verifies the three headers against the raw body with any of `secrets`
/// (HMAC-SHA256), then the timestamp against `freshness`.
pub fn verify(
    body: &[u8],
    signature: Option<&str>,
    nonce: Option<&str>,
    timestamp: Option<&str>,
    secrets: &SecretList,
    freshness: Freshness,
    now_unix: i64,
) -> Result<(), SignatureError> {
    verify_with(Algorithm::Sha256, body, signature, nonce, timestamp, secrets, freshness, now_unix)
}

/// [`verify`] with the HMAC the request named ([`Algorithm::from_header`]).
#[allow(clippy::too_many_arguments)]
pub fn verify_with(
    algorithm: Algorithm,
    body: &[u8],
    signature: Option<&str>,
    nonce: Option<&str>,
    timestamp: Option<&str>,
    secrets: &SecretList,
    freshness: Freshness,
    now_unix: i64,
) -> Result<(), SignatureError> {
    let signature = present(signature).ok_or(SignatureError::Missing(SIGNATURE_HEADER))?;
    let nonce = present(nonce).ok_or(SignatureError::Missing(NONCE_HEADER))?;
    let timestamp = present(timestamp).ok_or(SignatureError::Missing(TIMESTAMP_HEADER))?;
    let seconds: i64 =
        timestamp.parse().map_err(|_| SignatureError::Malformed("x-sinch-webhook-signature-timestamp"))?;
    let received = STANDARD
        .decode(signature)
        .ok()
        .filter(|r| r.len() == algorithm.len())
        .ok_or(SignatureError::Malformed("x-sinch-webhook-signature"))?;
    let data = signed_data(body, nonce, timestamp);
    let matched = secrets
        .iter()
        .any(|secret| bool::from(algorithm.mac(secret.expose_secret().as_bytes(), &data).ct_eq(&received)));
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    freshness.check(seconds, now_unix)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: i64 = 1_700_000_000;
    const WINDOW: Freshness =
        Freshness { max_age: Duration::from_secs(3600), max_future: Duration::from_secs(60) };

    /// The test vector of the official .NET SDK (`Sinch.Tests/Conversation/WebhooksTests.cs`,
    /// `ValidateRequest`): same HMAC construction and headers.
    #[test]
    fn sdk_test_vector() {
        let body = br#"{"app_id":"","accepted_time":"2021-10-18T17:49:13.813615Z","project_id":"e2df3a34-a71b-4448-9db5-a8d2baad28e4","contact_create_notification":{"contact":{"id":"01FJA8B466Y0R2GNXD78MD9SM1","channel_identities":[{"channel":"SMS","identity":"48123456789","app_id":""}],"display_name":"New Test Contact","email":"new.contact@email.com","external_id":"","metadata":"","language":"EN_US"}},"message_metadata":""}"#;
        let (nonce, timestamp, signature) =
            ("01FJA8B4A7BM43YGWSG9GBV067", "1634579353", "6bpJoRmFoXVjfJIVglMoJzYXxnoxRujzR4k2GOXewOE=");
        assert_eq!(sign(body, nonce, timestamp, "foo_secret1234"), signature);
        let secrets = SecretList::parse("foo_secret1234").unwrap();
        let window = Freshness { max_age: Duration::from_secs(60), max_future: Duration::from_secs(60) };
        let at = 1_634_579_353;
        assert_eq!(verify(body, Some(signature), Some(nonce), Some(timestamp), &secrets, window, at), Ok(()));
    }

    #[test]
    fn verifies_rotates_and_rejects_tampering() {
        let body = br#"{"batch_id":"01W4","status":"Delivered"}"#;
        let ts = NOW.to_string();
        let sig = sign(body, "abc", &ts, "old");
        let secrets = SecretList::parse("new,old").unwrap();
        assert_eq!(verify(body, Some(&sig), Some("abc"), Some(&ts), &secrets, WINDOW, NOW), Ok(()));
        let tampered = br#"{"batch_id":"01W4","status":"Failed"}"#;
        assert_eq!(
            verify(tampered, Some(&sig), Some("abc"), Some(&ts), &secrets, WINDOW, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(body, Some(&sig), Some("abd"), Some(&ts), &secrets, WINDOW, NOW),
            Err(SignatureError::Mismatch)
        );
        let later = (NOW + 1).to_string();
        assert_eq!(
            verify(body, Some(&sig), Some("abc"), Some(&later), &secrets, WINDOW, NOW),
            Err(SignatureError::Mismatch)
        );
        let only_new = SecretList::parse("new").unwrap();
        assert_eq!(
            verify(body, Some(&sig), Some("abc"), Some(&ts), &only_new, WINDOW, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn sha512_when_the_algorithm_header_says_so() {
        let body = br#"{"batch_id":"01W4","status":"Delivered"}"#;
        let ts = NOW.to_string();
        let secrets = SecretList::parse("s").unwrap();
        let algorithm = Algorithm::from_header(Some("HmacSHA512")).unwrap();
        let sig = sign_with(algorithm, body, "n", &ts, "s");
        assert_eq!(
            verify_with(algorithm, body, Some(&sig), Some("n"), Some(&ts), &secrets, WINDOW, NOW),
            Ok(())
        );
        // A SHA-512 signature is not a SHA-256 one, and unknown names are refused.
        assert!(verify(body, Some(&sig), Some("n"), Some(&ts), &secrets, WINDOW, NOW).is_err());
        assert_eq!(Algorithm::from_header(Some("HmacMD5")), Err(SignatureError::Algorithm));
        assert_eq!(Algorithm::from_header(None), Ok(Algorithm::Sha256));
    }

    #[test]
    fn freshness_and_missing_headers() {
        let body = b"{}";
        let secrets = SecretList::parse("s").unwrap();
        let old = (NOW - 3601).to_string();
        let sig = sign(body, "n", &old, "s");
        assert_eq!(
            verify(body, Some(&sig), Some("n"), Some(&old), &secrets, WINDOW, NOW).unwrap_err().reason(),
            "stale"
        );
        assert_eq!(
            verify(body, None, Some("n"), Some(&old), &secrets, WINDOW, NOW).unwrap_err().reason(),
            "missing"
        );
        assert_eq!(
            verify(body, Some(&sig), None, Some(&old), &secrets, WINDOW, NOW).unwrap_err().reason(),
            "missing"
        );
        assert_eq!(
            verify(body, Some(&sig), Some("n"), None, &secrets, WINDOW, NOW).unwrap_err().reason(),
            "missing"
        );
        assert_eq!(
            verify(body, Some("zz"), Some("n"), Some("1"), &secrets, WINDOW, NOW).unwrap_err().reason(),
            "malformed"
        );
    }
}
