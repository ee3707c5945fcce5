//! What every provider's authenticity check shares.
//!
//! Anyone who learns a webhook URL can post fake receipts, so each provider signs its callbacks; each
//! provider's own scheme is in its folder (`providers/<name>/signature.rs`), HTTP Basic (Sinch,
//! Infobip) in [`basic`]. This module holds what they all share: the rollout mode, the rotating secret
//! list, the freshness window, a nonce cache and one error type whose [`SignatureError::reason`] feeds
//! a metrics label.
//!
//! Everything here is pure (no I/O, no clock): the HTTP layer passes in decoded parameters, header
//! values and the current time, which keeps the checks deterministic and testable.

pub mod basic;
pub mod nonces;

use dlr_shared::words;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use hmac::Mac;
use hmac::digest::KeyInit;
use secrecy::SecretString;

/// How strictly a provider's signature is enforced.
///
/// Signing is an account-side switch at Vonage and a per-account secret at Twilio, so turning it on is
/// a rollout: run `log-only` first, watch the failure metrics, then `enforce`. `off` is for providers
/// or accounts that do not sign at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::Display, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "kebab-case")]
pub enum SignatureMode {
    /// Do not check signatures.
    Off,
    /// Check and record the outcome, but accept the request either way.
    LogOnly,
    /// Reject requests whose signature does not verify.
    Enforce,
}

impl FromStr for SignatureMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConfigError::parse_word("signature mode", s)
    }
}

impl ConfigError {
    /// Parses a word-valued setting, naming `what` and the allowed words when it is none of them.
    pub(crate) fn parse_word<T>(what: &'static str, word: &str) -> Result<T, Self>
    where
        T: strum::VariantArray + Copy + Into<&'static str>,
    {
        words::parse(word).ok_or_else(|| ConfigError::UnknownWord {
            what,
            value: word.to_owned(),
            allowed: words::list::<T>(),
        })
    }
}

/// Configuration values in this module that could not be parsed.
///
/// Kept apart from [`SignatureError`] because these surface once at startup (and must name the bad
/// value), while signature errors happen per request and must stay low-cardinality.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A word-valued setting (mode, method) had a value outside its fixed set.
    #[error("unknown {what} {value:?}; expected one of: {allowed}")]
    UnknownWord {
        /// Which setting was being parsed.
        what: &'static str,
        /// The rejected input (never a secret).
        value: String,
        /// The accepted words, comma-separated.
        allowed: String,
    },
    /// The secret list was empty or only whitespace.
    #[error("secret list is empty")]
    EmptySecretList,
    /// One comma-separated item of a secret list was empty, e.g. `a,,b` or a trailing comma.
    #[error("secret list item {position} (1-based) is empty")]
    EmptySecret {
        /// 1-based position of the empty item; the secrets themselves are never echoed.
        position: usize,
    },
    /// One item of a key list is not a usable key (Telnyx public keys).
    #[error("key list item {position} (1-based) is not {expected}")]
    BadKey {
        /// 1-based position of the bad item.
        position: usize,
        /// What a key must be.
        expected: &'static str,
    },
}

/// The secrets a signature may have been made with: the current one first, then older ones.
///
/// Rotating a provider secret is not atomic (the provider switches, then we redeploy, or the other way
/// round), so during the overlap both must verify. The list is never empty (but for [`SecretList::none`]), and its `Debug` output
/// shows only the count.
#[derive(Clone)]
pub struct SecretList(Vec<SecretString>);

