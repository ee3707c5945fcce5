//! Twilio `X-Twilio-Signature`: base64 HMAC-SHA1 with the Auth Token over the URL Twilio called followed by the
//! sorted POST parameters as `name + value`; HMAC-SHA256 with a shared key when
//! `X-Twilio-Webhooks-Signature-Settings` says so (<https://www.twilio.com/docs/usage/webhooks/webhooks-security>;
//! the Python SDK's `RequestValidator` is the reference implementation).
//!
//! Twilio signs the URL it called plus the sorted POST parameters with the account Auth Token (or,
//! under Webhook Rules, a SharedKey with HMAC-SHA256). Because the URL is part of the signed string,
//! the caller must pass the public URL as Twilio saw it, not the one behind the proxy.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::Hmac;
use secrecy::ExposeSecret;
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::signature::{SecretList, SignatureError, hmac};

/// The HMAC used for the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// The default for Auth Token signatures.
    HmacSha1,
    /// Announced by `X-Twilio-Webhooks-Signature-Settings: ...,algorithm=HMAC_SHA256`.
    HmacSha256,
}

impl Algorithm {
    /// Raw digest length, used to reject a signature made with the other algorithm early.
    fn digest_len(self) -> usize {
        match self {
            Self::HmacSha1 => 20,
            Self::HmacSha256 => 32,
        }
    }

    fn mac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        match self {
            Self::HmacSha1 => hmac::<Hmac<Sha1>>(key, message),
            Self::HmacSha256 => hmac::<Hmac<Sha256>>(key, message),
        }
    }
}

/// Computes the header value (standard base64, padded) for a request to `url` with form `params`.
///
/// Exists for tests and the test client; receivers use [`verify`].
pub fn sign(url: &str, params: &[(String, String)], token: &str, algorithm: Algorithm) -> String {
    STANDARD.encode(algorithm.mac(token.as_bytes(), signing_string(url, &params_suffix(params)).as_bytes()))
}

/// Verifies `X-Twilio-Signature` for a form POST.
///
/// `url` is the public URL Twilio requested (scheme, host, optional port, path, query); `params` are
/// the decoded form fields, unknown ones included; `settings_header` is
/// `X-Twilio-Webhooks-Signature-Settings` if present; `tokens` are the Auth Tokens (or SharedKeys)
/// to try, current first.
pub fn verify(
    url: &str,
    params: &[(String, String)],
    signature_header: Option<&str>,
    settings_header: Option<&str>,
    tokens: &SecretList,
) -> Result<(), SignatureError> {
    let header = signature_header
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(SignatureError::Missing("X-Twilio-Signature"))?;
    let algorithm = algorithm_from_settings(settings_header)?;
    let received =
        STANDARD.decode(header).map_err(|_| SignatureError::Malformed("X-Twilio-Signature: not base64"))?;
    if received.len() != algorithm.digest_len() {
        return Err(SignatureError::Malformed("X-Twilio-Signature: length does not fit the algorithm"));
    }

    let suffix = params_suffix(params);
    let urls = url_variants(url);
    let matched = tokens.iter().any(|token| {
        urls.iter().any(|url| {
            let expected =
                algorithm.mac(token.expose_secret().as_bytes(), signing_string(url, &suffix).as_bytes());
            bool::from(expected.ct_eq(&received))
        })
    });
    if matched { Ok(()) } else { Err(SignatureError::Mismatch) }
}

fn signing_string(url: &str, suffix: &str) -> String {
    format!("{url}{suffix}")
}

/// `name + value` for every parameter, sorted by name then value (byte order), no separators.
fn params_suffix(params: &[(String, String)]) -> String {
    let mut pairs: Vec<_> = params.iter().collect();
    // Sorting whole pairs puts a repeated name's values in sorted order, as the SDKs do.
    pairs.sort();
    pairs.into_iter().flat_map(|(n, v)| [n.as_str(), v.as_str()]).collect()
}

/// Reads `algorithm=` from `X-Twilio-Webhooks-Signature-Settings` (`key=<id>,algorithm=HMAC_SHA256`).
///
/// An algorithm we do not know is an error rather than a fallback to SHA-1: guessing would only turn a
/// clear `algorithm` failure into a confusing `mismatch`.
fn algorithm_from_settings(settings: Option<&str>) -> Result<Algorithm, SignatureError> {
    let value = settings.and_then(|s| {
        s.split(',')
            .filter_map(|item| item.split_once('='))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case("algorithm"))
            .map(|(_, value)| value.trim())
    });
    match value {
        None => Ok(Algorithm::HmacSha1),
        Some(v) if v.eq_ignore_ascii_case("HMAC_SHA1") => Ok(Algorithm::HmacSha1),
        Some(v) if v.eq_ignore_ascii_case("HMAC_SHA256") => Ok(Algorithm::HmacSha256),
        Some(_) => Err(SignatureError::Algorithm),
    }
}

