//! The provider registry and the settings of the Telnyx, Plivo, Sinch and
//! Infobip routes.
//!
//! One rule for all seven routes (six settings: Vonage SMS and Messages
//! share one): a provider with credentials is checked in `enforce` mode
//! unless its mode says otherwise; a provider with neither credentials nor
//! an explicit mode is **not served** (its routes answer 404). Accepting
//! unverified receipts therefore always is an operator's explicit `off` or
//! `log-only`. `enforce` or `log-only` without credentials is a start-up
//! error. [`PROVIDERS`] lists every provider once, so that the start-up
//! log, the router and the deploy checks' variable list agree.

use crate::signature::nonces::NonceCache;
use crate::signature::telnyx::PublicKeys;
use crate::signature::{SecretList, SignatureMode, basic};
use clap::Args;
use secrecy::SecretString;
use url::Url;

use crate::config::{ConfigError, SignaturePolicy, exposed};

/// One provider as configured: its name in logs, routes, and the variables
/// that configure it.
#[derive(Debug, Clone, Copy)]
pub struct ProviderEntry {
    /// Name in logs (`vonage` covers the SMS and the Messages API).
    pub name: &'static str,
    /// The routes served when the provider is.
    pub routes: &'static [&'static str],
    /// The variable that sets the mode.
    pub mode_variable: &'static str,
    /// The variables holding credentials (any of them set: enforce by default).
    pub credential_variables: &'static [&'static str],
}

/// Every provider, once. `deploy/checks/manifests.py` keeps the same list
/// of credential variables (a test compares them).
pub const PROVIDERS: [ProviderEntry; 6] = [
    ProviderEntry {
        name: "vonage",
        routes: &["/dlr/vonage", "/dlr/vonage-messages"],
        mode_variable: "VONAGE_SIGNATURE_MODE",
        credential_variables: &["VONAGE_SIGNATURE_SECRET"],
    },
    ProviderEntry {
        name: "twilio",
        routes: &["/dlr/twilio"],
        mode_variable: "TWILIO_SIGNATURE_MODE",
        credential_variables: &["TWILIO_AUTH_TOKEN"],
    },
    ProviderEntry {
        name: "telnyx",
        routes: &["/dlr/telnyx"],
        mode_variable: "TELNYX_SIGNATURE_MODE",
        credential_variables: &["TELNYX_PUBLIC_KEY"],
    },
    ProviderEntry {
        name: "plivo",
        routes: &["/dlr/plivo"],
        mode_variable: "PLIVO_SIGNATURE_MODE",
        credential_variables: &["PLIVO_AUTH_TOKEN"],
    },
    ProviderEntry {
        name: "sinch",
        routes: &["/dlr/sinch"],
        mode_variable: "SINCH_SIGNATURE_MODE",
        credential_variables: &["SINCH_WEBHOOK_SECRET", "SINCH_BASIC_AUTH"],
    },
    ProviderEntry {
        name: "infobip",
        routes: &["/dlr/infobip"],
        mode_variable: "INFOBIP_AUTH_MODE",
        credential_variables: &["INFOBIP_BASIC_AUTH"],
    },
];

impl SignaturePolicy {
    /// The resolved mode of the provider named `name` in [`PROVIDERS`]
    /// (`None`: not served).
    pub fn mode_of(&self, name: &str) -> Option<SignatureMode> {
        match name {
            "vonage" => self.vonage_mode,
            "twilio" => self.twilio_mode,
            "telnyx" => self.providers.telnyx.mode,
            "plivo" => self.providers.plivo.mode,
            "sinch" => self.providers.sinch.mode,
            "infobip" => self.providers.infobip.mode,
            _ => None,
        }
    }

    /// True when `route` belongs to a served provider.
    pub fn serves(&self, route: &str) -> bool {
        PROVIDERS.iter().any(|p| p.routes.contains(&route) && self.mode_of(p.name).is_some())
    }