impl SecretList {
    /// Parses a comma-separated list such as `new_secret,old_secret`, trimming each item.
    ///
    /// Empty items are rejected rather than skipped: a stray comma in an env var would otherwise
    /// silently drop a secret the operator meant to keep.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        if s.trim().is_empty() {
            return Err(ConfigError::EmptySecretList);
        }
        s.split(',')
            .enumerate()
            .map(|(i, item)| match item.trim() {
                "" => Err(ConfigError::EmptySecret { position: i + 1 }),
                secret => Ok(SecretString::from(secret)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Parses one secret per line (a trailing line break is ignored), for
    /// credentials that may contain commas or spaces (Basic passwords): a
    /// line break cannot occur in an HTTP header, so it cannot be part of one.
    pub fn parse_lines(s: &str) -> Result<Self, ConfigError> {
        let s = s.strip_suffix('\n').unwrap_or(s);
        if s.trim().is_empty() {
            return Err(ConfigError::EmptySecretList);
        }
        s.split('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .enumerate()
            .map(|(i, item)| match item {
                "" => Err(ConfigError::EmptySecret { position: i + 1 }),
                secret => Ok(SecretString::from(secret)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// No secret: what a request naming no configured account is checked
    /// with, only to tell a missing or malformed signature ([`unselected`]).
    pub(crate) fn none() -> Self {
        Self(Vec::new())
    }

    /// A list of already separated secrets (the accounts file); not empty.
    pub(crate) fn from_secrets(secrets: Vec<SecretString>) -> Self {
        Self(secrets)
    }

    /// Tries `verify` with each secret alone, current first, and returns the
    /// index of the one that verified (0: current, more: previous), for the
    /// metric that tells when an old secret can go. On failure the first
    /// error other than a mismatch is returned (a secret that matched but, say,
    /// too late), else the mismatch.
    pub fn first_match(
        &self,
        mut verify: impl FnMut(&SecretList) -> Result<(), SignatureError>,
    ) -> Result<usize, SignatureError> {
        let mut error = SignatureError::Mismatch;
        for (i, secret) in self.0.iter().enumerate() {
            match verify(&Self(vec![secret.clone()])) {
                Ok(()) => return Ok(i),
                Err(SignatureError::Mismatch) => {}
                Err(other) if error == SignatureError::Mismatch => error = other,
                Err(_) => {}
            }
        }
        Err(error)
    }

    /// The secrets in priority order (current first).
    pub fn iter(&self) -> impl Iterator<Item = &SecretString> {
        self.0.iter()
    }
}

impl fmt::Debug for SecretList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretList").field("len", &self.0.len()).finish_non_exhaustive()
    }
}

/// The error of a request whose named account selects no credentials
/// (`selection`: `unknown_account`, or a missing account): a request whose
/// signature is itself missing or malformed (`shape`, its check run with no
/// credentials) is reported as such, so that it is not taken for a
/// well-formed one and copied to the quarantine.
pub fn unselected(selection: SignatureError, shape: Result<usize, SignatureError>) -> SignatureError {
    match shape {
        Err(error @ (SignatureError::Missing(_) | SignatureError::Malformed(_))) => error,
        _ => selection,
    }
}

/// Why a signature check failed.
///
/// Display text is for logs and never contains secrets or raw request values; [`Self::reason`] is the
/// bounded label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required signature input was absent (the signature itself, `timestamp`, the header).
    #[error("missing {0}")]
    Missing(&'static str),
    /// An input was present but cannot be a valid signature (bad encoding, wrong length, bad JWT).
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Well-formed, but no configured secret produces this signature.
    #[error("signature does not match any configured secret")]
    Mismatch,
    /// Signed too long ago: possibly a replay.
    #[error("signature timestamp is {age_secs} s old, limit is {max_age_secs} s")]
    Stale {
        /// How far in the past the timestamp is.
        age_secs: u64,
        /// The configured limit.
        max_age_secs: u64,
    },
    /// Signed in the future beyond the allowed clock skew.
    #[error("signature timestamp is {ahead_secs} s in the future, limit is {max_future_secs} s")]
    Future {
        /// How far ahead of our clock the timestamp is.
        ahead_secs: u64,
        /// The configured limit.
        max_future_secs: u64,
    },
    /// The JWT is genuine but was issued for a different body (or carries no body hash).
    #[error("payload_hash claim missing or not the SHA-256 of the body")]
    PayloadHash,
    /// The token or settings name an algorithm we do not accept (e.g. JWT `alg: none`).
    #[error("unsupported signature algorithm")]
    Algorithm,
    /// The JWT issuer is not the provider.
    #[error("JWT issuer missing or not Vonage")]
    Issuer,
    /// The request names an account the accounts file does not list.
    #[error("account not configured")]
    UnknownAccount,
    /// A signature without a timestamp whose nonce was already used (Plivo V2).
    #[error("nonce already used")]
    Replayed,
}

impl SignatureError {
    /// Low-cardinality label for metrics (`missing`, `malformed`, `mismatch`, `stale`, `future`,
    /// `payload_hash`, `algorithm`, `issuer`, `replayed`, `unknown_account`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing",
            Self::Malformed(_) => "malformed",
            Self::Mismatch => "mismatch",
            Self::Stale { .. } => "stale",
            Self::Future { .. } => "future",
            Self::PayloadHash => "payload_hash",
            Self::Algorithm => "algorithm",
            Self::Issuer => "issuer",
            Self::Replayed => "replayed",
            Self::UnknownAccount => "unknown_account",
        }
    }
}

/// How old or how far ahead a signing time may be.
///
/// The providers document no window (Vonage's signing and signed-webhook pages name none; of the SDKs
/// only Vonage's Java SDK checks one, 300 s), and retries may not be re-signed, so both limits are
/// configuration rather than constants.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// How far in the past a signing timestamp may be.
    pub max_age: Duration,
    /// How far in the future a signing timestamp may be (clock skew between us and the provider).
    pub max_future: Duration,
}

impl Freshness {
    /// Checks `timestamp` (Unix seconds) against `now_unix`.
    pub(crate) fn check(&self, timestamp: i64, now_unix: i64) -> Result<(), SignatureError> {
        // i128 so hostile timestamps near i64::MIN/MAX cannot overflow.
        let age = i128::from(now_unix) - i128::from(timestamp);
        let max_age = self.max_age.as_secs();
        let max_future = self.max_future.as_secs();
        let to_u64 = |v: i128| u64::try_from(v).unwrap_or(u64::MAX);
        if age > i128::from(max_age) {
            Err(SignatureError::Stale { age_secs: to_u64(age), max_age_secs: max_age })
        } else if -age > i128::from(max_future) {
            Err(SignatureError::Future { ahead_secs: to_u64(-age), max_future_secs: max_future })
        } else {
            Ok(())
        }
    }
}

/// Raw HMAC of `message` under `key`, shared by the Vonage and Twilio checks.
pub(crate) fn hmac<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length (RFC 2104), so this cannot fail; should it ever, an empty
    // digest matches nothing, so verification fails closed instead of panicking.
    match <M as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn mode_parses_and_displays() {
        for (word, mode) in [
            ("off", SignatureMode::Off),
            ("Log-Only", SignatureMode::LogOnly),
            (" enforce ", SignatureMode::Enforce),
        ] {
            assert_eq!(word.parse::<SignatureMode>(), Ok(mode));
            assert_eq!(mode.to_string().parse::<SignatureMode>(), Ok(mode));
        }
        let err = "strict".parse::<SignatureMode>().unwrap_err().to_string();
        assert!(err.contains("off, log-only, enforce"), "{err}");
    }

    #[test]
    fn secret_list_parses_in_order_and_hides_secrets() {
        let list = SecretList::parse(" new , old").unwrap();
        let got: Vec<&str> = list.iter().map(|s| s.expose_secret()).collect();
        assert_eq!(got, ["new", "old"]);
        let debug = format!("{list:?}");
        assert!(!debug.contains("new") && !debug.contains("old"), "{debug}");
    }

    #[test]
    fn secret_list_rejects_empty_items() {
        assert_eq!(SecretList::parse(" ").unwrap_err(), ConfigError::EmptySecretList);
        assert_eq!(SecretList::parse("a,,b").unwrap_err(), ConfigError::EmptySecret { position: 2 });
        assert_eq!(SecretList::parse("a,").unwrap_err(), ConfigError::EmptySecret { position: 2 });
    }

    #[test]
    fn freshness_window_edges() {
        let f = Freshness { max_age: Duration::from_secs(300), max_future: Duration::from_secs(60) };
        assert!(f.check(1000, 1300).is_ok());
        assert_eq!(f.check(999, 1300).unwrap_err().reason(), "stale");
        assert!(f.check(1060, 1000).is_ok());
        assert_eq!(f.check(1061, 1000).unwrap_err().reason(), "future");
        // Extremes must not overflow.
        assert_eq!(f.check(i64::MIN, i64::MAX).unwrap_err().reason(), "stale");
        assert_eq!(f.check(i64::MAX, i64::MIN).unwrap_err().reason(), "future");
    }
}
