//! Plivo's settings: the Auth Token(s) and whether the weaker V2 signature
//! is accepted.

use clap::Args;
use secrecy::SecretString;
use std::sync::Arc;

use crate::config::ConfigError;
use crate::providers::settings::{check_accounts, exposed, require_public_url};
use crate::providers::{Common, Configured, ProviderSettings};
use crate::signature::nonces::NonceCache;
use crate::signature::{SecretList, SignatureMode};

/// Plivo V2 nonces remembered at most (about 10 MB).
const V2_NONCES: usize = 100_000;

/// `PLIVO_*` flags and variables.
#[derive(Debug, Clone, Default, Args)]
#[group(skip)]
pub struct Settings {
    /// Plivo X-Plivo-Signature-V3 check: off, log-only or enforce (default: enforce when a token is set, not served otherwise).
    #[arg(id = "plivo-signature-mode", long = "plivo-signature-mode", env = "PLIVO_SIGNATURE_MODE")]
    pub mode: Option<SignatureMode>,
    /// Plivo Auth Token(s), comma-separated (sub-account and main account, rotation).
    #[arg(
        id = "plivo-auth-token",
        long = "plivo-auth-token",
        env = "PLIVO_AUTH_TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<SecretString>,
    /// Also accept the older, weaker X-Plivo-Signature-V2 (it signs the URL
    /// without the parameters). Off by default: only V3 verifies.
    #[arg(
        id = "plivo-accept-v2",
        long = "plivo-accept-v2",
        env = "PLIVO_ACCEPT_V2",
        default_value_t = false
    )]
    pub accept_v2: bool,
}

impl crate::providers::api::ModeSetting for Settings {
    fn mode_mut(&mut self) -> Option<&mut Option<SignatureMode>> {
        Some(&mut self.mode)
    }
}

/// What Plivo callbacks are verified with.
#[derive(Debug)]
pub struct Credentials {
    /// The tokens (`None`: off, or per account in the accounts file's `[plivo]`).
    pub tokens: Option<SecretList>,
    /// Whether V2 signatures are accepted too (explicit, weaker).
    pub accept_v2: bool,
    /// V2 nonces seen within the freshness window: each verifies once.
    pub v2_nonces: Arc<NonceCache>,
}

/// Plivo's configuration; `PUBLIC_BASE_URL` is required when checked,
/// because Plivo signs the URL it called.
pub(crate) fn configure(
    settings: &ProviderSettings,
    common: &Common,
) -> Result<Configured<Credentials>, ConfigError> {
    let own = &settings.plivo;
    let check = check_accounts(
        own.mode,
        exposed(&own.auth_token),
        common.accounts.has("plivo"),
        "PLIVO_AUTH_TOKEN",
        SecretList::parse,
    )?;
    require_public_url(check.checks(), common, "Plivo", "PLIVO_AUTH_TOKEN", "PLIVO_SIGNATURE_MODE")?;
    Ok(Configured {
        mode: check.mode,
        credentials: Credentials {
            tokens: check.secrets,
            accept_v2: own.accept_v2,
            v2_nonces: Arc::new(NonceCache::new(common.freshness.max_age, V2_NONCES)),
        },
    })
}
