//! Plivo `X-Plivo-Signature-V3` and `X-Plivo-Signature-V2`.
//!
//! V3 (SDK `plivo/utils/signature_v3.py`) signs the URL Plivo called, the
//! sorted parameters and a nonce: HMAC-SHA256 keyed with the auth token over
//! `"{url}.{nonce}"`, where for a GET `url` is the URL without query plus
//! `?` and the sorted `name=value` pairs joined by `&`, and for a POST the
//! sorted query (if any) is followed by `.` and the sorted form parameters
//! as `namevalue` with no separators. The header may list several
//! signatures separated by commas; `X-Plivo-Signature-Ma-V3` is the same,
//! made with the main account's token.
//!
//! V2 (SDK `plivo/utils/__init__.py::validate_signature`) covers only the
//! URL without its query plus the nonce: it does not bind the body, so a
//! captured V2 signature can be replayed with other parameters. It is the
//! fallback when a request carries no V3 header.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::Hmac;
use secrecy::ExposeSecret;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::providers::Fields;
use crate::signature::{SecretList, SignatureError, hmac};

/// The signature headers of one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers<'a> {
    /// `X-Plivo-Signature-V3`.
    pub v3: Option<&'a str>,
    /// `X-Plivo-Signature-Ma-V3`.
    pub ma_v3: Option<&'a str>,
    /// `X-Plivo-Signature-V3-Nonce`.
    pub v3_nonce: Option<&'a str>,
    /// `X-Plivo-Signature-V2`.
    pub v2: Option<&'a str>,
    /// `X-Plivo-Signature-Ma-V2`.
    pub ma_v2: Option<&'a str>,
    /// `X-Plivo-Signature-V2-Nonce`.
    pub v2_nonce: Option<&'a str>,
    /// Whether V2 may verify (`PLIVO_ACCEPT_V2`). V2 signs the URL without
    /// its query plus a nonce, not the parameters: one captured header and
    /// nonce would authenticate any parameters, so it is off by default.
    pub accept_v2: bool,
}

/// Whether the callback was a GET (query) or a POST (form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Parameters in the query string.
    Get,
    /// Parameters in a form body.
    Post,
}

/// The V3 signed string before `.{nonce}` (the SDK's `construct_get_url` /
/// `construct_post_url`). `url` is the full URL Plivo called, query included.
pub fn v3_base(method: Method, url: &str, form: &[(String, String)]) -> Result<String, SignatureError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let query = crate::providers::decode_urlencoded(query.as_bytes(), "query")
        .map_err(|_| SignatureError::Malformed("URL query"))?;
    let mut query_pairs: Vec<&(String, String)> = query.pairs().iter().collect();
    query_pairs.sort();
    let sorted_query = query_pairs.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("&");
    let mut signed = base.to_owned();
    match method {
        Method::Get => {
            if !sorted_query.is_empty() {
                signed.push('?');
                signed.push_str(&sorted_query);
            }
        }
        Method::Post => {
            if !sorted_query.is_empty() || !form.is_empty() {
                signed.push('?');
                signed.push_str(&sorted_query);
            }
            if !sorted_query.is_empty() && !form.is_empty() {
                signed.push('.');
            }
            let mut pairs: Vec<&(String, String)> = form.iter().collect();
            pairs.sort();
            for (name, value) in pairs {
                signed.push_str(name);
                signed.push_str(value);
            }
        }
    }
    Ok(signed)
}

/// Computes a V3 header value. For tests and the test client.
pub fn sign_v3(method: Method, url: &str, form: &[(String, String)], nonce: &str, token: &str) -> String {
    let base = v3_base(method, url, form).unwrap_or_default();
    STANDARD.encode(hmac::<Hmac<Sha256>>(token.as_bytes(), format!("{base}.{nonce}").as_bytes()))
}

/// Computes a V2 header value. For tests and the test client.
pub fn sign_v2(url: &str, nonce: &str, token: &str) -> String {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    STANDARD.encode(hmac::<Hmac<Sha256>>(token.as_bytes(), format!("{base}{nonce}").as_bytes()))
}

