//! Vonage Messages API signed webhooks: `Authorization: Bearer <JWT>`, HS256, with `iss`, `iat`, `jti`,
//! `api_key` and `payload_hash` claims
//! (<https://developer.vonage.com/en/getting-started/concepts/webhooks#validating-signed-webhooks>).
//!
//! The JWT signs its claims, not the request, so the body is bound to it only through the
//! `payload_hash` claim; and Vonage sends no `exp`, so freshness comes from `iat`. Both checks are ours:
//! none of the provider SDKs does them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::signature::{Freshness, SecretList, SignatureError};

/// The only issuer Vonage uses.
const ISSUER: &str = "Vonage";

/// The JWT claims we rely on; unknown claims are ignored.
///
/// Returned by [`verify`] so the caller can log `jti`/`api_key` or feed a replay cache.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Claims {
    /// Issued-at time, Unix seconds: the signing time used for the freshness window.
    pub iat: i64,
    /// Unique token id (a UUID); usable as a replay-cache key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Issuer; must be `Vonage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Lower-case hex SHA-256 of the request body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_hash: Option<String>,
    /// The account whose signature secret signed the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The Vonage application the message belongs to, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_id: Option<String>,
}

/// Verifies the `Authorization` header of a Messages API webhook against the raw `body` bytes.
///
/// Order: bearer token → `alg` is HS256 → signature under any secret in `secrets` → `iss` → `iat`
/// window → `payload_hash`. `payload_hash` is required although Vonage calls it optional: it is the
/// only thing tying the body to the token: Vonage calls it optional over HTTPS, it is required here.
pub fn verify(
    authorization: Option<&str>,
    body: &[u8],
    secrets: &SecretList,
    freshness: Freshness,
    now_unix: i64,
) -> Result<Claims, SignatureError> {
    let token = bearer_token(authorization)?;
    require_hs256(token)?;
    let claims = decode_with_any(token, secrets)?;

    if claims.iss.as_deref() != Some(ISSUER) {
        return Err(SignatureError::Issuer);
    }
    freshness.check(claims.iat, now_unix)?;
    // The hash is of a body the sender already has, so a plain comparison leaks nothing.
    let body_hash = hex::encode(Sha256::digest(body));
    match &claims.payload_hash {
        Some(hash) if hash.eq_ignore_ascii_case(&body_hash) => Ok(claims),
        _ => Err(SignatureError::PayloadHash),
    }
}

/// Signs `body` the way Vonage does and returns the bare token (no `Bearer `).
///
/// Exists for tests and the test client.
///
/// # Panics
/// Never in practice: HS256 accepts any key and the claims always serialise.
pub fn sign(body: &[u8], secret: &str, api_key: &str, iat: i64, jti: &str) -> String {
    let claims = Claims {
        iat,
        jti: Some(jti.to_owned()),
        iss: Some(ISSUER.to_owned()),
        payload_hash: Some(hex::encode(Sha256::digest(body))),
        api_key: Some(api_key.to_owned()),
        application_id: None,
    };
    let key = EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .expect("HS256 encoding of plain claims cannot fail")
}

/// Extracts the token from `Bearer <token>` (scheme case-insensitive, RFC 7235).
/// The `api_key` claim read **before** verification, only to choose which
/// account's secret verifies the token (the signature covers the claim, so a
/// changed `api_key` fails with any other account's secret).
pub fn unverified_api_key(authorization: Option<&str>) -> Option<String> {
    let token = bearer_token(authorization).ok()?;
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("api_key")?.as_str().map(str::to_owned)
}

fn bearer_token(authorization: Option<&str>) -> Result<&str, SignatureError> {
    let value = authorization
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(SignatureError::Missing("Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(token.trim())
        }
        _ => Err(SignatureError::Malformed("Authorization header: expected Bearer token")),
    }
}

/// Rejects any `alg` but HS256 before touching keys.
///
/// jsonwebtoken would reject other algorithms too, but it cannot even parse `alg: none` (it has no
/// such variant) and would call that malformed; reading the header here lets downgrade attempts show
/// up under their own `algorithm` label.
fn require_hs256(token: &str) -> Result<(), SignatureError> {
    #[derive(Deserialize)]
    struct AlgOnly {
        alg: String,
    }
    const MALFORMED: SignatureError = SignatureError::Malformed("JWT header");

    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SignatureError::Malformed("JWT: expected three parts"));
    };
    let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| MALFORMED)?;
    let header: AlgOnly = serde_json::from_slice(&header).map_err(|_| MALFORMED)?;
    if header.alg == "HS256" { Ok(()) } else { Err(SignatureError::Algorithm) }
}

