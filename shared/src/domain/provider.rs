//! Which provider API a receipt came from.

use serde::{Deserialize, Serialize};
use strum::VariantArray;

/// The provider API, not just the company: Vonage's SMS API and Messages API
/// send different formats with different signatures.
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
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Provider {
    /// Vonage (Nexmo) SMS API delivery receipts.
    VonageSms,
    /// Vonage Messages API status webhooks.
    VonageMessages,
    /// Twilio Programmable Messaging status callbacks.
    Twilio,
    /// Telnyx messaging webhooks v2 (`message.sent`, `message.finalized`).
    Telnyx,
    /// Plivo message status callbacks.
    Plivo,
    /// Sinch SMS REST API delivery reports.
    Sinch,
    /// Infobip SMS delivery reports (`{"results":[...]}` batches).
    Infobip,
}

impl Provider {
    /// Every provider, for pre-creating metric series.
    pub const ALL: &[Provider] = Self::VARIANTS;

    /// Stable lower-case name used in metrics labels, headers and routing keys.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_the_wire_name() {
        for provider in Provider::ALL {
            let json = serde_json::to_string(provider).expect("serialises");
            assert_eq!(json, format!("\"{}\"", provider.as_str()));
            assert_eq!(provider.to_string(), provider.as_str());
        }
        assert_eq!(Provider::VonageSms.as_str(), "vonage-sms");
        assert_eq!(Provider::VonageMessages.as_str(), "vonage-messages");
    }
}