    /// One start-up line per provider: enforced, log-only, off (a warning)
    /// or not served, so an operator sees at a glance what is accepted.
    pub fn log_serving(&self) {
        for provider in &PROVIDERS {
            let routes = provider.routes.join(" ");
            match self.mode_of(provider.name) {
                Some(SignatureMode::Enforce) => {
                    tracing::info!(provider = provider.name, %routes, "provider served: signatures enforced");
                }
                Some(SignatureMode::LogOnly) => {
                    tracing::warn!(provider = provider.name, %routes, variable = provider.mode_variable, "provider served in log-only mode: receipts that fail verification are accepted");
                }
                Some(SignatureMode::Off) => {
                    tracing::warn!(provider = provider.name, %routes, variable = provider.mode_variable, "provider served with signature checks OFF: anyone can post receipts");
                }
                None => tracing::info!(
                    provider = provider.name,
                    %routes,
                    variables = provider.credential_variables.join(" "),
                    "provider not served (404): no credentials and no explicit mode"
                ),
            }
        }
    }
}

/// The four providers' flags and variables.
#[derive(Debug, Clone, Default, Args)]
pub struct ProviderSettings {
    /// Telnyx Ed25519 check: off, log-only or enforce (default: enforce when a key is set, not served otherwise).
    #[arg(long = "telnyx-signature-mode", env = "TELNYX_SIGNATURE_MODE")]
    pub telnyx_mode: Option<SignatureMode>,
    /// Telnyx public key(s), base64, comma-separated: current first, previous during rotation.
    #[arg(long = "telnyx-public-key", env = "TELNYX_PUBLIC_KEY")]
    pub telnyx_public_key: Option<String>,
    /// Plivo X-Plivo-Signature-V3 check: off, log-only or enforce (default: enforce when a token is set, not served otherwise).
    #[arg(long = "plivo-signature-mode", env = "PLIVO_SIGNATURE_MODE")]
    pub plivo_mode: Option<SignatureMode>,
    /// Plivo Auth Token(s), comma-separated (sub-account and main account, rotation).
    #[arg(long = "plivo-auth-token", env = "PLIVO_AUTH_TOKEN", hide_env_values = true)]
    pub plivo_auth_token: Option<SecretString>,
    /// Also accept the older, weaker X-Plivo-Signature-V2 (it signs the URL
    /// without the parameters). Off by default: only V3 verifies.
    #[arg(long = "plivo-accept-v2", env = "PLIVO_ACCEPT_V2", default_value_t = false)]
    pub plivo_accept_v2: bool,
    /// Sinch check (x-sinch-webhook-signature or HTTP Basic): off, log-only or enforce (default: enforce when a secret or Basic credentials are set, not served otherwise).
    #[arg(long = "sinch-signature-mode", env = "SINCH_SIGNATURE_MODE")]
    pub sinch_mode: Option<SignatureMode>,
    /// Sinch webhook secret(s), comma-separated: current first.
    #[arg(long = "sinch-webhook-secret", env = "SINCH_WEBHOOK_SECRET", hide_env_values = true)]
    pub sinch_webhook_secret: Option<SecretString>,
    /// Sinch callback URL Basic credentials `user:password`, one per line (any other character allowed).
    #[arg(long = "sinch-basic-auth", env = "SINCH_BASIC_AUTH", hide_env_values = true)]
    pub sinch_basic_auth: Option<SecretString>,
    /// Infobip HTTP Basic check: off, log-only or enforce (default: enforce when credentials are set, not served otherwise).
    #[arg(long = "infobip-auth-mode", env = "INFOBIP_AUTH_MODE")]
    pub infobip_mode: Option<SignatureMode>,
    /// Infobip report URL credentials `user:password`, one per line (any other character allowed): current first.
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
    /// Whether Plivo's V2 signature is accepted too (explicit, weaker).
    pub plivo_accept_v2: bool,
    /// V2 nonces seen within the freshness window: each verifies once.
    pub plivo_v2_nonces: std::sync::Arc<NonceCache>,
    /// Sinch mode and credentials.
    pub sinch: Check<SinchCredentials>,
    /// Infobip mode and `user:password` pairs.
    pub infobip: Check<SecretList>,
}

/// What a Sinch callback may be verified with: the HMAC secret(s), Basic
/// credentials, or both (a request is checked by the scheme it carries).
#[derive(Clone, Debug, Default)]
pub struct SinchCredentials {
    /// `x-sinch-webhook-signature` secrets.
    pub hmac: Option<SecretList>,
    /// `user:password` pairs for `Authorization: Basic`.
    pub basic: Option<SecretList>,
}

