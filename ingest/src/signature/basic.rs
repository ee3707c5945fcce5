//! HTTP Basic authentication for report URLs (Infobip).
//!
//! Infobip's subscription security settings offer BASIC, HMAC and OAuth;
//! the HMAC scheme (header, algorithm, signed bytes) is not documented in a
//! form we could confirm, so report URLs are protected with Basic, the
//! documented option. Credentials are `user:password` pairs in a rotation
//! list; the comparison is constant-time over the whole pair.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use super::{ConfigError, SecretList, SignatureError};

/// Checks that every item of a credential list is `user:password`.
pub fn validate_credentials(list: &SecretList) -> Result<(), ConfigError> {
    for (i, item) in list.iter().enumerate() {
        if !item.expose_secret().contains(':') {
            return Err(ConfigError::BadKey { position: i + 1, expected: "user:password" });
        }
    }
    Ok(())
}

/// The `Authorization` value for `user:password`. For tests and the test client.
pub fn header_value(credentials: &str) -> String {
    format!("Basic {}", STANDARD.encode(credentials))
}

/// Verifies an `Authorization: Basic ...` header against `credentials`.
pub fn verify(authorization: Option<&str>, credentials: &SecretList) -> Result<(), SignatureError> {
    let header = authorization
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(SignatureError::Missing("Authorization"))?;
    let (scheme, encoded) =
        header.split_once(' ').ok_or(SignatureError::Malformed("Authorization: not Basic"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(SignatureError::Algorithm);
    }
    let received = STANDARD
        .decode(encoded.trim())
        .map_err(|_| SignatureError::Malformed("Authorization: not base64"))?;
    // Every candidate is compared (no early exit) so timing does not reveal
    // which one matched.
    let matched = credentials
        .iter()
        .fold(subtle::Choice::from(0), |acc, c| acc | c.expose_secret().as_bytes().ct_eq(&received));
    if bool::from(matched) { Ok(()) } else { Err(SignatureError::Mismatch) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_listed_pair_and_nothing_else() {
        let list = SecretList::parse("infobip:new-pass,infobip:old-pass").unwrap();
        assert_eq!(verify(Some(&header_value("infobip:old-pass")), &list), Ok(()));
        assert_eq!(verify(Some(&header_value("infobip:new-pass")), &list), Ok(()));
        assert_eq!(verify(Some(&header_value("infobip:wrong")), &list), Err(SignatureError::Mismatch));
        assert_eq!(verify(Some(&header_value("infobip:new-pas")), &list), Err(SignatureError::Mismatch));
        assert_eq!(verify(None, &list).unwrap_err().reason(), "missing");
        assert_eq!(verify(Some("Bearer abc"), &list).unwrap_err().reason(), "algorithm");
        assert_eq!(verify(Some("Basic !!!"), &list).unwrap_err().reason(), "malformed");
        assert_eq!(verify(Some("Basic"), &list).unwrap_err().reason(), "malformed");
    }

    #[test]
    fn credentials_need_a_colon() {
        assert!(validate_credentials(&SecretList::parse("u:p,x:y").unwrap()).is_ok());
        assert_eq!(
            validate_credentials(&SecretList::parse("u:p,nocolon").unwrap()),
            Err(ConfigError::BadKey { position: 2, expected: "user:password" })
        );
    }
}
