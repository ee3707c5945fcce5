//! Telnyx messaging webhooks v2 (`message.sent`, `message.finalized`).
//!
//! Telnyx POSTs one JSON event per status change: `data.payload` is the
//! message, with a status per recipient in `to[]`. A message to several
//! recipients (group MMS) therefore reports several statuses at once, so
//! this parser returns a [`Batch`] with one receipt per recipient, all
//! sharing the message id `data.payload.id`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::providers::fields::is_decimal;
use crate::providers::json::{self, address, member_text, text};
use crate::providers::{Batch, ElementProblem, FieldProblem, MAX_BATCH_ELEMENTS, ReceiptError};
use dlr_shared::domain::{EventId, MessageId, Outcome, Provider};
use dlr_shared::event::{Price, ProviderError, ReceiptEvent, SCHEMA_VERSION};

/// Telnyx's per-recipient status words (SDK `outbound_message_payload.py`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelnyxStatus {
    /// Accepted, waiting to be sent.
    Queued,
    /// Being handed to the carrier.
    Sending,
    /// Handed to the carrier; a `message.finalized` follows.
    Sent,
    /// The carrier confirmed delivery.
    Delivered,
    /// Telnyx could not send it.
    SendingFailed,
    /// The carrier reported that it was not delivered.
    DeliveryFailed,
    /// Final without a carrier confirmation either way: treated as pending,
    /// like Twilio's `sent` as a last status, because it may well have arrived.
    DeliveryUnconfirmed,
    /// Not delivered within the validity period.
    Expired,
    /// A word Telnyx may add later: kept verbatim, treated as pending.
    Unrecognised(String),
}

impl TelnyxStatus {
    /// Reads a status word, case-insensitively.
    pub fn parse(word: &str) -> Self {
        match word.to_ascii_lowercase().as_str() {
            "queued" => Self::Queued,
            "sending" => Self::Sending,
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "sending_failed" => Self::SendingFailed,
            "delivery_failed" => Self::DeliveryFailed,
            "delivery_unconfirmed" => Self::DeliveryUnconfirmed,
            "expired" => Self::Expired,
            _ => Self::Unrecognised(word.to_owned()),
        }
    }

    /// The business outcome (README status table).
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Delivered => Outcome::Delivered,
            Self::SendingFailed | Self::DeliveryFailed | Self::Expired => Outcome::Failed,
            Self::Queued | Self::Sending | Self::Sent | Self::DeliveryUnconfirmed | Self::Unrecognised(_) => {
                Outcome::Pending
            }
        }
    }
}

/// Messaging error codes whose cause may pass: a resend later can succeed.
/// Telnyx documents 40002 (blocked as spam, temporary) as the temporary
/// twin of 40003 (permanent); codes not listed are treated as permanent.
fn describe_error_code(code: &str) -> (Option<&'static str>, bool) {
    match code {
        "40001" => (Some("Not routable"), false),
        "40002" => (Some("Blocked as spam - temporary"), true),
        "40003" => (Some("Blocked as spam - permanent"), false),
        "40008" => (Some("Undeliverable"), false),
        _ => (None, false),
    }
}

