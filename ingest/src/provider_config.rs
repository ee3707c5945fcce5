//! Settings of the Telnyx, Plivo, Sinch and Infobip routes.
//!
//! Kept apart from `config.rs` so that these four providers' settings are
//! one flattened block there. Every mode defaults to `enforce` when its
//! secret (or key) is set and to `off` when it is not: configuring a secret
//! and then accepting forgeries by default would be a trap. `enforce` or
//! `log-only` without a secret is a start-up error, as for the others.

use crate::signature::telnyx::PublicKeys;
use crate::signature::{SecretList, SignatureMode, basic};
use clap::Args;
use secrecy::SecretString;
use url::Url;

use crate::config::{ConfigError, exposed};

/// The four providers' flags and variables.
#[derive(Debug, Clone, Default, Args)]
pub struct ProviderSettings {
    /// Telnyx Ed25519 check: off, log-only or enforce (default: enforce when a key is set).
    #[arg(long = "telnyx-signature-mode", env = "TELNYX_SIGNATURE_MODE")]
    pub telnyx_mode: Option<SignatureMode>,
    /// Telnyx public key(s), base64, comma-separated: current first, previous during rotation.
    #[arg(long = "telnyx-public-key", env = "TELNYX_PUBLIC_KEY")]
    pub telnyx_public_key: Option<String>,
    /// Plivo X-Plivo-Signature-V3/-V2 check: off, log-only or enforce (default: enforce when a token is set).
    #[arg(long = "plivo-signature-mode", env = "PLIVO_SIGNATURE_MODE")]
    pub plivo_mode: Option<SignatureMode>,
    /// Plivo Auth Token(s), comma-separated (sub-account and main account, rotation).
    #[arg(long = "plivo-auth-token", env = "PLIVO_AUTH_TOKEN", hide_env_values = true)]
    pub plivo_auth_token: Option<SecretString>,
    /// Sinch x-sinch-webhook-signature check: off, log-only or enforce (default: enforce when a secret is set).
    #[arg(long = "sinch-signature-mode", env = "SINCH_SIGNATURE_MODE")]
    pub sinch_mode: Option<SignatureMode>,
    /// Sinch webhook secret(s), comma-separated: current first.
    #[arg(long = "sinch-webhook-secret", env = "SINCH_WEBHOOK_SECRET", hide_env_values = true)]
    pub sinch_webhook_secret: Option<SecretString>,
    /// Infobip HTTP Basic check: off, log-only or enforce (default: enforce when credentials are set).
    #[arg(long = "infobip-auth-mode", env = "INFOBIP_AUTH_MODE")]
    pub infobip_mode: Option<SignatureMode>,
    /// Infobip report URL credentials `user:password`, comma-separated.
    #[arg(long = "infobip-basic-auth", env = "INFOBIP_BASIC_AUTH", hide_env_values = true)]
    pub infobip_basic_auth: Option<SecretString>,
}

/// The validated policy: a secret wherever a check is on.
#[derive(Clone, Debug, Default)]
pub struct ProviderPolicy {
    /// Telnyx mode and keys.
    pub telnyx: Check<PublicKeys>,
    /// Plivo mode and tokens.
    pub plivo: Check<SecretList>,
    /// Sinch mode and secrets.
    pub sinch: Check<SecretList>,
    /// Infobip mode and `user:password` pairs.
    pub infobip: Check<SecretList>,
}

/// One provider's check: a mode and, unless it is off, what to verify with.
#[derive(Clone, Debug)]
pub struct Check<T> {
    /// How strictly to check.
    pub mode: SignatureMode,
    /// Keys or secrets; `None` only when the mode is off.
    pub secrets: Option<T>,
}

impl<T> Default for Check<T> {
    fn default() -> Self {
        Self { mode: SignatureMode::Off, secrets: None }
    }
}

