//! Vonage SMS API delivery receipts (<https://developer.vonage.com/en/messaging/sms/guides/delivery-receipts>).
//!
//! The same fields arrive as a query string, a form body or a flat JSON
//! object depending on an account setting; the HTTP layer decodes any of them
//! into [`Fields`] and this module interprets them.

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::providers::fields::is_decimal;
use crate::providers::{FieldProblem, Fields, ReceiptError};
use dlr_shared::domain::{EventId, MessageId, Msisdn, Outcome, Provider};
use dlr_shared::event::{Price, ProviderError, ReceiptEvent, SCHEMA_VERSION};

/// Vonage's DLR `status` words (<https://developer.vonage.com/en/messaging/sms/guides/delivery-receipts>), plus spellings seen in older docs and
/// SMPP-style help pages, plus any word we have never seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VonageStatus {
    /// Accepted by the downstream carrier, not yet delivered.
    Accepted,
    /// Held in the carrier's retry queue.
    Buffered,
    /// Delivered to the handset.
    Delivered,
    /// The validity period ran out.
    Expired,
    /// Not delivered.
    Failed,
    /// Refused by the carrier.
    Rejected,
    /// No useful information: failed, as Vonage's own Messages API translates
    /// it; a later `delivered` still wins in the status store.
    Unknown,
    /// Older documentation's word for failed.
    Undelivered,
    /// SMPP `DELETED`: removed before delivery.
    Deleted,
    /// A word Vonage may add later: kept verbatim, treated as pending.
    Unrecognised(String),
}

impl VonageStatus {
    /// Reads a status word; case-insensitive, SMPP spellings accepted.
    pub fn parse(word: &str) -> Self {
        match word.to_ascii_lowercase().as_str() {
            "accepted" | "acceptd" => Self::Accepted,
            "buffered" => Self::Buffered,
            "delivered" | "delivrd" => Self::Delivered,
            "expired" => Self::Expired,
            "failed" => Self::Failed,
            "rejected" | "rejectd" => Self::Rejected,
            "unknown" => Self::Unknown,
            "undelivered" | "undeliv" => Self::Undelivered,
            "deleted" => Self::Deleted,
            _ => Self::Unrecognised(word.to_owned()),
        }
    }

    /// The business outcome (delivered / failed / pending).
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Delivered => Outcome::Delivered,
            Self::Expired
            | Self::Failed
            | Self::Rejected
            | Self::Unknown
            | Self::Undelivered
            | Self::Deleted => Outcome::Failed,
            Self::Accepted | Self::Buffered | Self::Unrecognised(_) => Outcome::Pending,
        }
    }
}

/// DLR `err-code` meanings (<https://developer.vonage.com/en/messaging/sms/guides/delivery-receipts#dlr-error-codes>) and whether a resend may succeed.
fn describe_err_code(code: u32) -> (Option<&'static str>, bool) {
    let description = match code {
        1 => "Unknown",
        2 => "Absent Subscriber - Temporary",
        3 => "Absent Subscriber - Permanent",
        4 => "Call Barred by User",
        5 => "Portability Error",
        6 => "Anti-Spam Rejection",
        7 => "Handset Busy",
        8 => "Network Error",
        9 => "Illegal Number",
        10 => "Illegal Message",
        11 => "Unroutable",
        12 => "Destination Unreachable",
        13 => "Subscriber Age Restriction",
        14 => "Number Blocked by Carrier",
        15 => "Prepaid Insufficient Funds",
        99 => "General Error",
        _ => return (None, false),
    };
    (Some(description), matches!(code, 2 | 7 | 8))
}

