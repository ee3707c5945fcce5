//! Sealed quarantine copies: how a replay proves it is a copy ingest made.
//!
//! A quarantined request is replayed after its cause is fixed, often long
//! after it arrived: a Telnyx, Vonage or Sinch signature is then too old for
//! the freshness window, and an HTTP Basic password (Infobip, Sinch) is not
//! in the copy at all. So when ingest copies a request it seals the copy
//! with `INGEST_QUARANTINE_REPLAY_KEY`: an HMAC-SHA256 over everything a
//! re-verification reads (method, path, query, the copied headers, the
//! body), the time ingest received the request and, for Basic, a keyed
//! digest of the credential (the copy itself keeps `Basic [redacted]`).
//! `worker replay-quarantine` sends the seal back in
//! [`REPLAY_SEAL_HEADER`]; the worker needs no key.
//!
//! A request whose seal opens is verified like any other, provider
//! signature included, only *as of the time it was first received* (so a
//! request that was already stale then stays refused), with its Basic
//! credential restored from the configured ones whose digest matches, and
//! it is not copied again. A seal that does not open is refused (401
//! `replay_seal`): the header gains a request from outside nothing.

use axum::http::{HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use dlr_shared::quarantine::{REPLAY_SEAL_HEADER, RequestCopy};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;

use super::WebhookRequest;
use super::quarantine::copied_headers;
use crate::error::IngestError;
use crate::signature::SecretList;
use crate::state::AppState;

/// Seal format version, the first field of the header value.
const VERSION: &str = "v1";

/// Shortest accepted key: 32 bytes, as `openssl rand -base64 32` gives.
pub const MIN_KEY_BYTES: usize = 32;

/// Domain separation of the two things a key authenticates.
const SEAL_CONTEXT: &[u8] = b"dlr-quarantine-seal-v1";
const CREDENTIAL_CONTEXT: &[u8] = b"dlr-quarantine-basic-credential-v1";

/// What a Basic copy's `Authorization` becomes when no configured
/// credential matches its digest: well-formed, so that the provider check
/// answers `mismatch` (the truth) rather than `malformed`.
const NO_MATCHING_CREDENTIAL: &str = "Basic W3JlZGFjdGVkXQ==";

/// The keys of `INGEST_QUARANTINE_REPLAY_KEY`: the first seals, every one
/// opens (so the key can be rotated while copies sealed with the old one wait).
#[derive(Clone)]
pub struct ReplayKeys(SecretList);

impl ReplayKeys {
    /// Parses a comma-separated list, current key first; each at least
    /// [`MIN_KEY_BYTES`] long.
    pub fn parse(text: &str) -> Result<Self, String> {
        let keys = SecretList::parse(text).map_err(|e| e.to_string())?;
        if let Some(position) = keys.iter().position(|k| k.expose_secret().len() < MIN_KEY_BYTES) {
            return Err(format!(
                "key {} (1-based) is shorter than {MIN_KEY_BYTES} bytes (e.g. `openssl rand -base64 32`)",
                position + 1
            ));
        }
        Ok(Self(keys))
    }

    fn current(&self) -> Option<&SecretString> {
        self.0.iter().next()
    }
}

impl fmt::Debug for ReplayKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReplayKeys").field(&self.0).finish()
    }
}

fn mac_with(key: &SecretString) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(key.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// Feeds one field, length first, so that no two different copies give the
/// same input (the re-split problem the providers' own schemes had).
fn field(mac: &mut Hmac<Sha256>, bytes: &[u8]) {
    mac.update(&(bytes.len() as u64).to_be_bytes());
    mac.update(bytes);
}

/// The parts of a request the seal covers, as the copy holds them.
struct Covered<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a BTreeMap<String, Option<String>>,
    body: &'a [u8],
}

fn seal_mac(
    key: &SecretString,
    covered: &Covered<'_>,
    received_micros: i64,
    credential: &[u8],
) -> Hmac<Sha256> {
    let mut mac = mac_with(key);
    field(&mut mac, SEAL_CONTEXT);
    field(&mut mac, covered.method.as_bytes());
    field(&mut mac, covered.path.as_bytes());
    match covered.query {
        Some(query) => {
            field(&mut mac, b"?");
            field(&mut mac, query.as_bytes());
        }
        None => field(&mut mac, b""),
    }
    let present: Vec<(&String, &String)> =
        covered.headers.iter().filter_map(|(name, value)| Some((name, value.as_ref()?))).collect();
    mac.update(&(present.len() as u64).to_be_bytes());
    for (name, value) in present {
        field(&mut mac, name.as_bytes());
        field(&mut mac, value.as_bytes());
    }
    field(&mut mac, covered.body);
    field(&mut mac, &received_micros.to_be_bytes());
    field(&mut mac, credential);
    mac
}

