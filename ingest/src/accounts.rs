//! Per-account credentials (`PROVIDER_ACCOUNTS_FILE`).
//!
//! A flat secret list per provider lets whoever holds any listed secret sign
//! receipts for every listed account. With the accounts file, the account a
//! request names (and that its signature covers) selects its own secrets: a
//! secret of account A never verifies a receipt naming account B. The file is
//! TOML, meant to be mounted from a Kubernetes Secret:
//!
//! ```toml
//! [twilio]
//! AC0123456789abcdef0123456789abcdef = ["current-token", "previous-token"]
//! [vonage]            # the api key: SMS `api-key`, Messages JWT `api_key`
//! a1b2c3d4 = ["signature-secret"]
//! [plivo]             # the auth id in `ParentAuthID`
//! MAXXXXXXXXXXXXXXXXXX = ["auth-token"]
//! ```
//!
//! Each list is current first, then previous ones during a rotation. The
//! environment variables stay for the one-account case: a provider without a
//! table in the file uses them, a provider with one uses only the file.

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
    /// A provider that does not name accounts in its requests.
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
            for (account, secrets) in entries {
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
        let error = Accounts::parse("[telnyx]\nk = [\"s\"]").unwrap_err().to_string();
        assert!(error.contains("telnyx"), "{error}");
        let error = Accounts::parse("[twilio]\nAC1 = \"not-a-list-secret\"").unwrap_err().to_string();
        assert!(!error.contains("not-a-list-secret"), "{error}");
        assert!(Accounts::parse("[twilio]\nAC1 = []").is_err());
    }
}