/// Parses a Telnyx webhook body into one receipt per recipient.
///
/// `data.payload.id` and a status per `to[]` element are required; inbound
/// messages (`message.received`) are not receipts. A recipient without a
/// status is an element problem, so its siblings still count.
pub fn parse(body: &[u8], received_at: DateTime<Utc>) -> Result<Batch, ReceiptError> {
    let object = json::object(body)?;
    let Some(Value::Object(data)) = object.get("data") else {
        return Err(ReceiptError::InvalidFields(vec![FieldProblem::new(
            "data",
            "is missing or not an object",
        )]));
    };
    let event_type = text(data.get("event_type"));
    if event_type.as_deref() == Some("message.received") {
        return Err(ReceiptError::NotAReceipt("this is an inbound message (message.received)"));
    }
    let Some(Value::Object(payload)) = data.get("payload") else {
        return Err(ReceiptError::InvalidFields(vec![FieldProblem::new(
            "data.payload",
            "is missing or not an object",
        )]));
    };
    if text(payload.get("direction")).as_deref() == Some("inbound") {
        return Err(ReceiptError::NotAReceipt("this is an inbound message (direction inbound)"));
    }

    let mut problems = Vec::new();
    let message_id = match text(payload.get("id")) {
        Some(id) => {
            MessageId::parse(&id).map_err(|e| problems.push(FieldProblem::new("data.payload.id", e))).ok()
        }
        None => {
            problems.push(FieldProblem::new("data.payload.id", "is missing"));
            None
        }
    };
    let recipients = match payload.get("to") {
        Some(Value::Array(to)) if !to.is_empty() && to.len() <= MAX_BATCH_ELEMENTS => Some(to),
        Some(Value::Array(to)) if to.is_empty() => {
            problems.push(FieldProblem::new("data.payload.to", "must name at least one recipient"));
            None
        }
        Some(Value::Array(_)) => {
            problems.push(FieldProblem::new(
                "data.payload.to",
                format!("has more than {MAX_BATCH_ELEMENTS} recipients"),
            ));
            None
        }
        _ => {
            problems.push(FieldProblem::new("data.payload.to", "is missing or not an array"));
            None
        }
    };
    let error = first_error(payload.get("errors"), &mut problems);
    let (Some(message_id), Some(recipients)) = (message_id, recipients) else {
        return Err(ReceiptError::InvalidFields(problems));
    };
    if !problems.is_empty() {
        return Err(ReceiptError::InvalidFields(problems));
    }

    let common = Common {
        message_id,
        error,
        sender: member_text(payload.get("from"), "phone_number").map(address),
        channel: text(payload.get("type")).map(|t| t.to_ascii_lowercase()),
        price: price(payload.get("cost")),
        // The Telnyx account (organization) the message belongs to: the
        // account that signed it, as [`account`] reads it.
        account: text(payload.get("organization_id")),
        provider_timestamp: text(data.get("occurred_at")).as_deref().and_then(parse_timestamp),
        received_at,
    };
    let mut batch = Batch::default();
    for (index, recipient) in recipients.iter().enumerate() {
        match common.event(recipient, &object) {
            Ok(event) => batch.events.push(event),
            Err(error) => {
                batch.rejected.push(ElementProblem { location: format!("data.payload.to[{index}]"), error })
            }
        }
    }
    Ok(batch)
}

/// The account a webhook names: `data.payload.organization_id`, the Telnyx
/// organization (account) that owns the messaging profile and so the key
/// that signs the webhook (message payload in the API reference,
/// <https://developers.telnyx.com/api-reference/callbacks/delivery-update>).
/// Read as [`parse`] reads it, so the account checked is the event's.
pub fn account(body: &[u8]) -> Option<String> {
    let object = json::object(body).ok()?;
    let payload = object.get("data")?.get("payload")?;
    text(payload.get("organization_id"))
}

/// What every recipient's receipt of one message shares.
struct Common {
    message_id: MessageId,
    error: Option<ProviderError>,
    sender: Option<String>,
    channel: Option<String>,
    price: Option<Price>,
    account: Option<String>,
    provider_timestamp: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
}

impl Common {
    fn event(&self, recipient: &Value, raw: &Map<String, Value>) -> Result<ReceiptEvent, ReceiptError> {
        let Value::Object(recipient) = recipient else {
            return Err(ReceiptError::InvalidFields(vec![FieldProblem::new("to[]", "must be an object")]));
        };
        let Some(status) = text(recipient.get("status")) else {
            return Err(ReceiptError::InvalidFields(vec![FieldProblem::new("to[].status", "is missing")]));
        };
        let phone = text(recipient.get("phone_number")).map(address);
        let parsed = TelnyxStatus::parse(&status);
        // The error only belongs to a failed recipient: a group message's
        // delivered recipients must not inherit a sibling's failure.
        let error = if parsed.outcome() == Outcome::Failed { self.error.clone() } else { None };
        // What identifies the report: message, recipient, status and error.
        // Telnyx's own event id (`data.id`) would do for retries, but a
        // re-sent webhook with a new id must still de-duplicate.
        let event_id = EventId::derive(
            Provider::Telnyx,
            &[
                self.message_id.as_str(),
                phone.as_deref().unwrap_or(""),
                &status.to_ascii_lowercase(),
                error.as_ref().map(|e| e.code.as_str()).unwrap_or(""),
            ],
        );
        Ok(ReceiptEvent {
            schema_version: SCHEMA_VERSION,
            event_id,
            provider: Provider::Telnyx,
            message_id: self.message_id.clone(),
            outcome: parsed.outcome(),
            status_recognised: !matches!(parsed, TelnyxStatus::Unrecognised(_)),
            status,
            error,
            client_ref: None,
            recipient: phone,
            sender: self.sender.clone(),
            channel: self.channel.clone(),
            price: self.price.clone(),
            network_code: None,
            account: self.account.clone(),
            provider_timestamp: self.provider_timestamp,
            carrier_timestamp: None,
            authenticity: None,
            received_at: self.received_at,
            raw: raw.clone(),
            synthetic: false,
            destination: None,
        })
    }
}