fn credential_digest(key: &SecretString, credential: &[u8]) -> Vec<u8> {
    let mut mac = mac_with(key);
    field(&mut mac, CREDENTIAL_CONTEXT);
    field(&mut mac, credential);
    mac.finalize().into_bytes().to_vec()
}

/// The decoded `user:password` of a Basic `Authorization` value.
fn basic_credential(authorization: Option<&HeaderValue>) -> Option<Vec<u8>> {
    let value = authorization?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    STANDARD.decode(encoded.trim()).ok()
}

/// The seal of `copy` (a request received at `received_at`; `original` is
/// its headers as received, for the Basic credential), or `None` when no
/// key is configured or the body was cut (a cut copy cannot verify).
pub(crate) fn seal(
    keys: Option<&ReplayKeys>,
    copy: &RequestCopy,
    original: &axum::http::HeaderMap,
    received_at: DateTime<Utc>,
) -> Option<String> {
    let key = keys?.current()?;
    if copy.body_truncated {
        return None;
    }
    let credential = basic_credential(original.get(header::AUTHORIZATION))
        .map(|c| credential_digest(key, &c))
        .unwrap_or_default();
    let query = copy.query.as_deref().map(as_replayed);
    let covered = Covered {
        method: &copy.method,
        path: &copy.path,
        query: query.as_deref(),
        headers: &copy.headers,
        body: &copy.body,
    };
    let micros = received_at.timestamp_micros();
    let mac = seal_mac(key, &covered, micros, &credential).finalize().into_bytes();
    Some(format!(
        "{VERSION}:{micros}:{}:{}",
        URL_SAFE_NO_PAD.encode(&credential),
        URL_SAFE_NO_PAD.encode(mac)
    ))
}

/// The query as the worker's replay will send it: its URL library
/// percent-encodes what a URL may not hold raw (a space, `"`, `'`, `<`,
/// `>`), so the seal covers that form, which is what ingest receives.
fn as_replayed(query: &str) -> String {
    let mut url = url::Url::parse("http://replay.invalid/").unwrap_or_else(|_| unreachable!("a valid URL"));
    url.set_query(Some(query));
    url.query().unwrap_or(query).to_owned()
}

/// Opens the seal of a replayed request, if it carries one: on success the
/// request is marked a sealed replay, its verification time becomes the
/// time of its first receipt and a Basic credential is restored. A seal
/// that does not open is an error; a request without one is left alone.
pub(crate) fn open(state: &AppState, request: &mut WebhookRequest) -> Result<(), IngestError> {
    let Some(value) = request.headers.get(REPLAY_SEAL_HEADER) else {
        return Ok(());
    };
    let (received_micros, credential, mac) =
        value.to_str().ok().and_then(parse_seal).ok_or(IngestError::ReplaySeal)?;
    let keys = state.replay_keys.as_deref().ok_or(IngestError::ReplaySeal)?;
    let headers = copied_headers(&request.headers);
    let covered = Covered {
        method: request.method.as_str(),
        path: &request.path,
        query: request.query.as_deref(),
        headers: &headers,
        body: &request.body,
    };
    let key = keys
        .0
        .iter()
        .find(|key| seal_mac(key, &covered, received_micros, &credential).verify_slice(&mac).is_ok())
        .ok_or(IngestError::ReplaySeal)?;
    let received_at =
        DateTime::<Utc>::from_timestamp_micros(received_micros).ok_or(IngestError::ReplaySeal)?;
    if !credential.is_empty() {
        let restored = basic_credentials(state)
            .find(|candidate| {
                let mut mac = mac_with(key);
                field(&mut mac, CREDENTIAL_CONTEXT);
                field(&mut mac, candidate.expose_secret().as_bytes());
                mac.verify_slice(&credential).is_ok()
            })
            .map(|candidate| crate::signature::basic::header_value(candidate.expose_secret()))
            .unwrap_or_else(|| NO_MATCHING_CREDENTIAL.to_owned());
        let restored = HeaderValue::from_str(&restored).map_err(|_| IngestError::ReplaySeal)?;
        request.headers.insert(header::AUTHORIZATION, restored);
    }
    request.received_at = received_at;
    request.sealed_replay = true;
    Ok(())
}

/// `v1:<micros>:<credential digest>:<mac>`.
fn parse_seal(value: &str) -> Option<(i64, Vec<u8>, Vec<u8>)> {
    let mut parts = value.trim().split(':');
    let (version, micros, credential, mac) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != VERSION || parts.next().is_some() {
        return None;
    }
    Some((micros.parse().ok()?, URL_SAFE_NO_PAD.decode(credential).ok()?, URL_SAFE_NO_PAD.decode(mac).ok()?))
}