/// Verifies a Plivo callback: V3 when a V3 header is present, else V2 if
/// [`Headers::accept_v2`] allows it.
///
/// `url` is the public URL Plivo called (query included); `form` the decoded
/// POST body fields (empty for a GET, whose parameters are in `url`).
pub fn verify(
    method: Method,
    url: &str,
    form: &Fields,
    headers: Headers<'_>,
    tokens: &SecretList,
) -> Result<(), SignatureError> {
    let present = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    let v3: Vec<String> = [headers.v3, headers.ma_v3].into_iter().filter_map(present).collect();
    let (candidates, signed) = if v3.is_empty() {
        let v2: Vec<String> = [headers.v2, headers.ma_v2].into_iter().filter_map(present).collect();
        if v2.is_empty() {
            return Err(SignatureError::Missing("X-Plivo-Signature-V3"));
        }
        if !headers.accept_v2 {
            // A downgrade: V2 does not sign the parameters.
            return Err(SignatureError::Algorithm);
        }
        let nonce = present(headers.v2_nonce).ok_or(SignatureError::Missing("X-Plivo-Signature-V2-Nonce"))?;
        let base = url.split_once('?').map_or(url, |(base, _)| base);
        (v2, format!("{base}{nonce}"))
    } else {
        let nonce = present(headers.v3_nonce).ok_or(SignatureError::Missing("X-Plivo-Signature-V3-Nonce"))?;
        (v3, format!("{}.{nonce}", v3_base(method, url, form.pairs())?))
    };
    let received: Vec<Vec<u8>> = candidates
        .iter()
        .flat_map(|header| header.split(','))
        .filter_map(|s| STANDARD.decode(s.trim()).ok())
        .filter(|s| s.len() == 32)
        .collect();
    if received.is_empty() {
        return Err(SignatureError::Malformed("X-Plivo-Signature: not base64 of 32 bytes"));
    }
    let matched = tokens.iter().any(|token| {
        let expected = hmac::<Hmac<Sha256>>(token.expose_secret().as_bytes(), signed.as_bytes());
        received.iter().any(|r| bool::from(expected.ct_eq(r)))
    });
    if matched { Ok(()) } else { Err(SignatureError::Mismatch) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::providers::decode_urlencoded;

    fn tokens(list: &str) -> SecretList {
        SecretList::parse(list).unwrap()
    }

    /// The SDK's own vector (`tests/resources/test_signature.py`).
    #[test]
    fn sdk_v2_vector() {
        assert_eq!(
            sign_v2("https://answer.url", "12345", "my_auth_token"),
            "ehV3IKhLysWBxC1sy8INm0qGoQYdYsHwuoKjsX7FsXc="
        );
        let headers = Headers {
            v2: Some("ehV3IKhLysWBxC1sy8INm0qGoQYdYsHwuoKjsX7FsXc="),
            v2_nonce: Some("12345"),
            accept_v2: true,
            ..Headers::default()
        };
        let empty = Fields::default();
        let v3_only = Headers { accept_v2: false, ..headers };
        assert_eq!(
            verify(Method::Post, "https://answer.url", &empty, v3_only, &tokens("my_auth_token")),
            Err(SignatureError::Algorithm)
        );
        assert_eq!(
            verify(Method::Post, "https://answer.url", &empty, headers, &tokens("my_auth_token")),
            Ok(())
        );
        assert_eq!(
            verify(Method::Post, "https://answer.url", &empty, headers, &tokens("my_auth_tokens")),
            Err(SignatureError::Mismatch)
        );
    }

    /// Made with the official SDK (plivo 4.x, `get_signature_v3(token,
    /// construct_post_url(url, params), nonce)` and `construct_get_url`) over
    /// the corpus samples; the SDK's `validate_v3_signature` accepts both.
    #[test]
    fn sdk_produced_v3_signatures() {
        let token = tokens("example_plivo_token");
        let url = "https://dlr.example.com/dlr/plivo";
        let form = decode_urlencoded(include_bytes!("samples/plivo-delivered.form"), "form").unwrap();
        let post = Headers {
            v3: Some("dh9uCCbHw0Q5KFuJnz0FNOtyO9qLAEUunRRKPhoZwew="),
            v3_nonce: Some("2f4c0a1e"),
            ..Headers::default()
        };
        assert_eq!(verify(Method::Post, url, &form, post, &token), Ok(()));
        let query = include_str!("samples/plivo-undelivered.query");
        let get = Headers {
            v3: Some("M17MXr2Dy8h5Gk7ushV4JBOwc9aE3Iw2KqBMZOlqVYk="),
            v3_nonce: Some("77a1"),
            ..Headers::default()
        };
        assert_eq!(verify(Method::Get, &format!("{url}?{query}"), &Fields::default(), get, &token), Ok(()));
    }

    #[test]
    fn v3_base_strings_follow_the_sdk_construction() {
        let form = decode_urlencoded(b"To=14155551234&From=AcmeShop&Status=delivered", "form").unwrap();
        assert_eq!(
            v3_base(Method::Post, "https://dlr.example.com/dlr/plivo", form.pairs()).unwrap(),
            "https://dlr.example.com/dlr/plivo?FromAcmeShopStatusdeliveredTo14155551234"
        );
        assert_eq!(
            v3_base(Method::Post, "https://dlr.example.com/dlr/plivo?b=2&a=1", form.pairs()).unwrap(),
            "https://dlr.example.com/dlr/plivo?a=1&b=2.FromAcmeShopStatusdeliveredTo14155551234"
        );
        assert_eq!(
            v3_base(Method::Get, "https://dlr.example.com/dlr/plivo?To=1&From=x+y", &[]).unwrap(),
            "https://dlr.example.com/dlr/plivo?From=x y&To=1"
        );
        assert_eq!(v3_base(Method::Get, "https://h/p", &[]).unwrap(), "https://h/p");
        assert_eq!(v3_base(Method::Post, "https://h/p", &[]).unwrap(), "https://h/p");
    }

    #[test]
    fn v3_verifies_lists_rotation_and_rejects_tampering() {
        let url = "https://dlr.example.com/dlr/plivo";
        let form = decode_urlencoded(b"MessageUUID=abc&Status=delivered", "form").unwrap();
        let sig = sign_v3(Method::Post, url, form.pairs(), "n1", "old");
        let listed = format!("AAAA,{sig}");
        let headers = Headers { v3: Some(&listed), v3_nonce: Some("n1"), ..Headers::default() };
        assert_eq!(verify(Method::Post, url, &form, headers, &tokens("new,old")), Ok(()));
        let tampered = decode_urlencoded(b"MessageUUID=abc&Status=failed", "form").unwrap();
        assert_eq!(
            verify(Method::Post, url, &tampered, headers, &tokens("new,old")),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Method::Post, "https://dlr.example.com/dlr/other", &form, headers, &tokens("old")),
            Err(SignatureError::Mismatch)
        );
        // Main-account signature alone.
        let ma = Headers { ma_v3: Some(&sig), v3_nonce: Some("n1"), ..Headers::default() };
        assert_eq!(verify(Method::Post, url, &form, ma, &tokens("old")), Ok(()));
        // V3 present: a valid V2 is not enough.
        let v2 = sign_v2(url, "n2", "old");
        let both = Headers {
            v3: Some("AAAA"),
            v3_nonce: Some("n1"),
            v2: Some(&v2),
            v2_nonce: Some("n2"),
            ..Headers::default()
        };
        assert_eq!(verify(Method::Post, url, &form, both, &tokens("old")).unwrap_err().reason(), "malformed");
    }

    #[test]
    fn get_callbacks_sign_the_query() {
        let url = "https://dlr.example.com/dlr/plivo?Status=sent&MessageUUID=abc";
        let sig = sign_v3(Method::Get, url, &[], "n", "t");
        let headers = Headers { v3: Some(&sig), v3_nonce: Some("n"), ..Headers::default() };
        assert_eq!(verify(Method::Get, url, &Fields::default(), headers, &tokens("t")), Ok(()));
        let changed = "https://dlr.example.com/dlr/plivo?Status=delivered&MessageUUID=abc";
        assert_eq!(
            verify(Method::Get, changed, &Fields::default(), headers, &tokens("t")),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_headers_are_named() {
        let f = Fields::default();
        let none = Headers::default();
        assert_eq!(
            verify(Method::Post, "https://h", &f, none, &tokens("t")).unwrap_err().reason(),
            "missing"
        );
        let no_nonce = Headers { v3: Some("AAAA"), ..Headers::default() };
        assert_eq!(
            verify(Method::Post, "https://h", &f, no_nonce, &tokens("t")).unwrap_err().reason(),
            "missing"
        );
    }
}
