//! Telnyx's settings: the account's Ed25519 public key(s).

use clap::Args;

use super::signature::PublicKeys;
use crate::config::ConfigError;
use crate::providers::settings::check;
use crate::providers::{Configured, ProviderSettings};
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

/// Telnyx's configuration: the keys (`None` when off).
pub(crate) fn configure(settings: &ProviderSettings) -> Result<Configured<Option<PublicKeys>>, ConfigError> {
    let own = &settings.telnyx;
    let check = check(own.mode, own.public_key.as_deref(), "TELNYX_PUBLIC_KEY", PublicKeys::parse)?;
    Ok(Configured { mode: check.mode, credentials: check.secrets })
}
