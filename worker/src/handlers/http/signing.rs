//! Standard Webhooks signatures, exactly as the reference libraries verify
//! them (<https://github.com/standard-webhooks/standard-webhooks>).
//!
//! A secret is base64, optionally prefixed `whsec_`: the reference
//! libraries strip the prefix if present and base64-decode the rest, so a
//! secret without the prefix is decoded too (reading it as raw bytes, as
//! this worker once did, signs with a key no receiver holds). A secret that
//! is not base64 is refused at start-up for the same reason.
//!
//! During a rotation an endpoint has several secrets: `webhook-signature`
//! then carries one `v1,<signature>` per secret, space-separated, and a
//! receiver's library accepts the request if any of them verifies with the
//! secret it holds, old or new.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// The optional prefix of a Standard Webhooks secret.
const PREFIX: &str = "whsec_";

/// One signing key, decoded from its secret.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// Reads a secret as the reference libraries do: `whsec_` stripped if
    /// present, the rest base64. The error never repeats the secret.
    pub fn parse(secret: &str) -> Result<Self, String> {
        let encoded = secret.strip_prefix(PREFIX).unwrap_or(secret);
        if encoded.is_empty() {
            return Err("is empty".to_owned());
        }
        let key = STANDARD.decode(encoded).map_err(|_| {
            "is not base64 (Standard Webhooks secrets are base64, optionally prefixed whsec_; \
             receivers' libraries decode them that way)"
                .to_owned()
        })?;
        Ok(Self(key))
    }

    /// `v1,<base64 HMAC-SHA256 of id.timestamp.body>`.
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

/// An endpoint's secrets, the first one current, at least one.
#[derive(Debug, Clone)]
pub struct SigningKeys(Vec<SigningKey>);

impl SigningKeys {
    /// `None` when `keys` is empty.
    pub fn new(keys: Vec<SigningKey>) -> Option<Self> {
        (!keys.is_empty()).then_some(Self(keys))
    }

    /// How many secrets (for the start-up log; never the secrets).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a `SigningKeys` has at least one key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `webhook-signature` value: one signature per key.
    pub fn signature_header(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        self.0.iter().map(|key| key.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_the_standard_webhooks_reference() {
        // Test vector of the Standard Webhooks reference libraries.
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_or(SigningKey(vec![]));
        let signature = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_secret_without_the_prefix_is_base64_too() {
        let with = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").map(|k| k.0);
        let without = SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").map(|k| k.0);
        assert_eq!(with, without);
    }

    #[test]
    fn rejects_bad_secrets_without_echoing_them() {
        let error = SigningKey::parse("whsec_***secret-text").err().unwrap_or_default();
        assert!(error.contains("not base64") && !error.contains("secret-text"), "{error}");
        assert!(SigningKey::parse("").is_err());
        assert!(SigningKey::parse("whsec_").is_err());
        assert!(SigningKey::parse("raw-secret!").is_err());
    }

    /// Signed headers for `body` as the endpoint sends them.
    fn signed(keys: &SigningKeys, body: &[u8]) -> reqwest::header::HeaderMap {
        let timestamp = chrono::Utc::now().timestamp();
        let mut headers = reqwest::header::HeaderMap::new();
        let mut put = |name: &'static str, value: String| {
            if let Ok(value) = reqwest::header::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        put("webhook-id", "msg_2Ke0".to_owned());
        put("webhook-timestamp", timestamp.to_string());
        put("webhook-signature", keys.signature_header("msg_2Ke0", timestamp, body));
        headers
    }

    #[test]
    fn the_reference_library_verifies_every_secret_form_and_both_sides_of_a_rotation() {
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let new = "C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let parse = |s: &str| SigningKey::parse(s).unwrap_or(SigningKey(vec![]));
        let body = br#"{"event_id":"e1","outcome":"delivered"}"#;
        // One secret, each form: the receiver holds it in either form.
        for (ours, theirs) in
            [(old, old), (old, &old[6..]), (new, new), (new, &format!("whsec_{new}") as &str)]
        {
            let keys = SigningKeys::new(vec![parse(ours)]).unwrap_or_else(|| panic!("keys"));
            let receiver = standardwebhooks::Webhook::new(theirs).unwrap_or_else(|e| panic!("{e}"));
            assert!(receiver.verify(body, &signed(&keys, body)).is_ok(), "{ours} / {theirs}");
        }
        // Rotation: new first, old still sent; receivers on either verify.
        let keys = SigningKeys::new(vec![parse(new), parse(old)]).unwrap_or_else(|| panic!("keys"));
        let headers = signed(&keys, body);
        for theirs in [old, new] {
            let receiver = standardwebhooks::Webhook::new(theirs).unwrap_or_else(|e| panic!("{e}"));
            assert!(receiver.verify(body, &headers).is_ok(), "{theirs}");
        }
        // A receiver with a third secret does not.
        let stranger = standardwebhooks::Webhook::new("whsec_c3RyYW5nZXI=").unwrap_or_else(|e| panic!("{e}"));
        assert!(stranger.verify(body, &headers).is_err());
        // Nor one given the raw text of a secret (what the old code signed with).
        let raw =
            SigningKeys::new(vec![SigningKey(new.as_bytes().to_vec())]).unwrap_or_else(|| panic!("keys"));
        let receiver = standardwebhooks::Webhook::new(new).unwrap_or_else(|e| panic!("{e}"));
        assert!(receiver.verify(body, &signed(&raw, body)).is_err());
    }

    #[test]
    fn one_signature_per_key_space_separated() {
        let keys = SigningKeys::new(vec![
            SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_or(SigningKey(vec![])),
            SigningKey::parse("c2Vjb25k").unwrap_or(SigningKey(vec![])),
        ]);
        let header = keys.map(|k| k.signature_header("id", 1, b"{}")).unwrap_or_default();
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert!(SigningKeys::new(vec![]).is_none());
    }
}
