//! Which provider API a receipt came from.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The provider API, not just the company: Vonage's SMS API and Messages API
/// send different formats with different signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Provider {
    /// Vonage (Nexmo) SMS API delivery receipts.
    #[serde(rename = "vonage-sms")]
    VonageSms,
    /// Vonage Messages API status webhooks.
    #[serde(rename = "vonage-messages")]
    VonageMessages,
    /// Twilio Programmable Messaging status callbacks.
    #[serde(rename = "twilio")]
    Twilio,
}

impl Provider {
    /// Every provider, for pre-creating metric series.
    pub const ALL: [Provider; 3] = [Provider::VonageSms, Provider::VonageMessages, Provider::Twilio];

    /// Stable lower-case name used in metrics labels, headers and routing keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::VonageSms => "vonage-sms",
            Provider::VonageMessages => "vonage-messages",
            Provider::Twilio => "twilio",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
