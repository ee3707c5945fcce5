//! Infobip's settings: the Basic credentials of the report URL.

use clap::Args;
use secrecy::SecretString;

use crate::config::ConfigError;
use crate::providers::settings::{basic_list, check, exposed};
use crate::providers::{Configured, ProviderSettings};
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

/// Infobip's configuration: the `user:password` pairs (`None` when off).
pub(crate) fn configure(settings: &ProviderSettings) -> Result<Configured<Option<SecretList>>, ConfigError> {
    let own = &settings.infobip;
    let check = check(own.mode, exposed(&own.basic_auth), "INFOBIP_BASIC_AUTH", basic_list)?;
    Ok(Configured { mode: check.mode, credentials: check.secrets })
}