/// One provider's check: a mode (`None`: not served) and, unless it is off,
/// what to verify with.
#[derive(Clone, Debug)]
pub struct Check<T> {
    /// How strictly to check; `None` when the provider is not served.
    pub mode: Option<SignatureMode>,
    /// Keys or secrets; `None` only when the mode is off or the provider not served.
    pub secrets: Option<T>,
}

impl<T> Check<T> {
    /// True when requests are verified (log-only or enforce).
    pub fn checks(&self) -> bool {
        matches!(self.mode, Some(SignatureMode::LogOnly | SignatureMode::Enforce))
    }
}

impl Default for NonceCache {
    fn default() -> Self {
        NonceCache::new(std::time::Duration::from_secs(259_200), V2_NONCES)
    }
}

/// Plivo V2 nonces remembered at most (about 10 MB).
const V2_NONCES: usize = 100_000;

impl<T> Default for Check<T> {
    fn default() -> Self {
        Self { mode: None, secrets: None }
    }
}

impl ProviderSettings {
    /// Checks the rules clap cannot express; `public_base_url` is needed for
    /// Plivo, which signs the URL it called.
    pub fn validate(&self, public_base_url: Option<&Url>) -> Result<ProviderPolicy, ConfigError> {
        self.validate_with(public_base_url, std::time::Duration::from_secs(259_200))
    }

    /// [`ProviderSettings::validate`] with the freshness window (`SIGNATURE_MAX_AGE_SECONDS`),
    /// for how long a Plivo V2 nonce is remembered.
    pub fn validate_with(
        &self,
        public_base_url: Option<&Url>,
        max_age: std::time::Duration,
    ) -> Result<ProviderPolicy, ConfigError> {
        self.validate_accounts(public_base_url, max_age, &crate::accounts::Accounts::default())
    }

    /// [`ProviderSettings::validate_with`] where `accounts` (the accounts
    /// file) may hold Plivo's credentials instead of `PLIVO_AUTH_TOKEN`.
    pub fn validate_accounts(
        &self,
        public_base_url: Option<&Url>,
        max_age: std::time::Duration,
        accounts: &crate::accounts::Accounts,
    ) -> Result<ProviderPolicy, ConfigError> {
        let plivo = check_accounts(
            self.plivo_mode,
            exposed(&self.plivo_auth_token),
            accounts.has("plivo"),
            "PLIVO_AUTH_TOKEN",
            SecretList::parse,
        )?;
        if plivo.checks() && public_base_url.is_none() {
            return Err(ConfigError::Invalid {
                variable: "PUBLIC_BASE_URL",
                problem: "is required when PLIVO_AUTH_TOKEN is set (or PLIVO_SIGNATURE_MODE is log-only/enforce): Plivo signs the URL it called"
                    .to_owned(),
            });
        }
        let infobip =
            check(self.infobip_mode, exposed(&self.infobip_basic_auth), "INFOBIP_BASIC_AUTH", basic_list)?;
        Ok(ProviderPolicy {
            telnyx: check(
                self.telnyx_mode,
                self.telnyx_public_key.as_deref(),
                "TELNYX_PUBLIC_KEY",
                PublicKeys::parse,
            )?,
            plivo,
            plivo_accept_v2: self.plivo_accept_v2,
            plivo_v2_nonces: std::sync::Arc::new(NonceCache::new(max_age, V2_NONCES)),
            sinch: self.sinch()?,
            infobip,
        })
    }

    fn sinch(&self) -> Result<Check<SinchCredentials>, ConfigError> {
        let present =
            |s: &Option<SecretString>| exposed(s).map(str::trim).filter(|s| !s.is_empty()).is_some();
        let any = present(&self.sinch_webhook_secret) || present(&self.sinch_basic_auth);
        // Either credential may be absent as long as one is there.
        let mode = resolve(self.sinch_mode, any);
        if matches!(mode, Some(SignatureMode::LogOnly | SignatureMode::Enforce)) && !any {
            return Err(ConfigError::Invalid {
                variable: "SINCH_WEBHOOK_SECRET",
                problem: "(or SINCH_BASIC_AUTH) is required when SINCH_SIGNATURE_MODE is log-only or enforce"
                    .to_owned(),
            });
        }
        let parse =
            |raw: Option<&str>,
             variable: &'static str,
             parse: fn(&str) -> Result<SecretList, crate::signature::ConfigError>| {
                raw.map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|raw| {
                        parse(raw).map_err(|e| ConfigError::Invalid { variable, problem: e.to_string() })
                    })
                    .transpose()
            };
        let credentials = SinchCredentials {
            hmac: parse(exposed(&self.sinch_webhook_secret), "SINCH_WEBHOOK_SECRET", SecretList::parse)?,
            basic: parse(exposed(&self.sinch_basic_auth), "SINCH_BASIC_AUTH", basic_list)?,
        };
        let checks = matches!(mode, Some(SignatureMode::LogOnly | SignatureMode::Enforce));
        Ok(Check { mode, secrets: checks.then_some(credentials) })
    }
}

