//! Plivo message status callbacks.
//!
//! Plivo calls the `url` given when sending, with the `method` given there:
//! POST sends a form body, GET the same fields as a query. The HTTP layer
//! decodes either into [`Fields`] (what the V3 signature covers) and this
//! module interprets them.

use chrono::{DateTime, Utc};

use crate::providers::fields::is_decimal;
use crate::providers::json::address;
use crate::providers::shapes::{Rule, Shapes, digits, status_word, uuid};
use crate::providers::{FieldProblem, Fields, ReceiptError};
use dlr_shared::domain::{EventId, MessageId, Outcome, Provider};
use dlr_shared::event::{Price, ProviderError, ReceiptEvent, SCHEMA_VERSION};

/// The outcome of a Plivo `Status` word; `None` for a word not documented.
pub fn outcome(status: &str) -> Option<Outcome> {
    match status.to_ascii_lowercase().as_str() {
        // `sent` can be the last status: US/CA carriers return no DLR.
        "queued" | "sent" => Some(Outcome::Pending),
        "delivered" | "read" => Some(Outcome::Delivered),
        "failed" | "undelivered" | "rejected" => Some(Outcome::Failed),
        _ => None,
    }
}

/// Plivo's messaging error codes (troubleshooting/error-codes) and whether
/// a resend may succeed (the ones Plivo calls temporary).
fn describe_error_code(code: &str) -> (Option<&'static str>, bool) {
    match code {
        "10" => (Some("Invalid message"), false),
        "20" => (Some("Network error"), true),
        "30" => (Some("Spam detected"), false),
        "40" => (Some("Invalid source number"), false),
        "50" => (Some("Invalid destination number"), false),
        "60" => (Some("Loop detected"), false),
        "70" => (Some("Destination permanently unavailable"), false),
        "80" => (Some("Destination temporarily unavailable"), true),
        "90" => (Some("No route available"), false),
        "100" => (Some("Prohibited by carrier"), false),
        "110" => (Some("Message too long"), false),
        "420" => (Some("Message expired"), true),
        "1000" => (Some("Unknown error"), true),
        _ => (None, false),
    }
}

/// The documented shapes of Plivo's identifying parameters (Plivo's
/// "Message object" and status callback reference: message UUIDs are
/// UUIDs, auth IDs 20 capitals and digits, error codes numbers).
const SHAPES: Shapes = Shapes {
    rules: &[
        Rule { name: "MessageUUID", valid: uuid, shape: "a lower-case UUID" },
        Rule { name: "Status", valid: status_word, shape: "a lower-case status word" },
        Rule { name: "ErrorCode", valid: digits, shape: "a number" },
        Rule {
            name: "ParentAuthID",
            valid: |v| v.len() == 20 && v.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
            shape: "20 capital letters and digits",
        },
    ],
    status_fields: &["Status"],
    failure_statuses: &["failed", "undelivered", "rejected"],
    error_code: "ErrorCode",
};

/// Refuses a callback whose signed text could have been re-split: see
/// [`crate::providers::shapes`]. Run before [`parse`] on every Plivo request.
pub fn unambiguous(fields: &Fields) -> Result<(), ReceiptError> {
    SHAPES.check(fields)
}

/// Parses a Plivo status callback. `MessageUUID` and `Status` are required;
/// inbound messages (`Text` without `Status`) are not receipts.
pub fn parse(fields: &Fields, received_at: DateTime<Utc>) -> Result<ReceiptEvent, ReceiptError> {
    if fields.get("Status").is_none() && fields.contains("Text") {
        return Err(ReceiptError::NotAReceipt("this is an inbound message (Text, no Status)"));
    }
    let mut problems = Vec::new();
    for name in fields.duplicated_names() {
        if matches!(name, "MessageUUID" | "Status" | "ErrorCode") {
            problems.push(FieldProblem::new(name, "is sent more than once"));
        }
    }
    let message_id = match fields.get("MessageUUID") {
        Some(id) => MessageId::parse(id).map_err(|e| problems.push(FieldProblem::new("MessageUUID", e))).ok(),
        None => {
            problems.push(FieldProblem::new("MessageUUID", "is missing"));
            None
        }
    };
    let status = fields.get("Status");
    if status.is_none() {
        problems.push(FieldProblem::new("Status", "is missing"));
    }
    let code = fields.get("ErrorCode").filter(|c| *c != "0" && *c != "000");
    if let Some(code) = code
        && !(code.len() <= 9 && code.bytes().all(|b| b.is_ascii_digit()))
    {
        problems.push(FieldProblem::new("ErrorCode", "must be a non-negative integer"));
    }
    let (Some(message_id), Some(status)) = (message_id, status) else {
        return Err(ReceiptError::InvalidFields(problems));
    };
    if !problems.is_empty() {
        return Err(ReceiptError::InvalidFields(problems));
    }
    let known = outcome(status);
    let error = code.map(|code| {
        let (description, retryable) = describe_error_code(code);
        ProviderError { code: code.to_owned(), description: description.map(str::to_owned), retryable }
    });
    let event_id = EventId::derive(
        Provider::Plivo,
        &[message_id.as_str(), &status.to_ascii_lowercase(), code.unwrap_or("")],
    );
    let done = fields.get("DeliveryReportTime").or_else(|| fields.get("MessageTime"));
    let network_code = fields.get("MCC").zip(fields.get("MNC")).map(|(mcc, mnc)| format!("{mcc}{mnc}"));
    Ok(ReceiptEvent {
        schema_version: SCHEMA_VERSION,
        event_id,
        provider: Provider::Plivo,
        message_id,
        outcome: known.unwrap_or(Outcome::Pending),
        status_recognised: known.is_some(),
        status: status.to_owned(),
        error,
        client_ref: None,
        recipient: fields.get("To").map(|v| address(v.to_owned())),
        sender: fields.get("From").map(|v| address(v.to_owned())),
        channel: Some(fields.get("Type").unwrap_or("sms").to_ascii_lowercase()),
        // TotalAmount = TotalRate x Units; Plivo states no currency (the
        // account's, USD by default).
        price: fields
            .get("TotalAmount")
            .filter(|a| is_decimal(a))
            .map(|amount| Price { amount: amount.to_owned(), currency: None }),
        network_code,
        account: fields.get("ParentAuthID").map(str::to_owned),
        // The zone of Plivo's times is not documented: only a time that
        // states its offset becomes a provider timestamp; otherwise it is
        // kept verbatim like the carriers' done dates.
        provider_timestamp: done.and_then(parse_with_offset),
        carrier_timestamp: done.filter(|d| parse_with_offset(d).is_none()).map(str::to_owned),
        authenticity: None,
        received_at,
        raw: fields.to_raw(),
        synthetic: false,
        destination: None,
    })
}

