//! Sinch's settings: the callback secret(s) for the HMAC signature, and
//! Basic credentials, which Sinch offers for SMS callbacks.

use clap::Args;
use secrecy::SecretString;

use crate::config::ConfigError;
use crate::providers::settings::{basic_list, checks, exposed, resolve};
use crate::providers::{Common, Configured, ProviderSettings};
use crate::signature::{SecretList, SignatureMode};

/// `SINCH_*` flags and variables.
#[derive(Debug, Clone, Default, Args)]
#[group(skip)]
pub struct Settings {
    /// Sinch check (x-sinch-webhook-signature or HTTP Basic): off, log-only or enforce (default: enforce when a secret or Basic credentials are set, not served otherwise).
    #[arg(id = "sinch-signature-mode", long = "sinch-signature-mode", env = "SINCH_SIGNATURE_MODE")]
    pub mode: Option<SignatureMode>,
    /// Sinch webhook secret(s), comma-separated: current first.
    #[arg(
        id = "sinch-webhook-secret",
        long = "sinch-webhook-secret",
        env = "SINCH_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<SecretString>,
    /// Sinch callback URL Basic credentials `user:password`, one per line (any other character allowed).
    #[arg(
        id = "sinch-basic-auth",
        long = "sinch-basic-auth",
        env = "SINCH_BASIC_AUTH",
        hide_env_values = true
    )]
    pub basic_auth: Option<SecretString>,
}

impl crate::providers::api::ModeSetting for Settings {
    fn mode_mut(&mut self) -> Option<&mut Option<SignatureMode>> {
        Some(&mut self.mode)
    }
}

/// What a Sinch callback may be verified with: the HMAC secret(s), Basic
/// credentials, or both (a request is checked by the scheme it carries).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// `x-sinch-webhook-signature` secrets.
    pub hmac: Option<SecretList>,
    /// `user:password` pairs for `Authorization: Basic`.
    pub basic: Option<SecretList>,
}

/// Sinch's configuration: either credential may be absent as long as one is
/// there, or the accounts file has a `[sinch]` table (then `/dlr/sinch`
/// without an account has no credentials and refuses every request).
pub(crate) fn configure(
    settings: &ProviderSettings,
    common: &Common,
) -> Result<Configured<Credentials>, ConfigError> {
    let own = &settings.sinch;
    let present = |s: &Option<SecretString>| exposed(s).map(str::trim).filter(|s| !s.is_empty()).is_some();
    let any = present(&own.webhook_secret) || present(&own.basic_auth);
    let mode = resolve(own.mode, any || common.accounts.has("sinch"));
    if checks(mode) && !any && !common.accounts.has("sinch") {
        return Err(ConfigError::Invalid {
            variable: "SINCH_WEBHOOK_SECRET",
            problem: "(or SINCH_BASIC_AUTH) is required when SINCH_SIGNATURE_MODE is log-only or enforce"
                .to_owned(),
        });
    }
    let parse = |raw: Option<&str>,
                 variable: &'static str,
                 parse: fn(&str) -> Result<SecretList, crate::signature::ConfigError>| {
        raw.map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|raw| parse(raw).map_err(|e| ConfigError::Invalid { variable, problem: e.to_string() }))
            .transpose()
    };
    let credentials = Credentials {
        hmac: parse(exposed(&own.webhook_secret), "SINCH_WEBHOOK_SECRET", SecretList::parse)?,
        basic: parse(exposed(&own.basic_auth), "SINCH_BASIC_AUTH", basic_list)?,
    };
    Ok(Configured { mode, credentials: if checks(mode) { credentials } else { Credentials::default() } })
}
