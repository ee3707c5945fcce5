//! The Messages API has no settings of its own: the account's signature
//! secret signs its JWTs as it signs the SMS API's `sig`, so it is
//! configured by `VONAGE_*` ([`crate::providers::vonage_sms::settings`]).

use clap::Args;

use crate::providers::api::ModeSetting;
use crate::signature::SignatureMode;

/// No flags: see [`crate::providers::vonage_sms::Settings`].
#[derive(Debug, Clone, Default, Args)]
#[group(skip)]
pub struct Settings {}

impl ModeSetting for Settings {
    fn mode_mut(&mut self) -> Option<&mut Option<SignatureMode>> {
        None
    }
}