/// Interprets decoded fields as a Vonage SMS delivery receipt.
///
/// Required: `messageId`, `status`, `msisdn`; `err-code` must be a number
/// when present. Other fields are optional and, when malformed, are kept in
/// `raw` but not interpreted: a provider's format drift must not turn into a
/// 4xx that loses the receipt for good.
pub fn parse(fields: &Fields, received_at: DateTime<Utc>) -> Result<ReceiptEvent, ReceiptError> {
    if fields.is_empty() {
        return Err(ReceiptError::InvalidFields(vec![
            FieldProblem::new("messageId", "is missing"),
            FieldProblem::new("status", "is missing"),
            FieldProblem::new("msisdn", "is missing"),
        ]));
    }
    // Inbound SMS share field names with receipts but carry text/type.
    if !fields.contains("status") && (fields.contains("text") || fields.contains("type")) {
        return Err(ReceiptError::NotAReceipt("this is an inbound SMS (has text/type, no status)"));
    }

    let mut problems = Vec::new();
    for name in fields.duplicated_names() {
        problems.push(FieldProblem::new(name, "is repeated"));
    }
    let message_id = required(fields, "messageId", &mut problems)
        .and_then(|v| MessageId::parse(v).map_err(|e| problems.push(FieldProblem::new("messageId", e))).ok());
    let status = required(fields, "status", &mut problems);
    let msisdn = required(fields, "msisdn", &mut problems)
        .and_then(|v| Msisdn::parse(v).map_err(|e| problems.push(FieldProblem::new("msisdn", e))).ok());
    let err_code = match fields.get("err-code") {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(code) => Some(code),
            Err(_) => {
                problems.push(FieldProblem::new("err-code", "must be a non-negative integer"));
                None
            }
        },
    };
    let (Some(message_id), Some(status), Some(msisdn)) = (message_id, status, msisdn) else {
        return Err(ReceiptError::InvalidFields(problems));
    };
    if !problems.is_empty() {
        return Err(ReceiptError::InvalidFields(problems));
    }

    let parsed_status = VonageStatus::parse(status);
    let err_code_text = fields.get("err-code").unwrap_or("");
    let scts = fields.get("scts");
    let message_timestamp = fields.get("message-timestamp");
    let event_id = EventId::derive(
        Provider::VonageSms,
        &[
            message_id.as_str(),
            &status.to_ascii_lowercase(),
            err_code_text,
            scts.unwrap_or(""),
            message_timestamp.unwrap_or(""),
        ],
    );
    let error = err_code.filter(|code| *code != 0).map(|code| {
        let (description, retryable) = describe_err_code(code);
        ProviderError { code: code.to_string(), description: description.map(str::to_owned), retryable }
    });

    Ok(ReceiptEvent {
        schema_version: SCHEMA_VERSION,
        event_id,
        provider: Provider::VonageSms,
        message_id,
        outcome: parsed_status.outcome(),
        status_recognised: !matches!(parsed_status, VonageStatus::Unrecognised(_)),
        status: status.to_owned(),
        error,
        client_ref: fields.get("client-ref").map(str::to_owned),
        recipient: Some(msisdn.into()),
        sender: fields.get("to").map(str::to_owned),
        channel: Some("sms".to_owned()),
        price: fields
            .get("price")
            .filter(|p| is_decimal(p))
            .map(|amount| Price { amount: amount.to_owned(), currency: None }),
        network_code: fields.get("network-code").map(str::to_owned),
        account: fields.get("api-key").map(str::to_owned),
        provider_timestamp: message_timestamp.and_then(parse_message_timestamp),
        carrier_timestamp: scts.map(str::to_owned),
        authenticity: None,
        received_at,
        raw: fields.to_raw(),
        synthetic: false,
        destination: None,
    })
}

fn required<'a>(fields: &'a Fields, name: &str, problems: &mut Vec<FieldProblem>) -> Option<&'a str> {
    let value = fields.get(name);
    if value.is_none() {
        let problem = if fields.contains(name) { "must not be empty" } else { "is missing" };
        problems.push(FieldProblem::new(name, problem));
    }
    value
}