fn parse_with_offset(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f%#z").ok().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::decode_urlencoded;
    use proptest::prelude::*;

    /// A delivered callback with the documented fields.
    const DELIVERED: &str = "From=14155550100&To=14155550123&MessageUUID=db3ce55a-7f1d-11e1-8ea7-1231380bc196&Status=delivered&Type=sms&Units=1&TotalRate=0.00500&TotalAmount=0.00500&MCC=310&MNC=410&ErrorCode=&Sequence=2&MessageTime=2024-05-01+10%3A00%3A00.123456&QueuedTime=2024-05-01+10%3A00%3A00.100000&SentTime=2024-05-01+10%3A00%3A01.000000&DeliveryReportTime=2024-05-01+10%3A00%3A05.000000";

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    fn form(body: &str) -> Fields {
        decode_urlencoded(body.as_bytes(), "form").expect("decodes")
    }

    #[test]
    fn parses_a_delivered_callback() {
        let event = parse(&form(DELIVERED), now()).expect("valid");
        assert_eq!(event.message_id.as_str(), "db3ce55a-7f1d-11e1-8ea7-1231380bc196");
        assert_eq!((event.outcome, event.error.clone()), (Outcome::Delivered, None));
        assert_eq!(event.network_code.as_deref(), Some("310410"));
        assert_eq!(event.price.as_ref().map(|p| p.amount.as_str()), Some("0.00500"));
        assert_eq!(event.recipient.as_deref(), Some("14155550123"));
        assert_eq!(event.carrier_timestamp.as_deref(), Some("2024-05-01 10:00:05.000000"));
        assert_eq!(event.provider_timestamp, None);
    }

    #[test]
    fn failed_with_code() {
        let body =
            DELIVERED.replace("Status=delivered", "Status=undelivered").replace("ErrorCode=", "ErrorCode=80");
        let event = parse(&form(&body), now()).expect("valid");
        assert_eq!(event.outcome, Outcome::Failed);
        let error = event.error.expect("error");
        assert_eq!((error.code.as_str(), error.retryable), ("80", true));
        let bad = DELIVERED.replace("ErrorCode=", "ErrorCode=x");
        assert_eq!(parse(&form(&bad), now()).expect_err("invalid").problems()[0].field, "ErrorCode");
    }

    #[test]
    fn status_table() {
        for (word, expected) in [
            ("queued", Some(Outcome::Pending)),
            ("sent", Some(Outcome::Pending)),
            ("delivered", Some(Outcome::Delivered)),
            ("read", Some(Outcome::Delivered)),
            ("failed", Some(Outcome::Failed)),
            ("undelivered", Some(Outcome::Failed)),
            ("rejected", Some(Outcome::Failed)),
            ("Delivered", Some(Outcome::Delivered)),
            ("teleported", None),
        ] {
            assert_eq!(outcome(word), expected, "{word}");
        }
    }

    #[test]
    fn required_fields_inbound_and_offsets() {
        let err = parse(&form("Status=sent"), now()).expect_err("invalid");
        assert_eq!(err.problems()[0].field, "MessageUUID");
        assert!(matches!(
            parse(&form("From=1&To=2&Text=hi&MessageUUID=x"), now()),
            Err(ReceiptError::NotAReceipt(_))
        ));
        let err = parse(&form("MessageUUID=a&Status=sent&Status=delivered"), now()).expect_err("ambiguous");
        assert_eq!(err.problems()[0].field, "Status");
        let event =
            parse(&form("MessageUUID=a&Status=sent&MessageTime=2024-05-01+10%3A00%3A00%2B05%3A30"), now())
                .expect("valid");
        assert_eq!(
            event.provider_timestamp.map(|t| t.to_rfc3339()),
            Some("2024-05-01T04:30:00+00:00".to_owned())
        );
    }

    #[test]
    fn event_id_ignores_sequence_and_unknown_fields() {
        let a = parse(&form(DELIVERED), now()).expect("a");
        let b = parse(&form(&format!("{DELIVERED}&NewField=1")), now()).expect("b");
        assert_eq!(a.event_id, b.event_id);
    }

    proptest! {
        #[test]
        fn arbitrary_form_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(fields) = decode_urlencoded(&body, "form") {
                let _ = parse(&fields, now());
            }
        }
    }
}
