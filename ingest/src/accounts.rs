//! Per-account credentials (`PROVIDER_ACCOUNTS_FILE`).
//!
//! A flat secret list per provider lets whoever holds any listed secret sign
//! receipts for every listed account. With the accounts file, the account a
//! request names selects its own credentials: a secret of account A never
//! verifies a receipt naming account B. The file is TOML, meant to be mounted
//! from a Kubernetes Secret:
//!
//! ```toml
//! [twilio]            # AccountSid
//! AC0123456789abcdef0123456789abcdef = ["current-token", "previous-token"]
//! [vonage]            # the api key: SMS `api-key`, Messages JWT `api_key`
//! a1b2c3d4 = ["signature-secret"]
//! [plivo]             # the auth id in `ParentAuthID`
//! MAXXXXXXXXXXXXXXXXXX = ["auth-token"]
//! [telnyx]            # `data.payload.organization_id` -> Ed25519 public keys
//! b448f9cc-a842-4784-98e9-03c1a5872950 = ["base64 public key"]
//! [sinch]             # /dlr/sinch/{service plan id}: callback secrets or Basic user:password
//! sp-acme = ["callback-secret"]
//! [infobip]           # /dlr/infobip/{account}: Basic user:password
//! acme = ["user:password"]
//! ```
//!
//! How each provider names the account is its [`AccountKey`]: a field the
//! signature covers (Vonage, Twilio, Plivo, Telnyx), or, where nothing in the
//! request does (Sinch, Infobip), the callback URL's last path segment, which
//! the operator enters per account in the provider's portal. Each list is
//! current first, then previous ones during a rotation. The environment
//! variables stay for the one-account case: a provider without a table in the
//! file uses them; a provider with one keyed by a field uses only the file; a
//! path-keyed provider uses its variable for the route without a segment.
//!
//! [`AccountKey`]: crate::providers::api::AccountKey

use crate::providers::api::AccountKey;
use crate::signature::{SecretList, SignatureError};
use secrecy::SecretString;
use std::collections::{BTreeMap, HashMap};

/// Secrets by provider and account.
#[derive(Debug, Default)]
pub struct Accounts(HashMap<String, HashMap<String, SecretList>>);

/// Why the accounts file cannot be used (start-up errors).
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The configured path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML of the expected shape (no values echoed: they are secrets).
    #[error("{path} is not a table of providers, each a table of account = [secrets]: {problem}")]
    Shape {
        /// The configured path.
        path: String,
        /// Where it went wrong.
        problem: String,
    },
    /// A provider that does not name accounts in its requests, or an
    /// account name a path segment cannot carry as it is.
    #[error("{path}: [{provider}] is not supported; per-account secrets exist for: {supported}")]
    Provider {
        /// The configured path.
        path: String,
        /// The table's name.
        provider: String,
        /// The tables the registry's providers allow.
        supported: String,
    },
}

impl Accounts {
    /// Reads and checks the file at `path`.
    pub fn load(path: &str) -> Result<Self, AccountsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| AccountsError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|e| match e {
            AccountsError::Shape { problem, .. } => AccountsError::Shape { path: path.to_owned(), problem },
            AccountsError::Provider { provider, supported, .. } => {
                AccountsError::Provider { path: path.to_owned(), provider, supported }
            }
            other => other,
        })
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, AccountsError> {
        let shape = |problem: String| AccountsError::Shape { path: String::new(), problem };
        let tables: BTreeMap<String, BTreeMap<String, Vec<String>>> = toml::from_str(text).map_err(|e| {
            // The parser's message may quote a value, which is a secret: say where only.
            let at = e.span().map_or(0, |span| span.start.min(text.len()));
            shape(format!("line {}", text.get(..at).unwrap_or(text).lines().count().max(1)))
        })?;
        let mut accounts = HashMap::new();
        for (provider, entries) in tables {
            // The providers whose requests name the account they belong to.
            let tables = crate::providers::registry::account_tables();
            if !tables.iter().any(|(p, _)| *p == provider) {
                let supported = tables.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", ");
                return Err(AccountsError::Provider { path: String::new(), provider, supported });
            }
            let mut by_account = HashMap::new();
            let by_path = tables.iter().any(|(p, key)| *p == provider && *key == AccountKey::PathSegment);
            for (account, secrets) in entries {
                if by_path && !is_path_segment(&account) {
                    return Err(shape(format!(
                        "[{provider}] {account:?}: a path segment account is made of A-Z a-z 0-9 . _ - ~ only"
                    )));
                }
                if secrets.is_empty() || secrets.iter().any(|s| s.is_empty()) {
                    return Err(shape(format!(
                        "[{provider}] {account}: needs one or more non-empty secrets"
                    )));
                }
                let list = SecretList::from_secrets(secrets.into_iter().map(SecretString::from).collect());
                by_account.insert(account, list);
            }
            accounts.insert(provider, by_account);
        }
        Ok(Self(accounts))
    }

    /// True when the file has accounts for `provider`.
    pub fn has(&self, provider: &str) -> bool {
        self.0.get(provider).is_some_and(|a| !a.is_empty())
    }

    /// The accounts of `provider` with their credentials, for providers
    /// that parse them into their own types at start-up (Telnyx keys).
    pub fn table(&self, provider: &str) -> impl Iterator<Item = (&str, &SecretList)> {
        self.0.get(provider).into_iter().flatten().map(|(account, list)| (account.as_str(), list))
    }

    /// The credentials of a provider whose requests name the account in
    /// their path: the named account's own (an account the file does not
    /// list is refused, never given the variable's list), or, on the route
    /// without a segment, `fallback` (the environment variable's list).
    pub fn by_path<'a>(
        &'a self,
        provider: &str,
        account: Option<&str>,
        fallback: Option<&'a SecretList>,
    ) -> Result<&'a SecretList, SignatureError> {
        match account {
            None => fallback.ok_or(SignatureError::Missing("secret")),
            Some(account) => {
                self.0.get(provider).and_then(|a| a.get(account)).ok_or(SignatureError::UnknownAccount)
            }
        }
    }

    /// The secrets that may verify a request of `provider` naming `account`:
    /// that account's own when the file lists the provider, else `fallback`
    /// (the environment variable's list).
    pub fn secrets_for<'a>(
        &'a self,
        provider: &str,
        account: Option<&str>,
        fallback: Option<&'a SecretList>,
    ) -> Result<&'a SecretList, SignatureError> {
        match self.0.get(provider).filter(|a| !a.is_empty()) {
            None => fallback.ok_or(SignatureError::Missing("secret")),
            Some(accounts) => {
                let account = account.map(str::trim).filter(|a| !a.is_empty());
                let account = account.ok_or(SignatureError::Missing("account"))?;
                accounts.get(account).ok_or(SignatureError::UnknownAccount)
            }
        }
    }
}