/// Verifies the signature with each secret in turn and returns the claims of the first match.
fn decode_with_any(token: &str, secrets: &SecretList) -> Result<Claims, SignatureError> {
    let mut validation = Validation::new(Algorithm::HS256);
    // Vonage sends no exp/aud; the iat window is checked by the caller with the injected clock.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;

    for secret in secrets.iter() {
        let key = DecodingKey::from_secret(secret.expose_secret().as_bytes());
        match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::InvalidAlgorithm) => {
                return Err(SignatureError::Algorithm);
            }
            // Shape and claim errors do not depend on the key, so stop at the first.
            Err(_) => return Err(SignatureError::Malformed("JWT")),
        }
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::time::Duration;

    const SECRET: &str = "example_signature_secret_0123456789";
    const S6_BODY: &str = r#"{"message_uuid":"5b0d4b1e-6f2a-4c3e-9a8b-1c2d3e4f5a6b","to":"447700900123","from":"447700900001","timestamp":"2025-03-14T09:27:02.118Z","status":"rejected","channel":"sms","client_ref":"order-77814","error":{"type":"https://developer.vonage.com/api-errors/messages#1330","title":"1330","detail":"Unknown - An unknown error was received from the carrier.","instance":"bf0ca0bf927b3b52e3cb03217e1a1ddf"}}"#;
    const S6_AUTH: &str = "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpYXQiOjE3NDE5NDQ0MjIsImp0aSI6ImM1YmE4ZjI0LTFhMTQtNGMxMC1iZmRmLTNmYmU4Y2U1MTFiNSIsImlzcyI6IlZvbmFnZSIsInBheWxvYWRfaGFzaCI6ImQ1ZWQ1YjRhOTUzYmE5ZWRhMzFjNjI0ZDgwMTE5NGM4YmY3YWIxMmZjZWJhNjNiODY5MWNlZGY2MDZlMGZlYTIiLCJhcGlfa2V5IjoiYTFiMmMzZDQiLCJhcHBsaWNhdGlvbl9pZCI6ImFhYWFhYWFhLWJiYmItY2NjYy1kZGRkLTAxMjM0NTY3ODlhYiJ9.jISe1pJOPl1gBVza5PV99vOV4rysyP1EIBcpZa3ReNY";
    const S6_IAT: i64 = 1741944422;

    fn window() -> Freshness {
        Freshness { max_age: Duration::from_secs(300), max_future: Duration::from_secs(60) }
    }

    fn check(auth: &str, body: &[u8], secrets: &str, now: i64) -> Result<Claims, &'static str> {
        let secrets = SecretList::parse(secrets).unwrap();
        verify(Some(auth), body, &secrets, window(), now).map_err(|e| e.reason())
    }

    /// A token with arbitrary claims and header algorithm, for the negative cases.
    fn token(alg: Algorithm, claims: serde_json::Value, secret: &str) -> String {
        let key = EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
    }

    fn s6_claims() -> serde_json::Value {
        json!({"iat": S6_IAT, "jti": "j", "iss": "Vonage",
               "payload_hash": hex::encode(Sha256::digest(S6_BODY)), "api_key": "a1b2c3d4"})
    }

    #[test]
    fn sample_s6() {
        assert_eq!(
            hex::encode(Sha256::digest(S6_BODY)),
            "d5ed5b4a953ba9eda31c624d801194c8bf7ab12fceba63b8691cedf606e0fea2"
        );
        let claims = check(S6_AUTH, S6_BODY.as_bytes(), SECRET, S6_IAT).unwrap();
        assert_eq!(claims.iat, S6_IAT);
        assert_eq!(claims.api_key.as_deref(), Some("a1b2c3d4"));
        assert_eq!(claims.jti.as_deref(), Some("c5ba8f24-1a14-4c10-bfdf-3fbe8ce511b5"));
        assert_eq!(claims.application_id.as_deref(), Some("aaaaaaaa-bbbb-cccc-dddd-0123456789ab"));
    }

    #[test]
    fn sample_s6_rejections() {
        let body = S6_BODY.as_bytes();
        assert_eq!(check(S6_AUTH, b"{}", SECRET, S6_IAT).unwrap_err(), "payload_hash");
        assert_eq!(check(S6_AUTH, body, "other", S6_IAT).unwrap_err(), "mismatch");
        assert_eq!(check(S6_AUTH, body, SECRET, S6_IAT + 301).unwrap_err(), "stale");
        assert_eq!(check(S6_AUTH, body, SECRET, S6_IAT - 61).unwrap_err(), "future");
        // Flip the last signature character.
        let tampered = format!("{}A", &S6_AUTH[..S6_AUTH.len() - 1]);
        assert_eq!(check(&tampered, body, SECRET, S6_IAT).unwrap_err(), "mismatch");
    }

    #[test]
    fn round_trip_and_rotation() {
        let token = sign(b"body", "new", "key1", 1000, "jti-1");
        let auth = format!("Bearer {token}");
        let claims = check(&auth, b"body", "new", 1000).unwrap();
        assert_eq!(claims.api_key.as_deref(), Some("key1"));
        assert!(check(&auth, b"body", "newer, new", 1000).is_ok());
        assert_eq!(check(&auth, b"body", "newer, older", 1000).unwrap_err(), "mismatch");
    }

    #[test]
    fn bearer_scheme() {
        let token = sign(b"b", SECRET, "k", 1000, "j");
        assert!(check(&format!("bearer {token}"), b"b", SECRET, 1000).is_ok());
        assert!(check(&format!("BEARER  {token} "), b"b", SECRET, 1000).is_ok());
        assert_eq!(check(&format!("Basic {token}"), b"b", SECRET, 1000).unwrap_err(), "malformed");
        assert_eq!(check("Bearer", b"b", SECRET, 1000).unwrap_err(), "malformed");
        assert_eq!(check(&token, b"b", SECRET, 1000).unwrap_err(), "malformed");
        assert_eq!(check("Bearer a.b.c", b"b", SECRET, 1000).unwrap_err(), "malformed");
        let secrets = SecretList::parse(SECRET).unwrap();
        let missing = verify(None, b"b", &secrets, window(), 1000).unwrap_err();
        assert_eq!(missing.reason(), "missing");
        let blank = verify(Some("  "), b"b", &secrets, window(), 1000).unwrap_err();
        assert_eq!(blank.reason(), "missing");
    }

    #[test]
    fn other_algorithms_rejected() {
        let claims_b64 = URL_SAFE_NO_PAD.encode(s6_claims().to_string());
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"None"}"#, r#"{"alg":"RS256","typ":"JWT"}"#]
        {
            let auth = format!("Bearer {}.{claims_b64}.", URL_SAFE_NO_PAD.encode(header));
            let err = check(&auth, S6_BODY.as_bytes(), SECRET, S6_IAT).unwrap_err();
            assert_eq!(err, "algorithm", "{header}");
        }
        let hs512 = token(Algorithm::HS512, s6_claims(), SECRET);
        let err = check(&format!("Bearer {hs512}"), S6_BODY.as_bytes(), SECRET, S6_IAT);
        assert_eq!(err.unwrap_err(), "algorithm");
    }

    #[test]
    fn claim_rules() {
        let body = S6_BODY.as_bytes();
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut claims = s6_claims();
            edit(&mut claims);
            let auth = format!("Bearer {}", token(Algorithm::HS256, claims, SECRET));
            check(&auth, body, SECRET, S6_IAT).map(|_| ())
        };
        assert_eq!(with(&|_| {}), Ok(()));
        assert_eq!(
            with(&|c| c["payload_hash"] = json!(hex::encode(Sha256::digest(body)).to_uppercase())),
            Ok(())
        );
        assert_eq!(with(&|c| c["iss"] = json!("Nexmo")), Err("issuer"));
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            Err("issuer")
        );
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("payload_hash");
            }),
            Err("payload_hash")
        );
        assert_eq!(with(&|c| c["iat"] = json!("soon")), Err("malformed"));
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("iat");
            }),
            Err("malformed")
        );
    }

    proptest! {
        #[test]
        fn verify_never_panics(
            auth in proptest::option::of(any::<String>()),
            body in prop::collection::vec(any::<u8>(), 0..64),
            now in any::<i64>(),
        ) {
            let secrets = SecretList::parse(SECRET).unwrap();
            let _ = verify(auth.as_deref(), &body, &secrets, window(), now);
        }

        #[test]
        fn verify_never_panics_on_token_shapes(
            header in any::<Vec<u8>>(),
            claims in any::<Vec<u8>>(),
            sig in "[A-Za-z0-9_-]{0,50}",
            alg_header in any::<bool>(),
        ) {
            let header = if alg_header { br#"{"alg":"HS256"}"#.to_vec() } else { header };
            let auth = format!("Bearer {}.{}.{sig}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
            let secrets = SecretList::parse(SECRET).unwrap();
            let result = verify(Some(&auth), b"", &secrets, window(), 0);
            prop_assert!(result.is_err());
        }
    }
}
