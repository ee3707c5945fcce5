//! Vonage's settings: one account's signature secret signs both the SMS
//! API's `sig` and the Messages API's JWT, so both routes share them.

use clap::Args;
use secrecy::SecretString;

use super::signature::SigMethod;
use crate::config::ConfigError;
use crate::providers::settings::{check_accounts, exposed};
use crate::providers::{Common, Configured, ProviderSettings};
use crate::signature::{SecretList, SignatureMode};

/// `VONAGE_*` flags and variables.
#[derive(Debug, Clone, Default, Args)]
#[group(skip)]
pub struct Settings {
    /// Vonage (SMS `sig` and Messages JWT) check: off, log-only or enforce
    /// (default: enforce when a secret is set, route not served otherwise).
    #[arg(id = "vonage-signature-mode", long = "vonage-signature-mode", env = "VONAGE_SIGNATURE_MODE")]
    pub mode: Option<SignatureMode>,
    /// Vonage SMS signature method configured in the dashboard: md5hash, md5, sha1, sha256, sha512.
    #[arg(
        id = "vonage-signature-method",
        long = "vonage-signature-method",
        env = "VONAGE_SIGNATURE_METHOD",
        default_value = "md5hash"
    )]
    pub method: SigMethod,
    /// Vonage signature secret(s), comma-separated: current first, previous during rotation.
    #[arg(
        id = "vonage-signature-secret",
        long = "vonage-signature-secret",
        env = "VONAGE_SIGNATURE_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<SecretString>,
}

impl crate::providers::api::ModeSetting for Settings {
    fn mode_mut(&mut self) -> Option<&mut Option<SignatureMode>> {
        Some(&mut self.mode)
    }
}

/// What Vonage requests are verified with.
#[derive(Debug)]
pub struct Credentials {
    /// The SMS API's `sig` method.
    pub method: SigMethod,
    /// The signature secrets (`None`: off, or per account in the accounts file).
    pub secrets: Option<SecretList>,
}

/// Both Vonage APIs' configuration, from `VONAGE_*` and the accounts file's `[vonage]`.
pub(crate) fn configure(
    settings: &ProviderSettings,
    common: &Common,
) -> Result<Configured<Credentials>, ConfigError> {
    let own = &settings.vonage_sms;
    let check = check_accounts(
        own.mode,
        exposed(&own.secret),
        common.accounts.has("vonage"),
        "VONAGE_SIGNATURE_SECRET",
        SecretList::parse,
    )?;
    Ok(Configured {
        mode: check.mode,
        credentials: Credentials { method: own.method, secrets: check.secrets },
    })
}
