//! Infobip's settings: the Basic credentials of the report URL.

use clap::Args;
use secrecy::SecretString;

use crate::config::ConfigError;
use crate::providers::settings::{basic_list, check_accounts, exposed};
use crate::providers::{Common, Configured, ProviderSettings};
use crate::signature::basic;
use crate::signature::{SecretList, SignatureMode};

/// `INFOBIP_*` flags and variables.
#[derive(Debug, Clone, Default, Args)]
#[group(skip)]
pub struct Settings {
    /// Infobip HTTP Basic check: off, log-only or enforce (default: enforce when credentials are set, not served otherwise).
    #[arg(id = "infobip-auth-mode", long = "infobip-auth-mode", env = "INFOBIP_AUTH_MODE")]
    pub mode: Option<SignatureMode>,
    /// Infobip report URL credentials `user:password`, one per line (any other character allowed): current first.
    #[arg(
        id = "infobip-basic-auth",
        long = "infobip-basic-auth",
        env = "INFOBIP_BASIC_AUTH",
        hide_env_values = true
    )]
    pub basic_auth: Option<SecretString>,
}

impl crate::providers::api::ModeSetting for Settings {
    fn mode_mut(&mut self) -> Option<&mut Option<SignatureMode>> {
        Some(&mut self.mode)
    }
}

/// Infobip's configuration: the `user:password` pairs of `/dlr/infobip`
/// (`None` when off or only per account); each account's in the accounts
/// file are checked to be pairs too.
pub(crate) fn configure(
    settings: &ProviderSettings,
    common: &Common,
) -> Result<Configured<Option<SecretList>>, ConfigError> {
    let own = &settings.infobip;
    let in_file = common.accounts.has("infobip");
    let check = check_accounts(own.mode, exposed(&own.basic_auth), in_file, "INFOBIP_BASIC_AUTH", basic_list)?;
    for (account, list) in common.accounts.table("infobip") {
        basic::validate_credentials(list).map_err(|e| ConfigError::Invalid {
            variable: "PROVIDER_ACCOUNTS_FILE",
            problem: format!("[infobip] {account}: {e}"),
        })?;
    }
    Ok(Configured { mode: check.mode, credentials: check.secrets })
}