/// Every HTTP Basic credential ingest is configured with (Infobip, Sinch):
/// the candidates a sealed copy's credential digest is matched against.
/// The provider's own check then decides whether that credential is valid
/// for its route.
fn basic_credentials(state: &AppState) -> impl Iterator<Item = &SecretString> {
    state.common.basic_credentials.iter().flat_map(SecretList::iter)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn copy() -> RequestCopy {
        RequestCopy {
            method: "POST".into(),
            path: "/dlr/telnyx".into(),
            query: None,
            headers: BTreeMap::from([("telnyx-timestamp".into(), Some("1700000000".into()))]),
            body: br#"{"data":{}}"#.to_vec(),
            body_truncated: false,
            seal: None,
        }
    }

    fn seal_of(copy: &RequestCopy, keys: &ReplayKeys) -> (i64, Vec<u8>, Vec<u8>) {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("time");
        parse_seal(&seal(Some(keys), copy, &axum::http::HeaderMap::new(), at).expect("sealed"))
            .expect("parses")
    }

    fn opens(copy: &RequestCopy, keys: &ReplayKeys, sealed: &(i64, Vec<u8>, Vec<u8>)) -> bool {
        let covered = Covered {
            method: &copy.method,
            path: &copy.path,
            query: copy.query.as_deref(),
            headers: &copy.headers,
            body: &copy.body,
        };
        keys.0.iter().any(|k| seal_mac(k, &covered, sealed.0, &sealed.1).verify_slice(&sealed.2).is_ok())
    }

    #[test]
    fn a_seal_opens_for_its_own_copy_only() {
        let keys = ReplayKeys::parse(KEY).expect("key");
        let original = copy();
        let sealed = seal_of(&original, &keys);
        assert!(opens(&original, &keys, &sealed));
        let mut other = original.clone();
        other.body.push(b' ');
        assert!(!opens(&other, &keys, &sealed), "another body");
        let mut other = original.clone();
        other.query = Some(String::new());
        assert!(!opens(&other, &keys, &sealed), "an empty query is not no query");
        let mut other = original.clone();
        other.headers.insert("telnyx-timestamp".into(), Some("1700000001".into()));
        assert!(!opens(&other, &keys, &sealed), "another header value");
        let later = (sealed.0 + 1, sealed.1.clone(), sealed.2.clone());
        assert!(!opens(&original, &keys, &later), "another time");
    }

    #[test]
    fn the_previous_key_still_opens_and_a_wrong_one_does_not() {
        let old = ReplayKeys::parse(KEY).expect("key");
        let sealed = seal_of(&copy(), &old);
        let rotated = ReplayKeys::parse(&format!("{}, {KEY}", "n".repeat(32))).expect("keys");
        assert!(opens(&copy(), &rotated, &sealed));
        let other = ReplayKeys::parse(&"x".repeat(32)).expect("key");
        assert!(!opens(&copy(), &other, &sealed));
    }

    #[test]
    fn short_keys_and_cut_copies_are_refused() {
        assert!(ReplayKeys::parse("short").expect_err("too short").contains("key 1"));
        assert!(ReplayKeys::parse(&format!("{KEY},short")).expect_err("second too short").contains("key 2"));
        let keys = ReplayKeys::parse(KEY).expect("key");
        let cut = RequestCopy { body_truncated: true, ..copy() };
        assert_eq!(seal(Some(&keys), &cut, &axum::http::HeaderMap::new(), Utc::now()), None);
        assert_eq!(seal(None, &copy(), &axum::http::HeaderMap::new(), Utc::now()), None);
    }

    #[test]
    fn a_query_is_sealed_as_the_replay_sends_it() {
        let keys = ReplayKeys::parse(KEY).expect("key");
        let raw = RequestCopy { query: Some("a=it's here&b=%27".into()), ..copy() };
        let sealed = seal_of(&raw, &keys);
        let sent = RequestCopy { query: Some("a=it%27s%20here&b=%27".into()), ..copy() };
        assert!(opens(&sent, &keys, &sealed), "the re-encoded query the worker sends");
        assert_eq!(as_replayed("a=1&b=%20"), "a=1&b=%20", "an encoded query is left alone");
    }

    #[test]
    fn malformed_seals_do_not_parse() {
        for bad in ["", "v1", "v2:1:: ", "v1:x::AAAA", "v1:1::AAAA:extra", "v1:1:!!:AAAA"] {
            assert_eq!(parse_seal(bad), None, "{bad:?}");
        }
        assert!(parse_seal("v1:1::AAAA").is_some());
    }
}