/// `url` itself plus, for http(s), the same URL with the default port toggled.
///
/// Twilio sometimes signs `https://host:443/...` and sometimes `https://host/...` (the Python SDK's
/// `RequestValidator` accepts both). Only the scheme's default port is toggled: a non-default port names a different endpoint.
/// Plain string surgery rather than `url::Url`, which would normalise the rest of the URL and so
/// change the signed string.
fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return variants;
    };
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        "443"
    } else if scheme.eq_ignore_ascii_case("http") {
        "80"
    } else {
        return variants;
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    // Skip userinfo; a ':' inside an IPv6 literal (followed by ']') is not a port separator.
    let (userinfo, host_port) = authority.split_at(authority.rfind('@').map_or(0, |i| i + 1));
    let port_at = host_port.rfind(':').filter(|&i| !host_port[i..].contains(']'));
    let toggled = match port_at {
        Some(i) if &host_port[i + 1..] == default_port => host_port[..i].to_owned(),
        Some(_) => return variants,
        None => format!("{host_port}:{default_port}"),
    };
    variants.push(format!("{scheme}://{userinfo}{toggled}{tail}"));
    variants
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S7_URL: &str = "https://dlr.example.com/webhooks/twilio/status";
    const S7_TOKEN: &str = "example_auth_token_00000000000000";
    const S7_SIG: &str = "1L5pj8LHNFVa9PJMEkRZQpXOQqA=";
    const S7_BODY: &str = "AccountSid=AC0123456789abcdef0123456789abcdef&ApiVersion=2010-04-01&ErrorCode=30003&From=%2B15017122661&MessageSid=SM5b1f2e3d4c5b6a79881726354a5b6c7d&MessageStatus=undelivered&RawDlrDoneDate=2503141027&SmsSid=SM5b1f2e3d4c5b6a79881726354a5b6c7d&SmsStatus=undelivered&To=%2B15558675310";

    fn s7_params() -> Vec<(String, String)> {
        url::form_urlencoded::parse(S7_BODY.as_bytes()).into_owned().collect()
    }

    fn check(
        url: &str,
        params: &[(String, String)],
        sig: &str,
        settings: Option<&str>,
        tokens: &str,
    ) -> Result<(), &'static str> {
        let tokens = SecretList::parse(tokens).unwrap();
        verify(url, params, Some(sig), settings, &tokens).map_err(|e| e.reason())
    }

    #[test]
    fn python_sdk_vector() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
        let expected = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        assert_eq!(sign(url, &params, "12345", Algorithm::HmacSha1), expected);
        assert_eq!(check(url, &params, expected, None, "12345"), Ok(()));
    }

    #[test]
    fn sample_s7() {
        let params = s7_params();
        assert_eq!(sign(S7_URL, &params, S7_TOKEN, Algorithm::HmacSha1), S7_SIG);
        assert_eq!(check(S7_URL, &params, S7_SIG, None, S7_TOKEN), Ok(()));
        let mut reordered = params.clone();
        reordered.reverse();
        assert_eq!(check(S7_URL, &reordered, S7_SIG, None, S7_TOKEN), Ok(()));
    }

    #[test]
    fn rejections() {
        let params = s7_params();
        let mut tampered = params.clone();
        tampered[2].1 = "30008".to_owned();
        assert_eq!(check(S7_URL, &tampered, S7_SIG, None, S7_TOKEN), Err("mismatch"));
        assert_eq!(check(S7_URL, &params, S7_SIG, None, "wrong"), Err("mismatch"));
        let other_path = "https://dlr.example.com/webhooks/twilio/other";
        assert_eq!(check(other_path, &params, S7_SIG, None, S7_TOKEN), Err("mismatch"));
        assert_eq!(check(S7_URL, &params, "not base64!", None, S7_TOKEN), Err("malformed"));
        assert_eq!(check(S7_URL, &params, "AAAA", None, S7_TOKEN), Err("malformed"));
        let tokens = SecretList::parse(S7_TOKEN).unwrap();
        for header in [None, Some(""), Some("  ")] {
            let err = verify(S7_URL, &params, header, None, &tokens).unwrap_err();
            assert_eq!(err.reason(), "missing");
        }
    }

    #[test]
    fn rotation() {
        let params = s7_params();
        let tokens = format!("new_token, {S7_TOKEN}");
        assert_eq!(check(S7_URL, &params, S7_SIG, None, &tokens), Ok(()));
    }

    #[test]
    fn default_port_variants() {
        let params = s7_params();
        // Signed without a port, received with one.
        let with_port = "https://dlr.example.com:443/webhooks/twilio/status";
        assert_eq!(check(with_port, &params, S7_SIG, None, S7_TOKEN), Ok(()));
        // Signed with a port, received without.
        for (signed_url, received_url) in [
            ("https://h.example:443/p?q=1", "https://h.example/p?q=1"),
            ("http://h.example:80/p", "http://h.example/p"),
            ("http://h.example/p", "http://h.example:80/p"),
            ("https://u:pw@[::1]:443/p", "https://u:pw@[::1]/p"),
        ] {
            let sig = sign(signed_url, &params, "t", Algorithm::HmacSha1);
            assert_eq!(check(received_url, &params, &sig, None, "t"), Ok(()), "{signed_url}");
        }
        // Other ports, and the other scheme's default, are not interchangeable.
        for (signed_url, received_url) in [
            ("https://h.example:8443/p", "https://h.example/p"),
            ("https://h.example:80/p", "https://h.example/p"),
        ] {
            let sig = sign(signed_url, &params, "t", Algorithm::HmacSha1);
            assert_eq!(check(received_url, &params, &sig, None, "t"), Err("mismatch"));
        }
    }

    #[test]
    fn sha256_from_settings_header() {
        let params = s7_params();
        let sig = sign(S7_URL, &params, "shared_key", Algorithm::HmacSha256);
        let settings = Some("key=KS0123,algorithm=HMAC_SHA256");
        assert_eq!(check(S7_URL, &params, &sig, settings, "shared_key"), Ok(()));
        assert_eq!(check(S7_URL, &params, &sig, Some(" algorithm = hmac_sha256 "), "shared_key"), Ok(()));
        // A SHA-256 signature cannot be a SHA-1 one, and vice versa.
        assert_eq!(check(S7_URL, &params, &sig, None, "shared_key"), Err("malformed"));
        assert_eq!(check(S7_URL, &params, S7_SIG, settings, S7_TOKEN), Err("malformed"));
        let sha1_settings = Some("key=KS0123,algorithm=HMAC_SHA1");
        assert_eq!(check(S7_URL, &params, S7_SIG, sha1_settings, S7_TOKEN), Ok(()));
        let unknown = Some("key=KS0123,algorithm=HMAC_SHA512");
        assert_eq!(check(S7_URL, &params, &sig, unknown, "shared_key"), Err("algorithm"));
    }

    #[test]
    fn repeated_names_sorted_by_value() {
        let p = |items: &[(&str, &str)]| -> Vec<(String, String)> {
            items.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
        };
        assert_eq!(params_suffix(&p(&[("b", "2"), ("a", "z"), ("a", "y")])), "ayazb2");
        let url = "https://h/p";
        assert_eq!(
            sign(url, &p(&[("To", "b"), ("To", "a")]), "t", Algorithm::HmacSha1),
            sign(url, &p(&[("To", "a"), ("To", "b")]), "t", Algorithm::HmacSha1)
        );
    }

    proptest! {
        #[test]
        fn verify_never_panics(
            url in prop_oneof!["(https?|ftp)://[a-z@:\\[\\]0-9.]{0,20}[/?#]?.{0,10}", any::<String>()],
            params in prop::collection::vec((any::<String>(), any::<String>()), 0..6),
            sig in proptest::option::of(prop_oneof!["[A-Za-z0-9+/=]{0,48}", any::<String>()]),
            settings in proptest::option::of(any::<String>()),
        ) {
            let tokens = SecretList::parse("a,b").unwrap();
            let _ = verify(&url, &params, sig.as_deref(), settings.as_deref(), &tokens);
        }

        #[test]
        fn sign_then_verify(
            url in "https?://[a-z]{1,10}(:(80|443|8080))?/[a-z/]{0,10}",
            params in prop::collection::vec((".{0,8}", ".{0,8}"), 0..6),
            sha256 in any::<bool>(),
        ) {
            let (alg, settings) = if sha256 {
                (Algorithm::HmacSha256, Some("algorithm=HMAC_SHA256"))
            } else {
                (Algorithm::HmacSha1, None)
            };
            let sig = sign(&url, &params, "tok", alg);
            prop_assert_eq!(check(&url, &params, &sig, settings, "tok"), Ok(()));
        }
    }
}
