//! Twilio's settings: the Auth Token(s) that sign status callbacks.

use clap::Args;
use secrecy::SecretString;

use crate::config::ConfigError;
use crate::providers::settings::{check_accounts, exposed, require_public_url};
use crate::providers::{Common, Configured, ProviderSettings};
use crate::signature::{SecretList, SignatureMode};

/// `TWILIO_*` flags and variables.
#[derive(Debug, Clone, Default, Args)]
#[group(skip)]
pub struct Settings {
    /// Twilio X-Twilio-Signature check: off, log-only or enforce
    /// (default: enforce when a token is set, route not served otherwise).
    #[arg(id = "twilio-signature-mode", long = "twilio-signature-mode", env = "TWILIO_SIGNATURE_MODE")]
    pub mode: Option<SignatureMode>,
    /// Twilio Auth Token(s), comma-separated: current first, previous during rotation.
    #[arg(
        id = "twilio-auth-token",
        long = "twilio-auth-token",
        env = "TWILIO_AUTH_TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<SecretString>,
}

impl crate::providers::api::ModeSetting for Settings {
    fn mode_mut(&mut self) -> Option<&mut Option<SignatureMode>> {
        Some(&mut self.mode)
    }
}

/// Twilio's configuration: the tokens (`None`: off, or per account in the
/// accounts file's `[twilio]`); `PUBLIC_BASE_URL` is required when checked,
/// because Twilio signs the URL it called.
pub(crate) fn configure(
    settings: &ProviderSettings,
    common: &Common,
) -> Result<Configured<Option<SecretList>>, ConfigError> {
    let own = &settings.twilio;
    let check = check_accounts(
        own.mode,
        exposed(&own.auth_token),
        common.accounts.has("twilio"),
        "TWILIO_AUTH_TOKEN",
        SecretList::parse,
    )?;
    require_public_url(check.checks(), common, "Twilio", "TWILIO_AUTH_TOKEN", "TWILIO_SIGNATURE_MODE")?;
    Ok(Configured { mode: check.mode, credentials: check.secrets })
}
