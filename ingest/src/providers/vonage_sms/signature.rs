//! Vonage SMS API signed webhooks: the `sig` parameter
//! (<https://developer.vonage.com/en/getting-started/concepts/signing-messages>).
//!
//! Legacy Vonage DLRs are plain GET/POST/JSON requests; when the account has signing switched on, `sig`
//! is the only proof that a receipt came from Vonage. The method (MD5 hash or one of four HMACs) is
//! not announced in the request, so it comes from configuration.

use std::str::FromStr;

use hmac::Hmac;
use md5::{Digest, Md5};
use secrecy::ExposeSecret;
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::signature::{ConfigError, Freshness, SecretList, SignatureError, hmac};

/// The signature method chosen in the Vonage dashboard for the API key;
/// the names are the configuration words, as used by the PHP SDK.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, strum::Display, strum::IntoStaticStr, strum::VariantArray,
)]
pub enum SigMethod {
    /// `md5hash`: MD5 of the signing string with the secret appended (the legacy dashboard default).
    #[default]
    #[strum(serialize = "md5hash")]
    Md5Hash,
    /// `md5`: HMAC-MD5.
    #[strum(serialize = "md5")]
    Md5Hmac,
    /// `sha1`: HMAC-SHA1.
    #[strum(serialize = "sha1")]
    Sha1Hmac,
    /// `sha256`: HMAC-SHA256.
    #[strum(serialize = "sha256")]
    Sha256Hmac,
    /// `sha512`: HMAC-SHA512.
    #[strum(serialize = "sha512")]
    Sha512Hmac,
}

impl SigMethod {
    /// Length of the hex digest; a `sig` of another length was made with another method.
    fn hex_len(self) -> usize {
        match self {
            Self::Md5Hash | Self::Md5Hmac => 32,
            Self::Sha1Hmac => 40,
            Self::Sha256Hmac => 64,
            Self::Sha512Hmac => 128,
        }
    }
}

impl FromStr for SigMethod {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConfigError::parse_word("Vonage signature method", s)
    }
}

/// Builds the string Vonage signs: every parameter but `sig`, sorted by name, each as `&name=value` with `&`
/// and `=` in values replaced by `_` (as the PHP and Node SDKs build it).
fn signing_string(params: &[(String, String)]) -> String {
    let mut pairs: Vec<_> = params.iter().filter(|(name, _)| name != "sig").collect();
    // String order is byte order, as Vonage specifies; the value only breaks ties between repeated
    // names so the result does not depend on arrival order.
    pairs.sort();
    let mut s = String::new();
    for (name, value) in pairs {
        s.push('&');
        s.push_str(name);
        s.push('=');
        // Vonage replaces these in values only, so they cannot fake a separator.
        s.extend(value.chars().map(|c| if c == '&' || c == '=' { '_' } else { c }));
    }
    s
}

/// Raw digest bytes of the signing string under `secret`.
fn digest(signing_string: &str, secret: &[u8], method: SigMethod) -> Vec<u8> {
    let msg = signing_string.as_bytes();
    match method {
        SigMethod::Md5Hash => {
            let mut md5 = Md5::new();
            md5.update(msg);
            md5.update(secret);
            md5.finalize().to_vec()
        }
        SigMethod::Md5Hmac => hmac::<Hmac<Md5>>(secret, msg),
        SigMethod::Sha1Hmac => hmac::<Hmac<Sha1>>(secret, msg),
        SigMethod::Sha256Hmac => hmac::<Hmac<Sha256>>(secret, msg),
        SigMethod::Sha512Hmac => hmac::<Hmac<Sha512>>(secret, msg),
    }
}

/// Computes `sig` (lower-case hex) for `params`, ignoring any `sig` pair already in them.
///
/// Exists for tests and the test client; receivers use [`verify`].
pub fn sign(params: &[(String, String)], secret: &str, method: SigMethod) -> String {
    hex::encode(digest(&signing_string(params), secret.as_bytes(), method))
}

