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
    /// Telnyx messaging webhooks v2 (`message.sent`, `message.finalized`).
    #[serde(rename = "telnyx")]
    Telnyx,
    /// Plivo message status callbacks.
    #[serde(rename = "plivo")]
    Plivo,
    /// Sinch SMS REST API delivery reports.
    #[serde(rename = "sinch")]
    Sinch,
    /// Infobip SMS delivery reports (`{"results":[...]}` batches).
    #[serde(rename = "infobip")]
    Infobip,
}

impl Provider {
    /// Every provider, for pre-creating metric series.
    pub const ALL: [Provider; 7] = [
        Provider::VonageSms,
        Provider::VonageMessages,
        Provider::Twilio,
        Provider::Telnyx,
        Provider::Plivo,
        Provider::Sinch,
        Provider::Infobip,
    ];

    /// Stable lower-case name used in metrics labels, headers and routing keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::VonageSms => "vonage-sms",
            Provider::VonageMessages => "vonage-messages",
            Provider::Twilio => "twilio",
            Provider::Telnyx => "telnyx",
            Provider::Plivo => "plivo",
            Provider::Sinch => "sinch",
            Provider::Infobip => "infobip",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
