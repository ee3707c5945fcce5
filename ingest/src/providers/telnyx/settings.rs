//! Telnyx's settings: the account's Ed25519 public key(s), or each
//! account's in the accounts file's `[telnyx]`.

use clap::Args;
use secrecy::ExposeSecret;
use std::collections::HashMap;

use super::signature::PublicKeys;
use crate::config::ConfigError;
use crate::providers::settings::check_accounts;
use crate::providers::{Common, Configured, ProviderSettings};
use crate::signature::SignatureMode;

/// `TELNYX_*` flags and variables.
#[derive(Debug, Clone, Default, Args)]
#[group(skip)]
pub struct Settings {
    /// Telnyx Ed25519 check: off, log-only or enforce (default: enforce when a key is set, not served otherwise).
    #[arg(id = "telnyx-signature-mode", long = "telnyx-signature-mode", env = "TELNYX_SIGNATURE_MODE")]
    pub mode: Option<SignatureMode>,
    /// Telnyx public key(s), base64, comma-separated: current first, previous during rotation.
    #[arg(id = "telnyx-public-key", long = "telnyx-public-key", env = "TELNYX_PUBLIC_KEY")]
    pub public_key: Option<String>,
}

impl crate::providers::api::ModeSetting for Settings {
    fn mode_mut(&mut self) -> Option<&mut Option<SignatureMode>> {
        Some(&mut self.mode)
    }
}

/// What Telnyx webhooks are verified with.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    /// `TELNYX_PUBLIC_KEY` (`None`: off, or only per account).
    pub flat: Option<PublicKeys>,
    /// Each account's keys, by `organization_id`; when not empty, a webhook
    /// is verified with the keys of the account it names, and only those.
    pub accounts: HashMap<String, PublicKeys>,
}

/// Telnyx's configuration: the keys (none when off), parsed once here so a
/// bad key in the accounts file stops start-up like a bad variable does.
pub(crate) fn configure(settings: &ProviderSettings, common: &Common) -> Result<Configured<Keys>, ConfigError> {
    let own = &settings.telnyx;
    let in_file = common.accounts.has("telnyx");
    let check =
        check_accounts(own.mode, own.public_key.as_deref(), in_file, "TELNYX_PUBLIC_KEY", PublicKeys::parse)?;
    let mut keys = Keys { flat: check.secrets.clone(), accounts: HashMap::new() };
    if check.checks() {
        for (account, list) in common.accounts.table("telnyx") {
            let items: Vec<&str> = list.iter().map(|k| k.expose_secret()).collect();
            let parsed = PublicKeys::parse(&items.join(",")).map_err(|e| ConfigError::Invalid {
                variable: "PROVIDER_ACCOUNTS_FILE",
                problem: format!("[telnyx] {account}: {e}"),
            })?;
            keys.accounts.insert(account.to_owned(), parsed);
        }
    }
    Ok(Configured { mode: check.mode, credentials: keys })
}