/// Checks the `sig` of a received DLR, then its `timestamp` against `freshness`.
///
/// `params` are all received pairs after URL/JSON decoding, including unknown fields and `sig`.
/// Any secret in `secrets` may match. The timestamp is checked only after the signature so that
/// `stale`/`future` always describe a genuine request (e.g. an old retry), never a forgery.
pub fn verify(
    params: &[(String, String)],
    secrets: &SecretList,
    method: SigMethod,
    freshness: Freshness,
    now_unix: i64,
) -> Result<(), SignatureError> {
    let sig = single_value(params, "sig")?.ok_or(SignatureError::Missing("sig"))?;
    if sig.len() != method.hex_len() {
        return Err(SignatureError::Malformed("sig: length does not fit the configured method"));
    }
    // Decoding makes the comparison case-insensitive: SDKs differ in the case they emit.
    let sig = hex::decode(sig).map_err(|_| SignatureError::Malformed("sig: not hex"))?;

    let s = signing_string(params);
    let matched = secrets
        .iter()
        .any(|secret| bool::from(digest(&s, secret.expose_secret().as_bytes(), method).ct_eq(&sig)));
    if !matched {
        return Err(SignatureError::Mismatch);
    }

    let timestamp = single_value(params, "timestamp")?.ok_or(SignatureError::Missing("timestamp"))?;
    let timestamp =
        parse_unix_seconds(timestamp).ok_or(SignatureError::Malformed("timestamp: not Unix seconds"))?;
    freshness.check(timestamp, now_unix)
}

/// The value of `name` if it occurs once; a repeated `sig` or `timestamp` is ambiguous, so rejected.
/// An empty value counts as absent.
fn single_value<'a>(
    params: &'a [(String, String)],
    name: &'static str,
) -> Result<Option<&'a str>, SignatureError> {
    let mut values = params.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(SignatureError::Malformed("repeated sig or timestamp")),
        (Some(v), None) if !v.is_empty() => Ok(Some(v)),
        _ => Ok(None),
    }
}