/// True when `account` is a non-empty run of URL-unreserved characters
/// (RFC 3986), so that the path a provider calls spells it exactly.
fn is_path_segment(account: &str) -> bool {
    !account.is_empty()
        && account.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        && account != "."
        && account != ".."
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const FILE: &str = r#"
[twilio]
ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa = ["a-current", "a-previous"]
ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb = ["b"]
"#;

    #[test]
    fn each_account_gets_its_own_secrets() {
        let accounts = Accounts::parse(FILE).unwrap();
        let a = accounts.secrets_for("twilio", Some("ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), None).unwrap();
        let got: Vec<&str> = a.iter().map(|s| s.expose_secret()).collect();
        assert_eq!(got, ["a-current", "a-previous"]);
        assert_eq!(
            accounts.secrets_for("twilio", Some("ACcccccccccccccccccccccccccccccccc"), None).unwrap_err(),
            SignatureError::UnknownAccount
        );
        assert_eq!(
            accounts.secrets_for("twilio", None, None).unwrap_err(),
            SignatureError::Missing("account")
        );
        let env = SecretList::parse("env").unwrap();
        assert!(accounts.secrets_for("vonage", Some("x"), Some(&env)).is_ok(), "no table: the env list");
    }

    #[test]
    fn bad_files_are_refused_without_echoing_secrets() {
        let error = Accounts::parse("[bandwidth]\nk = [\"s\"]").unwrap_err().to_string();
        assert!(error.contains("bandwidth"), "{error}");
        let error = Accounts::parse("[infobip]\n\"a/b\" = [\"u:p\"]").unwrap_err().to_string();
        assert!(error.contains("path segment"), "{error}");
        let error = Accounts::parse("[twilio]\nAC1 = \"not-a-list-secret\"").unwrap_err().to_string();
        assert!(!error.contains("not-a-list-secret"), "{error}");
        assert!(Accounts::parse("[twilio]\nAC1 = []").is_err());
    }

    #[test]
    fn a_path_account_gets_its_own_credentials_and_no_segment_the_variable() {
        let accounts = Accounts::parse("[infobip]\nacme = [\"a:1\", \"a:0\"]\nbeta = [\"b:1\"]").unwrap();
        let env = SecretList::parse("env:1").unwrap();
        let acme = accounts.by_path("infobip", Some("acme"), Some(&env)).unwrap();
        assert_eq!(acme.iter().map(|s| s.expose_secret()).collect::<Vec<_>>(), ["a:1", "a:0"]);
        assert_eq!(
            accounts.by_path("infobip", Some("gamma"), Some(&env)).unwrap_err(),
            SignatureError::UnknownAccount,
            "an unlisted account never falls back to the variable"
        );
        assert!(accounts.by_path("infobip", None, Some(&env)).is_ok());
        assert_eq!(
            Accounts::default().by_path("sinch", Some("acme"), Some(&env)).unwrap_err(),
            SignatureError::UnknownAccount
        );
        assert_eq!(accounts.by_path("infobip", None, None).unwrap_err(), SignatureError::Missing("secret"));
    }
}