/// The first of `errors[]` (`{code, title, detail}`); Telnyx lists the
/// cause first. A present but unusable list is a field problem.
fn first_error(errors: Option<&Value>, problems: &mut Vec<FieldProblem>) -> Option<ProviderError> {
    let first = match errors {
        None | Some(Value::Null) => return None,
        Some(Value::Array(errors)) => errors.first()?,
        Some(_) => {
            problems.push(FieldProblem::new("data.payload.errors", "must be an array"));
            return None;
        }
    };
    let Some(code) = member_text(Some(first), "code") else {
        problems.push(FieldProblem::new("data.payload.errors[0].code", "is missing"));
        return None;
    };
    let (known, retryable) = describe_error_code(&code);
    let description = member_text(Some(first), "detail")
        .or_else(|| member_text(Some(first), "title"))
        .or_else(|| known.map(str::to_owned));
    Some(ProviderError { code, description, retryable })
}

/// `cost{amount, currency}`: null until finalized; the amount is a string in
/// the SDK and a number in one API example, so both are read.
fn price(cost: Option<&Value>) -> Option<Price> {
    let amount = member_text(cost, "amount").filter(|a| is_decimal(a))?;
    Some(Price { amount, currency: member_text(cost, "currency") })
}

/// `occurred_at` is ISO 8601 with an offset (`2019-12-09T21:32:14.148+00:00`).
fn parse_timestamp(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value).ok().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A `message.finalized` for a delivered SMS, shaped as in Telnyx's
    /// "receiving webhooks" documentation.
    const DELIVERED: &str = r#"{"data":{"event_type":"message.finalized","id":"4ee8c3a6-4995-4309-a3c6-38e3db9ea4be","occurred_at":"2019-12-09T21:32:14.148+00:00","payload":{"completed_at":"2019-12-09T21:32:14.148+00:00","cost":{"amount":"0.0051","currency":"USD"},"direction":"outbound","encoding":"GSM-7","errors":[],"from":{"carrier":"Telnyx","line_type":"VoIP","phone_number":"+18445550001"},"id":"40317159-3c4e-4d2c-9a43-b9d1d2e0e0d4","messaging_profile_id":"83d2a2f6-9b2e-4e3c-8a1e-1e4b0a8b0f11","parts":1,"record_type":"message","sent_at":"2019-12-09T21:32:13.530+00:00","text":"Hello","to":[{"carrier":"T-MOBILE USA, INC.","line_type":"Wireless","phone_number":"+13125550002","status":"delivered"}],"type":"SMS"},"record_type":"event"},"meta":{"attempt":1,"delivered_to":"https://dlr.example.com/dlr/telnyx"}}"#;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    fn body_with(edit: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
        let mut object: Value = serde_json::from_str(DELIVERED).expect("sample is JSON");
        if let Some(Value::Object(payload)) = object.pointer_mut("/data/payload") {
            edit(payload);
        }
        serde_json::to_vec(&object).expect("serialises")
    }

    #[test]
    fn parses_a_delivered_sms() {
        let batch = parse(DELIVERED.as_bytes(), now()).expect("valid");
        assert!(batch.rejected.is_empty());
        let [event] = batch.events.as_slice() else { panic!("one receipt, got {}", batch.events.len()) };
        assert_eq!(event.provider, Provider::Telnyx);
        assert_eq!(event.message_id.as_str(), "40317159-3c4e-4d2c-9a43-b9d1d2e0e0d4");
        assert_eq!((event.outcome, event.status.as_str()), (Outcome::Delivered, "delivered"));
        assert_eq!(event.recipient.as_deref(), Some("13125550002"));
        assert_eq!(event.sender.as_deref(), Some("18445550001"));
        assert_eq!(event.channel.as_deref(), Some("sms"));
        assert_eq!(event.price, Some(Price { amount: "0.0051".into(), currency: Some("USD".into()) }));
        assert_eq!(event.provider_timestamp.map(|t| t.timestamp_millis()), Some(1_575_927_134_148));
        assert_eq!(event.error, None);
        assert_eq!(
            event.event_id,
            EventId::derive(
                Provider::Telnyx,
                &["40317159-3c4e-4d2c-9a43-b9d1d2e0e0d4", "13125550002", "delivered", ""]
            )
        );
    }

    #[test]
    fn status_table() {
        for (word, outcome, recognised) in [
            ("queued", Outcome::Pending, true),
            ("sending", Outcome::Pending, true),
            ("sent", Outcome::Pending, true),
            ("delivered", Outcome::Delivered, true),
            ("sending_failed", Outcome::Failed, true),
            ("delivery_failed", Outcome::Failed, true),
            ("delivery_unconfirmed", Outcome::Pending, true),
            ("expired", Outcome::Failed, true),
            ("DELIVERED", Outcome::Delivered, true),
            ("teleported", Outcome::Pending, false),
        ] {
            let body = body_with(|p| {
                p.insert("to".into(), serde_json::json!([{"phone_number":"+13125550002","status":word}]));
            });
            let event = parse(&body, now()).expect("valid").events.remove(0);
            assert_eq!((event.outcome, event.status_recognised), (outcome, recognised), "{word}");
        }
    }

    #[test]
    fn failure_carries_the_first_error_and_only_for_failed_recipients() {
        let body = body_with(|p| {
            p.insert(
                "errors".into(),
                serde_json::json!([{"code":"40002","title":"Blocked as spam - temporary","detail":"Message flagged"}]),
            );
            p.insert(
                "to".into(),
                serde_json::json!([
                    {"phone_number":"+13125550002","status":"delivery_failed"},
                    {"phone_number":"+13125550003","status":"delivered"},
                    {"phone_number":"+13125550004"}
                ]),
            );
            p.insert("cost".into(), serde_json::json!({"amount":0.0051,"currency":"USD"}));
        });
        let batch = parse(&body, now()).expect("valid");
        assert_eq!(batch.events.len(), 2);
        let error = batch.events[0].error.clone().expect("error");
        assert_eq!((error.code.as_str(), error.retryable), ("40002", true));
        assert_eq!(error.description.as_deref(), Some("Message flagged"));
        assert_eq!(batch.events[1].error, None);
        assert_eq!(batch.events[0].price.as_ref().map(|p| p.amount.as_str()), Some("0.0051"));
        assert_ne!(batch.events[0].event_id, batch.events[1].event_id);
        assert_eq!(batch.rejected.len(), 1);
        assert_eq!(batch.rejected[0].location, "data.payload.to[2]");
    }

    #[test]
    fn inbound_and_shapeless_bodies_are_refused() {
        let inbound = DELIVERED.replace("message.finalized", "message.received");
        assert!(matches!(parse(inbound.as_bytes(), now()), Err(ReceiptError::NotAReceipt(_))));
        assert!(matches!(parse(b"[]", now()), Err(ReceiptError::Malformed { .. })));
        assert!(matches!(parse(br#"{"data":1}"#, now()), Err(ReceiptError::InvalidFields(_))));
        let no_id = body_with(|p| {
            p.remove("id");
            p.insert("to".into(), serde_json::json!([]));
        });
        let err = parse(&no_id, now()).expect_err("invalid");
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["data.payload.id", "data.payload.to"]);
    }

    #[test]
    fn event_id_ignores_meta_and_telnyx_event_id() {
        let a = parse(DELIVERED.as_bytes(), now()).expect("a").events.remove(0);
        let retried = DELIVERED
            .replace(r#""attempt":1"#, r#""attempt":3"#)
            .replace("4ee8c3a6-4995-4309-a3c6-38e3db9ea4be", "5ee8c3a6-4995-4309-a3c6-38e3db9ea4be");
        let b = parse(retried.as_bytes(), now()).expect("b").events.remove(0);
        assert_eq!(a.event_id, b.event_id);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&body, now());
        }

        #[test]
        fn arbitrary_recipients_never_panic(to in prop::collection::vec(
            prop_oneof![Just(Value::Null), ".{0,8}".prop_map(Value::String), any::<i64>().prop_map(Value::from),
                (".{0,8}", ".{0,12}").prop_map(|(s, p)| serde_json::json!({"status": s, "phone_number": p}))], 0..8)) {
            let body = body_with(|p| { p.insert("to".into(), Value::Array(to)); });
            if let Ok(batch) = parse(&body, now()) {
                for event in batch.events {
                    prop_assert_eq!(event.event_id.as_str().len(), 32);
                }
            }
        }
    }
}