/// Decimal digits only: `i64::from_str` would also accept a sign.
fn parse_unix_seconds(s: &str) -> Option<i64> {
    if s.bytes().all(|b| b.is_ascii_digit()) { s.parse().ok() } else { None }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const SDK_SECRET: &str = "my_secret_key_for_testing";
    const S4_SECRET: &str = "example_signature_secret_0123456789";

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    fn secrets(s: &str) -> SecretList {
        SecretList::parse(s).unwrap()
    }

    fn window() -> Freshness {
        Freshness { max_age: Duration::from_secs(300), max_future: Duration::from_secs(60) }
    }

    /// The vector the Node SDK (`packages/sms/__tests__/__dataSets__/signature.ts`) and the PHP SDK
    /// (`test/Client/SignatureTest.php`) share, deliberately not in sorted order.
    fn sdk_params() -> Vec<(String, String)> {
        pairs(&[
            ("type", "text"),
            ("to", "13239877404"),
            ("message-timestamp", "2013-11-21 15:27:30"),
            ("messageId", "020000001B0FE827"),
            ("msisdn", "14843472194"),
            ("text", "Test again"),
            ("timestamp", "1385047698"),
        ])
    }

    fn with_sig(mut params: Vec<(String, String)>, sig: &str) -> Vec<(String, String)> {
        params.push(("sig".to_owned(), sig.to_owned()));
        params
    }

    #[test]
    fn sdk_vector_signing_string() {
        assert_eq!(
            signing_string(&sdk_params()),
            "&message-timestamp=2013-11-21 15:27:30&messageId=020000001B0FE827&msisdn=14843472194\
             &text=Test again&timestamp=1385047698&to=13239877404&type=text"
        );
    }

    #[test]
    fn sdk_vector_all_methods() {
        let cases = [
            (SigMethod::Md5Hash, "d2e7b1dc968737c5998ad624e02f90b7"),
            (SigMethod::Md5Hmac, "DDEBD46008C2D4E93CCE578A332A52D5"),
            (SigMethod::Sha1Hmac, "27D0D05C2876C7CB1720DBCDBA4D492E1E55C09A"),
            (SigMethod::Sha256Hmac, "DDB8397C2B90AAC7F3882D306475C9A5058C92322EEF43C92B298B6E0FC0D330"),
            (
                SigMethod::Sha512Hmac,
                "E0D3C650F8C9D1A5C174D10DDDBFB003E561F59B265616208B0487C5D819481CD3C311D59CF6165ECD1139622D5BA3A256C0D763AC4A9AD9144B5A426B94FE82",
            ),
        ];
        for (method, expected) in cases {
            assert_eq!(sign(&sdk_params(), SDK_SECRET, method), expected.to_ascii_lowercase(), "{method}");
            // The published (mostly upper-case) form verifies as is.
            let params = with_sig(sdk_params(), expected);
            verify(&params, &secrets(SDK_SECRET), method, window(), 1385047698).unwrap();
        }
    }

    #[test]
    fn ampersand_and_equals_vector() {
        let params = pairs(&[
            ("keyword", "TEST"),
            ("message-timestamp", "2017-04-04 22:57:47"),
            ("messageId", "0B00000042AC53BD"),
            ("msisdn", "14843472194"),
            ("nonce", "929d6744-bd28-42c8-b6cf-31d5b4f43732"),
            ("text", "Test with & and ="),
            ("timestamp", "1491346667"),
            ("to", "12192259404"),
            ("type", "text"),
        ]);
        assert_eq!(sign(&params, SDK_SECRET, SigMethod::Md5Hash), "e06d9763e3fd0b9c31beb5fc2fcb011c");
    }

    #[test]
    fn python_v4_vectors() {
        let params = pairs(&[("param1", "value1"), ("param2", "value2"), ("timestamp", "1234567890")]);
        assert_eq!(
            sign(&params, "signature_secret", SigMethod::Sha256Hmac),
            "280c4320703dbc98bfa22db676655ed2acfbfe8792b062ff7622e67f1183c287"
        );
        assert_eq!(sign(&params, "signature_secret", SigMethod::Md5Hmac), "724c2bf6ca423c36e20631b11d1c5753");
    }

    /// Sample S4: a signed POST-JSON DLR, parsed the way the ingest layer will.
    #[test]
    fn sample_s4() {
        let body = r#"{"msisdn":"447700900123","to":"AcmeShop","network-code":"23415","messageId":"0C0000002A9F31B7","price":"0.03330000","status":"delivered","scts":"2503140926","err-code":"0","api-key":"a1b2c3d4","client-ref":"order-77813","message-timestamp":"2025-03-14 09:26:53","timestamp":"1741944413","nonce":"3f0c2b6e-9a41-4f7e-8d2a-5b1e7c9d0a12","sig":"3D2BEE5FB40A7C8A862EABD98EFF9A324B0ADC75ABB5B2363DE757DC8E3511D1"}"#;
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(body).unwrap();
        let params: Vec<(String, String)> =
            map.into_iter().map(|(k, v)| (k, v.as_str().unwrap().to_owned())).collect();
        let list = secrets(S4_SECRET);
        let m = SigMethod::Sha256Hmac;
        verify(&params, &list, m, window(), 1741944413 + 5).unwrap();
        assert_eq!(
            sign(&params, S4_SECRET, m),
            "3d2bee5fb40a7c8a862eabd98eff9a324b0adc75abb5b2363de757dc8e3511d1"
        );
        let err = verify(&params, &list, m, window(), 1741944413 + 301).unwrap_err();
        assert_eq!(err.reason(), "stale");
    }

    fn signed(method: SigMethod, timestamp: &str) -> Vec<(String, String)> {
        let params = pairs(&[
            ("messageId", "0C0000002A9F31B7"),
            ("status", "delivered"),
            ("client-ref", "a&b=c"),
            ("timestamp", timestamp),
            ("nonce", "n-1"),
        ]);
        let sig = sign(&params, "current", method);
        with_sig(params, &sig)
    }

    fn check(params: &[(String, String)], list: &str, method: SigMethod) -> Result<(), &'static str> {
        verify(params, &secrets(list), method, window(), 1_000_000).map_err(|e| e.reason())
    }

    #[test]
    fn round_trip_every_method() {
        for &method in <SigMethod as strum::VariantArray>::VARIANTS {
            assert_eq!(check(&signed(method, "1000000"), "current", method), Ok(()));
            let upper = signed(method, "1000000")
                .into_iter()
                .map(|(n, v)| if n == "sig" { (n, v.to_ascii_uppercase()) } else { (n, v) })
                .collect::<Vec<_>>();
            assert_eq!(check(&upper, "current", method), Ok(()), "{method}");
        }
    }

    #[test]
    fn rejections() {
        let m = SigMethod::Sha256Hmac;
        let mut tampered = signed(m, "1000000");
        tampered[1].1 = "failed".to_owned();
        assert_eq!(check(&tampered, "current", m), Err("mismatch"));
        assert_eq!(check(&signed(m, "1000000"), "other", m), Err("mismatch"));
        // Right length, wrong method: MD5 hash vs HMAC-MD5 both give 32 hex digits.
        let md5 = signed(SigMethod::Md5Hash, "1000000");
        assert_eq!(check(&md5, "current", SigMethod::Md5Hmac), Err("mismatch"));
        assert_eq!(check(&md5, "current", m), Err("malformed"));

        let unsigned: Vec<_> = signed(m, "1000000").into_iter().filter(|(n, _)| n != "sig").collect();
        assert_eq!(check(&unsigned, "current", m), Err("missing"));
        assert_eq!(check(&with_sig(unsigned.clone(), ""), "current", m), Err("missing"));
        assert_eq!(check(&with_sig(unsigned, &"zz".repeat(32)), "current", m), Err("malformed"));

        let twice = with_sig(signed(m, "1000000"), &"0".repeat(64));
        assert_eq!(check(&twice, "current", m), Err("malformed"));
    }

    #[test]
    fn timestamp_rules() {
        let m = SigMethod::Sha1Hmac;
        assert_eq!(check(&signed(m, "999700"), "current", m), Ok(()));
        assert_eq!(check(&signed(m, "999699"), "current", m), Err("stale"));
        assert_eq!(check(&signed(m, "1000060"), "current", m), Ok(()));
        assert_eq!(check(&signed(m, "1000061"), "current", m), Err("future"));
        assert_eq!(check(&signed(m, "+1000000"), "current", m), Err("malformed"));
        assert_eq!(check(&signed(m, "99999999999999999999"), "current", m), Err("malformed"));

        let params = pairs(&[("messageId", "x")]);
        let no_timestamp = with_sig(params.clone(), &sign(&params, "current", m));
        assert_eq!(check(&no_timestamp, "current", m), Err("missing"));
    }

    #[test]
    fn rotation_accepts_any_listed_secret() {
        let m = SigMethod::Sha512Hmac;
        assert_eq!(check(&signed(m, "1000000"), "next, current", m), Ok(()));
        assert_eq!(check(&signed(m, "1000000"), "next, older", m), Err("mismatch"));
    }

    #[test]
    fn method_words() {
        for &m in <SigMethod as strum::VariantArray>::VARIANTS {
            assert_eq!(m.to_string().to_uppercase().parse::<SigMethod>(), Ok(m));
        }
        assert!("sha384".parse::<SigMethod>().is_err());
    }

    fn any_params() -> impl Strategy<Value = Vec<(String, String)>> {
        let name = prop_oneof![Just("sig".to_owned()), Just("timestamp".to_owned()), any::<String>()];
        let value = prop_oneof!["[0-9a-fA-F]{0,130}", "[0-9+-]{0,25}", any::<String>()];
        prop::collection::vec((name, value), 0..8)
    }

    proptest! {
        #[test]
        fn verify_never_panics(params in any_params(), now in any::<i64>(), m in 0usize..5) {
            let _ = verify(&params, &secrets("a,b"), <SigMethod as strum::VariantArray>::VARIANTS[m], window(), now);
        }

        #[test]
        fn sign_then_verify(
            mut params in prop::collection::vec(("[a-z-]{1,8}", any::<String>()), 0..8),
            m in 0usize..5,
        ) {
            params.retain(|(n, _)| n != "sig" && n != "timestamp");
            params.push(("timestamp".to_owned(), "1000000".to_owned()));
            let sig = sign(&params, "current", <SigMethod as strum::VariantArray>::VARIANTS[m]);
            params.reverse();
            let params = with_sig(params, &sig);
            prop_assert_eq!(check(&params, "current", <SigMethod as strum::VariantArray>::VARIANTS[m]), Ok(()));
        }
    }
}
