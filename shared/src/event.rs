//! The canonical receipt event: the one format every provider's receipt becomes.
//!
//! `ingest` publishes exactly this JSON (schema in `shared/schema/receipt-event.v1.json`)
//! and the worker's handlers consume only this, so a new provider is a new
//! parser and nothing else. Bump [`SCHEMA_VERSION`] on any incompatible change.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::{EventId, MessageId, Outcome, Provider};

/// Version of the event schema written into every event.
pub const SCHEMA_VERSION: u32 = 1;

/// The published JSON Schema of [`ReceiptEvent`] (draft 2020-12), the
/// contract other teams code against. Ingest's tests validate every
/// parser's output against it.
pub const SCHEMA: &str = include_str!("../schema/receipt-event.v1.json");

/// One status change of one sent message, normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptEvent {
    /// Always [`SCHEMA_VERSION`] for events written by this code.
    pub schema_version: u32,
    /// Deterministic id: the same receipt retried by the provider gets the same id.
    pub event_id: EventId,
    /// Which provider API sent the receipt.
    pub provider: Provider,
    /// The provider's id of the sent message (one per SMS part for Vonage SMS).
    pub message_id: MessageId,
    /// Business outcome derived from the provider's status word.
    pub outcome: Outcome,
    /// The provider's status word, exactly as received.
    pub status: String,
    /// False when the status word is not one we know: the receipt is kept
    /// (outcome `pending`) and counted so that someone looks at it.
    pub status_recognised: bool,
    /// Error reported by the provider, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ProviderError>,
    /// The reference the sender attached when sending (`client-ref`, `client_ref`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ref: Option<String>,
    /// The handset the message went to (E.164 digits, or a channel address
    /// such as `whatsapp:+1...` kept as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// The sender id / number the message was sent from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Channel for multi-channel APIs (`sms`, `whatsapp`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Charge reported with this receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// Recipient's network as MCC+MNC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_code: Option<String>,
    /// Provider account that sent the message (Vonage api key, Twilio AccountSid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// When the provider says the status change happened, in UTC, when the
    /// provider states a time zone (Vonage `message-timestamp`, Messages `timestamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_timestamp: Option<DateTime<Utc>>,
    /// Carrier's "done" time (`scts`, `RawDlrDoneDate`, `YYMMDDhhmm`), verbatim:
    /// providers do not state its time zone, so it is informational only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier_timestamp: Option<String>,
    /// How ingest authenticated the webhook, so that consumers can ignore
    /// what was not verified. Absent in events written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticity: Option<Authenticity>,
    /// When ingest received the webhook.
    pub received_at: DateTime<Utc>,
    /// Every field as received, including unknown ones, for audit and re-processing.
    pub raw: Map<String, Value>,
    /// True only on a receipt this service made up, never on one a provider
    /// sent: the worker's never-final sweep publishes one (status
    /// [`NO_FINAL_RECEIPT`], outcome failed) for a message still pending
    /// after its provider's window, so that senders hear about it. Absent
    /// (false) on every genuine receipt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synthetic: bool,
    /// Where the message went: the recipient's country and mobile network,
    /// derived by the worker from `recipient` and `network_code` (absent
    /// when neither says anything, and in events ingest publishes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
}

/// The status word of a synthetic receipt: the provider never sent a final
/// status within its window.
pub const NO_FINAL_RECEIPT: &str = "no_final_receipt";

/// The recipient's country and network, for delivery rates by country and
/// network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// ISO 3166-1 alpha-2 code of the recipient's number by the numbering
    /// plan (`+1` resolved by area code); absent when the number does not
    /// parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The mobile network the provider reported (`network_code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
}

/// A mobile network as ITU-T E.212 identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Mobile country code, three digits.
    pub mcc: String,
    /// Mobile network code, two or three digits.
    pub mnc: String,
    /// ISO 3166-1 alpha-2 code of the MCC; absent for an MCC not assigned
    /// to one country.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// How a receipt's authenticity was established at ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Authenticity {
    /// The provider's signature (or credentials) verified.
    Verified,
    /// Verification failed, and the provider's mode is `log-only`.
    FailedLogOnly,
    /// Not checked: the provider's mode is `off`.
    NotChecked,
}

impl Authenticity {
    /// The wire word (`verified`, `failed_log_only`, `not_checked`).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A provider error code with what we know about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderError {
    /// The provider's code, as text (`"3"`, `"1330"`, `"30003"`).
    pub code: String,
    /// Human description from the provider's documentation, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// True when resending later may succeed (absent subscriber, busy, network error).
    pub retryable: bool,
}

/// A charge as a decimal string: floats would lose the provider's precision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Decimal amount, e.g. `"0.03330000"`.
    pub amount: String,
    /// ISO 4217 code when the provider states it (Vonage SMS does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

impl ReceiptEvent {
    /// Serialises the event as published on the broker.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising this struct cannot fail: every field is a plain value
        // and every map key is a string.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses an event taken from the broker.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
