//! What the JSON-bodied providers (Telnyx, Sinch, Infobip) share: reading
//! loosely typed members and the shape of a request that carries several
//! receipts.
//!
//! Providers document strings but send numbers now and then (Telnyx `cost.amount`,
//! Infobip `error.id`); a number carries no ambiguity, so readers take both
//! rather than refuse a receipt over format drift.

use serde_json::{Map, Value};

use super::ReceiptError;
use dlr_shared::domain::Msisdn;
use dlr_shared::event::ReceiptEvent;

/// Most reports one request may carry. Infobip sends up to 100 per request
/// by default (its `maxBucketSize`); ten times that leaves room for a raised
/// bucket size while bounding the work one request can cause.
pub const MAX_BATCH_ELEMENTS: usize = 1000;

/// The receipts of one request that may carry several (Infobip `results`,
/// a Sinch `full` report, a Telnyx message to several recipients).
#[derive(Debug, Default)]
pub struct Batch {
    /// Valid receipts, in request order.
    pub events: Vec<ReceiptEvent>,
    /// Elements that are not valid receipts: quarantined, never a reason to
    /// lose their valid siblings.
    pub rejected: Vec<ElementProblem>,
    /// Reports that carry no receipt at all (Sinch `summary`): answered 200
    /// and counted, nothing to publish.
    pub ignored: usize,
}

impl Batch {
    /// A batch of one receipt.
    pub fn one(event: ReceiptEvent) -> Self {
        Self { events: vec![event], ..Self::default() }
    }
}

/// Why one element of a batch is not a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementProblem {
    /// Where the element is (`results[3]`, `statuses[0].recipients[2]`).
    pub location: String,
    /// What is wrong with it.
    pub error: ReceiptError,
}

impl std::fmt::Display for ElementProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.error)
    }
}

/// Parses a body that must be one JSON object.
pub(crate) fn object(body: &[u8]) -> Result<Map<String, Value>, ReceiptError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ReceiptError::Malformed { format: "json", detail: "expected a JSON object".to_owned() }),
        Err(e) => Err(ReceiptError::Malformed { format: "json", detail: e.to_string() }),
    }
}

/// A scalar member as text: strings (trimmed, blank means absent), numbers
/// and booleans as their JSON text; `null` and nested values are not text.
pub(crate) fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_owned),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// A scalar member of a nested object (`cost.amount`, `status.name`, ...).
pub(crate) fn member_text(value: Option<&Value>, name: &str) -> Option<String> {
    match value? {
        Value::Object(object) => text(object.get(name)),
        _ => None,
    }
}

/// A phone number normalised like every other provider's (E.164 digits,
/// no `+`) so the same handset has one spelling; anything else (alphanumeric
/// sender ids, short codes) is kept as given.
pub(crate) fn address(raw: String) -> String {
    Msisdn::parse(&raw).map(String::from).unwrap_or(raw)
}