/// `message-timestamp` is `YYYY-MM-DD HH:MM:SS` in UTC.
fn parse_message_timestamp(value: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S").ok().map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{decode_json_object, decode_urlencoded};

    const SEED_QUERY: &str = "msisdn=14155551234&to=12015556666&network-code=310090&messageId=02000000FEA5EE9B&price=0.00570000&status=delivered&scts=1208121359&err-code=0&message-timestamp=2016-10-19+22%3A40%3A30";

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    #[test]
    fn parses_the_seed_receipt() {
        let fields = decode_urlencoded(SEED_QUERY.as_bytes(), "query").expect("decodes");
        let event = parse(&fields, now()).expect("valid receipt");
        assert_eq!(event.message_id.as_str(), "02000000FEA5EE9B");
        assert_eq!(event.outcome, Outcome::Delivered);
        assert_eq!(event.recipient.as_deref(), Some("14155551234"));
        assert_eq!(event.sender.as_deref(), Some("12015556666"));
        assert_eq!(event.error, None);
        assert_eq!(event.price.as_ref().map(|p| p.amount.as_str()), Some("0.00570000"));
        assert_eq!(
            event.provider_timestamp.map(|t| t.to_rfc3339()),
            Some("2016-10-19T22:40:30+00:00".to_owned())
        );
        assert_eq!(event.raw.len(), 9);
    }

    #[test]
    fn json_and_form_give_the_same_event() {
        let form = decode_urlencoded(SEED_QUERY.as_bytes(), "form").expect("decodes");
        let json = decode_json_object(
            br#"{"msisdn":"14155551234","to":"12015556666","network-code":"310090","messageId":"02000000FEA5EE9B","price":"0.00570000","status":"delivered","scts":"1208121359","err-code":"0","message-timestamp":"2016-10-19 22:40:30"}"#,
        )
        .expect("decodes");
        assert_eq!(parse(&form, now()).expect("form"), parse(&json, now()).expect("json"));
    }

    #[test]
    fn names_every_bad_field() {
        let fields = decode_urlencoded(b"status=&err-code=x&msisdn=abc", "form").expect("decodes");
        let err = parse(&fields, now()).expect_err("invalid");
        let names: Vec<_> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(names, vec!["messageId", "status", "msisdn", "err-code"]);
    }

    #[test]
    fn unknown_status_word_is_kept_as_pending() {
        let fields = decode_urlencoded(b"messageId=A1&status=teleported&msisdn=447700900123", "form")
            .expect("decodes");
        let event = parse(&fields, now()).expect("accepted");
        assert_eq!(event.outcome, Outcome::Pending);
        assert!(!event.status_recognised);
        assert_eq!(event.status, "teleported");
    }

    #[test]
    fn retryable_error_codes_are_flagged() {
        let fields = decode_urlencoded(b"messageId=A1&status=failed&msisdn=447700900123&err-code=2", "form")
            .expect("decodes");
        let error = parse(&fields, now()).expect("valid").error.expect("has error");
        assert!(error.retryable);
        assert_eq!(error.description.as_deref(), Some("Absent Subscriber - Temporary"));
    }

    #[test]
    fn inbound_sms_is_refused() {
        let fields = decode_urlencoded(b"messageId=A1&msisdn=447700900123&text=hi&type=text", "form")
            .expect("decodes");
        assert!(matches!(parse(&fields, now()), Err(ReceiptError::NotAReceipt(_))));
    }

    #[test]
    fn event_id_ignores_signature_fields() {
        let a = decode_urlencoded(format!("{SEED_QUERY}&nonce=1&sig=aa&timestamp=1").as_bytes(), "q")
            .expect("ok");
        let b = decode_urlencoded(format!("{SEED_QUERY}&nonce=2&sig=bb&timestamp=2").as_bytes(), "q")
            .expect("ok");
        assert_eq!(parse(&a, now()).expect("a").event_id, parse(&b, now()).expect("b").event_id);
    }

    #[test]
    fn status_table_matches_the_reference() {
        for (word, outcome) in [
            ("accepted", Outcome::Pending),
            ("buffered", Outcome::Pending),
            ("delivered", Outcome::Delivered),
            ("expired", Outcome::Failed),
            ("failed", Outcome::Failed),
            ("rejected", Outcome::Failed),
            ("unknown", Outcome::Failed),
            ("undelivered", Outcome::Failed),
            ("DELIVRD", Outcome::Delivered),
        ] {
            assert_eq!(VonageStatus::parse(word).outcome(), outcome, "{word}");
        }
    }
}
