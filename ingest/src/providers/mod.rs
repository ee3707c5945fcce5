//! The provider APIs: one folder each, one trait, one registry.
//!
//! Each folder (`vonage_sms/`, `twilio/`, ...) holds a provider's wire
//! format and parsing (`wire.rs`), its authenticity check (`signature.rs`),
//! its settings (`settings.rs`), its sample requests (`samples/`), and in
//! its `mod.rs` the [`ProviderApi`] implementation that ties them together.
//! [`REGISTRY`] lists them; everything generic is driven by that list
//! ([`api`] says what). Parsers turn a decoded request into a [`Batch`] of
//! [`ReceiptEvent`]s (a single receipt is a batch of one) or a
//! [`ReceiptError`] that names every bad field, so the HTTP layer can answer
//! 400 with a useful body and nothing half-parsed ever reaches the broker.
//!
//! [`ReceiptEvent`]: dlr_shared::event::ReceiptEvent

pub mod api;
mod fields;
mod json;
#[macro_use]
pub mod registry;
pub mod settings;
mod shapes;

// The registry: one line per provider API (its folder => its type).
registry! {
    vonage_sms => VonageSms,
    vonage_messages => VonageMessages,
    twilio => Twilio,
    telnyx => Telnyx,
    plivo => Plivo,
    sinch => Sinch,
    infobip => Infobip,
}

pub use api::{Answer, Common, Configured, ProviderApi, Route, Sample, SettingNames, StatusWord, Verb};
pub use fields::{
    Fields, MAX_STATUS_BYTES, MAX_VALUE_BYTES, decode_json_object, decode_urlencoded, fields_from_json_object,
};
pub use json::{Batch, ElementProblem, MAX_BATCH_ELEMENTS};
pub use registry::{Listed, Served, log_serving, serve_all};

use serde::Serialize;

/// One problem with one field of a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    /// The field's wire name (`messageId`, `err-code`, ...).
    pub field: String,
    /// What is wrong with it, in words a provider's support engineer understands.
    pub problem: String,
}

impl FieldProblem {
    /// Builds a problem for `field`.
    pub fn new(field: &str, problem: impl Into<String>) -> Self {
        Self { field: field.to_owned(), problem: problem.into() }
    }
}

/// Why a request is not an acceptable receipt. Every variant is a client
/// error: retrying the same bytes will not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The body or query could not be decoded at all.
    #[error("malformed {format}: {detail}")]
    Malformed {
        /// `json`, `form` or `query`.
        format: &'static str,
        /// Decoder's description of the problem.
        detail: String,
    },
    /// Decoded, but required fields are missing or malformed.
    #[error("invalid receipt: {}", describe(.0))]
    InvalidFields(Vec<FieldProblem>),
    /// A well-formed payload that is something else (e.g. an inbound SMS).
    #[error("not a delivery receipt: {0}")]
    NotAReceipt(&'static str),
}

fn describe(problems: &[FieldProblem]) -> String {
    problems.iter().map(|p| format!("{} {}", p.field, p.problem)).collect::<Vec<_>>().join("; ")
}

impl ReceiptError {
    /// Low-cardinality label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ReceiptError::Malformed { .. } => "malformed_body",
            ReceiptError::InvalidFields(_) => "invalid_fields",
            ReceiptError::NotAReceipt(_) => "not_a_receipt",
        }
    }

    /// The per-field problems, empty for the other variants.
    pub fn problems(&self) -> &[FieldProblem] {
        match self {
            ReceiptError::InvalidFields(p) => p,
            _ => &[],
        }
    }
}
