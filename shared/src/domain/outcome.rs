//! The provider-independent outcome of a receipt.

use serde::{Deserialize, Serialize};
use std::str::FromStr;
use strum::VariantArray;

/// What a receipt means for the business, whatever the provider's words.
///
/// Three values only, because that is what routing needs; the provider's own
/// status word travels beside it in the event for anyone who needs detail.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::IntoStaticStr,
    VariantArray,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Outcome {
    /// Reached the handset (or was read).
    Delivered,
    /// Will not be delivered: expired, rejected, failed, undeliverable, ...
    Failed,
    /// Still on its way (accepted, buffered, submitted, sent), or a status
    /// word we do not recognise yet.
    Pending,
}

impl Outcome {
    /// Every outcome, for configuration and pre-created metric series.
    pub const ALL: &[Outcome] = Self::VARIANTS;

    /// Lower-case name used in metrics, headers and routing keys.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::words::parse(s).ok_or_else(|| {
            format!("unknown outcome {s:?} (expected one of {})", crate::words::list::<Self>())
        })
    }
}