/// A list of `user:password` pairs, one per line: a password may contain
/// any character but a line break (which an HTTP header cannot carry).
fn basic_list(raw: &str) -> Result<SecretList, crate::signature::ConfigError> {
    let list = SecretList::parse_lines(raw)?;
    basic::validate_credentials(&list)?;
    Ok(list)
}

/// The mode in force: the explicit one, else `enforce` with credentials,
/// else not served.
pub(crate) fn resolve(mode: Option<SignatureMode>, has_credentials: bool) -> Option<SignatureMode> {
    mode.or(has_credentials.then_some(SignatureMode::Enforce))
}

/// Resolves one provider's mode from its explicit setting and credentials,
/// and parses the credentials when they will be used.
pub(crate) fn check<T>(
    mode: Option<SignatureMode>,
    raw: Option<&str>,
    variable: &'static str,
    parse: impl FnOnce(&str) -> Result<T, crate::signature::ConfigError>,
) -> Result<Check<T>, ConfigError> {
    check_accounts(mode, raw, false, variable, parse)
}

/// [`check`] for a provider whose credentials may also come from the
/// accounts file (`in_accounts_file`): then the variable may be unset.
pub(crate) fn check_accounts<T>(
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    #[test]
    fn modes_default_to_enforce_with_a_secret_and_not_served_without() {
        let policy = ProviderSettings::default().validate(None).unwrap();
        assert_eq!(
            [policy.telnyx.mode, policy.sinch.mode, policy.infobip.mode, policy.plivo.mode],
            [None, None, None, None]
        );
        let settings = ProviderSettings {
            telnyx_public_key: Some(KEY.into()),
            sinch_webhook_secret: Some("s".into()),
            infobip_basic_auth: Some("u:p".into()),
            plivo_mode: Some(SignatureMode::Off),
            ..ProviderSettings::default()
        };
        let policy = settings.validate(None).unwrap();
        assert_eq!(
            [policy.telnyx.mode, policy.sinch.mode, policy.infobip.mode, policy.plivo.mode],
            [
                Some(SignatureMode::Enforce),
                Some(SignatureMode::Enforce),
                Some(SignatureMode::Enforce),
                Some(SignatureMode::Off)
            ]
        );
        let basic_only =
            ProviderSettings { sinch_basic_auth: Some("u:p,w".into()), ..ProviderSettings::default() };
        let sinch = basic_only.validate(None).unwrap().sinch;
        assert_eq!(sinch.mode, Some(SignatureMode::Enforce));
        let credentials = sinch.secrets.unwrap();
        assert!(credentials.hmac.is_none() && credentials.basic.is_some());
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

    /// The registry, `ingest --help` and the deploy checks name the same variables.
    #[test]
    fn every_listed_variable_is_a_setting_and_known_to_the_deploy_checks() {
        use clap::CommandFactory;
        let command = crate::Config::command();
        let settings: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        let manifests = include_str!("../../deploy/checks/manifests.py");
        for provider in &PROVIDERS {
            for variable in std::iter::once(&provider.mode_variable).chain(provider.credential_variables) {
                assert!(settings.iter().any(|s| s == variable), "{variable} is not a setting");
                assert!(
                    manifests.contains(&format!("\"{variable}\"")),
                    "manifests.py does not know {variable}"
                );
            }
        }
    }

    #[test]
    fn infobip_credentials_may_contain_commas() {
        let settings = ProviderSettings {
            infobip_basic_auth: Some("user:pa,ss:word\nold:x\n".into()),
            ..ProviderSettings::default()
        };
        let list = settings.validate(None).unwrap().infobip.secrets.unwrap();
        use secrecy::ExposeSecret;
        let got: Vec<&str> = list.iter().map(|s| s.expose_secret()).collect();
        assert_eq!(got, ["user:pa,ss:word", "old:x"]);
    }
}