impl ProviderSettings {
    /// Checks the rules clap cannot express; `public_base_url` is needed for
    /// Plivo, which signs the URL it called.
    pub fn validate(&self, public_base_url: Option<&Url>) -> Result<ProviderPolicy, ConfigError> {
        let plivo =
            check(self.plivo_mode, exposed(&self.plivo_auth_token), "PLIVO_AUTH_TOKEN", SecretList::parse)?;
        if plivo.mode != SignatureMode::Off && public_base_url.is_none() {
            return Err(ConfigError::Invalid {
                variable: "PUBLIC_BASE_URL",
                problem: "is required when PLIVO_SIGNATURE_MODE is not off: Plivo signs the URL it called"
                    .to_owned(),
            });
        }
        let infobip =
            check(self.infobip_mode, exposed(&self.infobip_basic_auth), "INFOBIP_BASIC_AUTH", |s| {
                let list = SecretList::parse(s)?;
                basic::validate_credentials(&list)?;
                Ok(list)
            })?;
        Ok(ProviderPolicy {
            telnyx: check(
                self.telnyx_mode,
                self.telnyx_public_key.as_deref(),
                "TELNYX_PUBLIC_KEY",
                PublicKeys::parse,
            )?,
            plivo,
            sinch: check(
                self.sinch_mode,
                exposed(&self.sinch_webhook_secret),
                "SINCH_WEBHOOK_SECRET",
                SecretList::parse,
            )?,
            infobip,
        })
    }
}

fn check<T>(
    mode: Option<SignatureMode>,
    raw: Option<&str>,
    variable: &'static str,
    parse: impl FnOnce(&str) -> Result<T, crate::signature::ConfigError>,
) -> Result<Check<T>, ConfigError> {
    let raw = raw.map(str::trim).filter(|s| !s.is_empty());
    let mode = mode.unwrap_or(if raw.is_some() { SignatureMode::Enforce } else { SignatureMode::Off });
    match (mode, raw) {
        (SignatureMode::Off, _) => Ok(Check { mode, secrets: None }),
        (_, None) => {
            Err(ConfigError::Invalid { variable, problem: format!("is required when the mode is {mode}") })
        }
        (_, Some(raw)) => parse(raw)
            .map(|secrets| Check { mode, secrets: Some(secrets) })
            .map_err(|e| ConfigError::Invalid { variable, problem: e.to_string() }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    #[test]
    fn modes_default_to_enforce_with_a_secret_and_off_without() {
        let policy = ProviderSettings::default().validate(None).unwrap();
        assert_eq!(policy.telnyx.mode, SignatureMode::Off);
        let settings = ProviderSettings {
            telnyx_public_key: Some(KEY.into()),
            sinch_webhook_secret: Some("s".into()),
            infobip_basic_auth: Some("u:p".into()),
            ..ProviderSettings::default()
        };
        let policy = settings.validate(None).unwrap();
        assert_eq!(
            [policy.telnyx.mode, policy.sinch.mode, policy.infobip.mode, policy.plivo.mode],
            [SignatureMode::Enforce, SignatureMode::Enforce, SignatureMode::Enforce, SignatureMode::Off]
        );
    }

    #[test]
    fn enforce_without_a_secret_and_bad_values_fail_at_start_up() {
        let err = |s: ProviderSettings| s.validate(None).unwrap_err().to_string();
        let telnyx =
            ProviderSettings { telnyx_mode: Some(SignatureMode::Enforce), ..ProviderSettings::default() };
        assert!(err(telnyx).starts_with("TELNYX_PUBLIC_KEY"));
        let bad_key =
            ProviderSettings { telnyx_public_key: Some("abc".into()), ..ProviderSettings::default() };
        assert!(err(bad_key).contains("Ed25519"));
        let plivo = ProviderSettings { plivo_auth_token: Some("t".into()), ..ProviderSettings::default() };
        assert!(err(plivo.clone()).starts_with("PUBLIC_BASE_URL"));
        assert!(plivo.validate(Some(&Url::parse("https://dlr.example.com").unwrap())).is_ok());
        let infobip =
            ProviderSettings { infobip_basic_auth: Some("nocolon".into()), ..ProviderSettings::default() };
        assert!(err(infobip).contains("user:password"));
        let log_only =
            ProviderSettings { sinch_mode: Some(SignatureMode::LogOnly), ..ProviderSettings::default() };
        assert!(err(log_only).starts_with("SINCH_WEBHOOK_SECRET"));
    }
}
