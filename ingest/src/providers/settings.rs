//! The one rule every provider's settings follow.
//!
//! A provider with credentials is checked in `enforce` mode unless its mode
//! says otherwise; a provider with neither credentials nor an explicit mode
//! is **not served** (its route answers 404). Accepting unverified receipts
//! therefore always is an operator's explicit `off` or `log-only`.
//! `enforce` or `log-only` without credentials is a start-up error.

use secrecy::{ExposeSecret, SecretString};

use crate::config::ConfigError;
use crate::signature::{SecretList, SignatureMode, basic};

/// One credential setting resolved: the mode in force and, unless it is
/// off or the provider not served, the parsed credentials.
#[derive(Clone, Debug)]
pub struct Check<T> {
    /// How strictly to check; `None` when the provider is not served.
    pub mode: Option<SignatureMode>,
    /// Keys or secrets; `None` when the mode is off, the provider not
    /// served, or the credentials are in the accounts file.
    pub secrets: Option<T>,
}

impl<T> Check<T> {
    /// True when requests are verified (log-only or enforce).
    pub fn checks(&self) -> bool {
        checks(self.mode)
    }
}

/// True when `mode` verifies requests (log-only or enforce).
pub fn checks(mode: Option<SignatureMode>) -> bool {
    matches!(mode, Some(SignatureMode::LogOnly | SignatureMode::Enforce))
}

/// The mode in force: the explicit one, else `enforce` with credentials,
/// else not served.
pub fn resolve(mode: Option<SignatureMode>, has_credentials: bool) -> Option<SignatureMode> {
    mode.or(has_credentials.then_some(SignatureMode::Enforce))
}

/// Resolves one provider's mode from its explicit setting and credentials,
/// and parses the credentials when they will be used.
pub fn check<T>(
    mode: Option<SignatureMode>,
    raw: Option<&str>,
    variable: &'static str,
    parse: impl FnOnce(&str) -> Result<T, crate::signature::ConfigError>,
) -> Result<Check<T>, ConfigError> {
    check_accounts(mode, raw, false, variable, parse)
}

/// [`check`] for a provider whose credentials may also come from the
/// accounts file (`in_accounts_file`): then the variable may be unset.
pub fn check_accounts<T>(
    mode: Option<SignatureMode>,
    raw: Option<&str>,
    in_accounts_file: bool,
    variable: &'static str,
    parse: impl FnOnce(&str) -> Result<T, crate::signature::ConfigError>,
) -> Result<Check<T>, ConfigError> {
    let raw = raw.map(str::trim).filter(|s| !s.is_empty());
    let mode = resolve(mode, raw.is_some() || in_accounts_file);
    match (mode, raw) {
        (None | Some(SignatureMode::Off), _) => Ok(Check { mode, secrets: None }),
        (Some(mode), None) if in_accounts_file => Ok(Check { mode: Some(mode), secrets: None }),
        (Some(mode), None) => {
            Err(ConfigError::Invalid { variable, problem: format!("is required when the mode is {mode}") })
        }
        (Some(mode), Some(raw)) => parse(raw)
            .map(|secrets| Check { mode: Some(mode), secrets: Some(secrets) })
            .map_err(|e| ConfigError::Invalid { variable, problem: e.to_string() }),
    }
}

/// A list of `user:password` pairs, one per line: a password may contain
/// any character but a line break (which an HTTP header cannot carry).
pub fn basic_list(raw: &str) -> Result<SecretList, crate::signature::ConfigError> {
    let list = SecretList::parse_lines(raw)?;
    basic::validate_credentials(&list)?;
    Ok(list)
}

/// The text of a secret setting, for parsing into the checks' own types
/// (which keep it secret in turn).
pub fn exposed(secret: &Option<SecretString>) -> Option<&str> {
    secret.as_ref().map(|s| s.expose_secret())
}

/// `PUBLIC_BASE_URL` is required when a provider that signs the URL it
/// called (`provider`, whose credential variable is `variable`) is checked.
pub fn require_public_url(
    checked: bool,
    common: &super::Common,
    provider: &str,
    variable: &str,
    mode_variable: &str,
) -> Result<(), ConfigError> {
    if checked && common.public_base_url.is_none() {
        return Err(ConfigError::Invalid {
            variable: "PUBLIC_BASE_URL",
            problem: format!(
                "is required when {variable} is set (or {mode_variable} is log-only/enforce): {provider} signs the URL it called"
            ),
        });
    }
    Ok(())
}
