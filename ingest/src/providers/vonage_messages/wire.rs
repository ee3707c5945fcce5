//! Vonage Messages API message-status webhooks (<https://developer.vonage.com/en/api/messages#message-status>).
//!
//! Unlike the SMS API, the Messages API always POSTs JSON, and its body is
//! nested (`error{}`, `usage{}`, `destination{}`), so this module reads the
//! body itself instead of going through the flat [`Fields`] decoder. Two
//! formats are accepted because old applications may still be configured for
//! the legacy one:
//! - v1: `to`/`from` are strings, `error` is an RFC 7807-style
//!   `{type, title, detail, instance}` whose code is in `title` or in the
//!   `#NNNN` fragment of `type`;
//! - v0.1 ("olympus"): `to`/`from` are objects `{type, number|id}` and
//!   `error` is `{code, reason}`.
//!
//! [`Fields`]: super::Fields

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::providers::fields::is_decimal;
use crate::providers::json::{member_text, text};
use crate::providers::{FieldProblem, ReceiptError};
use dlr_shared::domain::{EventId, MessageId, Msisdn, Outcome, Provider};
use dlr_shared::event::{Price, ProviderError, ReceiptEvent, SCHEMA_VERSION};

/// Messages API `status` words (<https://developer.vonage.com/en/api/messages#message-status>), plus any word we have never seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessagesStatus {
    /// Handed to the provider or carrier; for SMS this is the charged event.
    Submitted,
    /// Delivered to the handset.
    Delivered,
    /// Read receipt (OTT channels only): a message read was delivered.
    Read,
    /// Refused by Vonage or the provider, or the TTL ran out.
    Rejected,
    /// Vonage could not reach the provider.
    Undeliverable,
    /// A word Vonage may add later: the receipt is authentic, so it is accepted,
    /// kept verbatim and treated as pending (and logged) rather than refused.
    Unrecognised(String),
}

impl MessagesStatus {
    /// Reads a status word, case-insensitively: Vonage documents lower case,
    /// but an upper-case spelling carries no different meaning.
    pub fn parse(word: &str) -> Self {
        match word.to_ascii_lowercase().as_str() {
            "submitted" => Self::Submitted,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "rejected" => Self::Rejected,
            "undeliverable" => Self::Undeliverable,
            _ => Self::Unrecognised(word.to_owned()),
        }
    }

    /// The business outcome (delivered / failed / pending).
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Delivered | Self::Read => Outcome::Delivered,
            Self::Rejected | Self::Undeliverable => Outcome::Failed,
            Self::Submitted | Self::Unrecognised(_) => Outcome::Pending,
        }
    }
}

/// Frequent Messages API error codes (<https://developer.vonage.com/en/api-errors/messages>) and whether a resend may succeed.
///
/// Only the transient ones (absent subscriber for now, handset busy, network
/// or provider error) are retryable; the rest will fail the same way again.
fn describe_error_code(code: u32) -> (Option<&'static str>, bool) {
    let description = match code {
        1180 => "Absent Subscriber - Temporary",
        1190 => "Absent Subscriber - Permanent",
        1200 => "Portability Error",
        1210 => "Anti-Spam Rejection",
        1220 => "Handset Busy",
        1230 => "Network Error",
        1240 => "Illegal Number",
        1250 => "Unroutable",
        1260 => "Destination Unreachable",
        1270 => "Subscriber Age Restriction",
        1280 => "Number Blocked by Carrier",
        1290 => "Prepaid Insufficient Funds",
        1330 => "Unknown",
        1331 => "Provider Error",
        1360 => "TTL Activated",
        _ => return (None, false),
    };
    (Some(description), matches!(code, 1180 | 1220 | 1230 | 1331))
}

/// Interprets the JSON body of a Messages API status webhook.
///
/// Required: `message_uuid` and a non-empty `status`; `error`, when present,
/// must be an object and a legacy `error.code` must be an integer, because a
/// failure's code decides whether it is retried. Every other member is
/// optional and, when it has an unexpected shape, is kept in `raw` but not
/// interpreted: format drift must not become a 4xx that loses the receipt.
pub fn parse(body: &[u8], received_at: DateTime<Utc>) -> Result<ReceiptEvent, ReceiptError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ReceiptError::Malformed { format: "json", detail: e.to_string() })?;
    let Value::Object(object) = value else {
        return Err(ReceiptError::Malformed { format: "json", detail: "expected a JSON object".to_owned() });
    };
    // Inbound messages go to a different webhook but may be misrouted; they
    // carry `message_type`/`text` and no `status`.
    if !object.contains_key("status") && (object.contains_key("message_type") || object.contains_key("text"))
    {
        return Err(ReceiptError::NotAReceipt(
            "this is an inbound message (has message_type/text, no status)",
        ));
    }

    let mut problems = crate::providers::fields::json_text_problems(&object);
    let message_id = required(&object, "message_uuid", &mut problems).and_then(|v| {
        MessageId::parse(&v).map_err(|e| problems.push(FieldProblem::new("message_uuid", e))).ok()
    });
    let status = required(&object, "status", &mut problems);
    let error = match object.get("error") {
        None | Some(Value::Null) => None,
        Some(Value::Object(error)) => provider_error(error, &mut problems),
        Some(_) => {
            problems.push(FieldProblem::new("error", "must be an object"));
            None
        }
    };
    let (Some(message_id), Some(status)) = (message_id, status) else {
        return Err(ReceiptError::InvalidFields(problems));
    };
    if !problems.is_empty() {
        return Err(ReceiptError::InvalidFields(problems));
    }

    let parsed_status = MessagesStatus::parse(&status);
    let timestamp = text(object.get("timestamp"));
    // Lower-cased like the SMS parser, so that a retry spelled differently
    // still de-duplicates; the timestamp is kept as text so that an
    // unparseable one still distinguishes events.
    let event_id = EventId::derive(
        Provider::VonageMessages,
        &[message_id.as_str(), &status.to_ascii_lowercase(), timestamp.as_deref().unwrap_or("")],
    );
    // v1 names the channel; v0.1 only has it as the address objects' `type`.
    let channel = text(object.get("channel"))
        .or_else(|| member_text(object.get("to"), "type"))
        .or_else(|| member_text(object.get("from"), "type"));

    Ok(ReceiptEvent {
        schema_version: SCHEMA_VERSION,
        event_id,
        provider: Provider::VonageMessages,
        message_id,
        outcome: parsed_status.outcome(),
        status_recognised: !matches!(parsed_status, MessagesStatus::Unrecognised(_)),
        status,
        error,
        client_ref: text(object.get("client_ref")),
        recipient: address(object.get("to")),
        sender: address(object.get("from")),
        channel,
        price: price(object.get("usage")),
        network_code: member_text(object.get("destination"), "network_code"),
        account: text(object.get("api_key")),
        provider_timestamp: timestamp.as_deref().and_then(parse_timestamp),
        carrier_timestamp: None,
        authenticity: None,
        received_at,
        raw: object,
        synthetic: false,
        destination: None,
    })
}

/// A required scalar member, recording why it is unusable when it is.
fn required(object: &Map<String, Value>, name: &str, problems: &mut Vec<FieldProblem>) -> Option<String> {
    let problem = match object.get(name) {
        None => "is missing",
        Some(Value::Array(_) | Value::Object(_)) => "must be a string, not a nested value",
        value => match text(value) {
            Some(text) => return Some(text),
            None => "must not be empty",
        },
    };
    problems.push(FieldProblem::new(name, problem));
    None
}

/// `to`/`from`: a string in v1, `{type, number|id}` in v0.1. Phone numbers
/// are normalised like every other provider's (E.164 digits, no `+`) so the
/// same handset has one spelling; anything else (sender ids, OTT ids) is
/// kept as given.
fn address(value: Option<&Value>) -> Option<String> {
    let raw = match value? {
        Value::Object(_) => member_text(value, "number").or_else(|| member_text(value, "id")),
        _ => text(value),
    }?;
    Some(Msisdn::parse(&raw).map(String::from).unwrap_or(raw))
}

/// `usage{currency, price}`; a price that is not a plain decimal is dropped
/// rather than passed on as something a billing job might misread.
fn price(usage: Option<&Value>) -> Option<Price> {
    let amount = member_text(usage, "price").filter(|p| is_decimal(p))?;
    Some(Price { amount, currency: member_text(usage, "currency") })
}

/// The error's code and what we know about it.
///
/// The code is taken from, in order: a numeric `title` (v1 webhooks put the
/// code there, as a string or a number), the trailing `#NNNN` of the `type`
/// URI, the legacy integer `code`, and finally a non-numeric `title` verbatim
/// (so an error Vonage describes only in words is still reported). An error
/// object with none of them yields no error: the outcome already comes from
/// `status`, and `raw` keeps the object.
fn provider_error(error: &Map<String, Value>, problems: &mut Vec<FieldProblem>) -> Option<ProviderError> {
    let title = text(error.get("title"));
    let numeric_title = title.clone().filter(|t| is_code(t));
    let type_fragment = error
        .get("type")
        .and_then(Value::as_str)
        .and_then(|uri| uri.rsplit_once('#'))
        .map(|(_, fragment)| fragment.trim())
        .filter(|fragment| is_code(fragment))
        .map(str::to_owned);
    let legacy_code = match error.get("code") {
        None | Some(Value::Null) => None,
        Some(value) => match text(Some(value)).filter(|c| is_code(c)) {
            Some(code) => Some(code),
            None => {
                problems.push(FieldProblem::new("error.code", "must be a non-negative integer"));
                None
            }
        },
    };
    let code = numeric_title.or(type_fragment).or(legacy_code).or(title)?;
    let (known, retryable) = code.parse::<u32>().map(describe_error_code).unwrap_or((None, false));
    let description =
        text(error.get("detail")).or_else(|| text(error.get("reason"))).or_else(|| known.map(str::to_owned));
    Some(ProviderError { code, description, retryable })
}

/// A plausible error code: 1 to 9 ASCII digits (fits a `u32`).
fn is_code(value: &str) -> bool {
    (1..=9).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit())
}

/// `timestamp` is ISO 8601 / RFC 3339 in UTC with milliseconds.
fn parse_timestamp(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value).ok().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sample S5: SMS submitted, two parts, charged.
    const S5: &str = r#"{"message_uuid":"9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f","to":"447700900123","from":"AcmeShop","timestamp":"2025-03-14T09:26:58.347Z","status":"submitted","channel":"sms","client_ref":"order-77815","usage":{"currency":"EUR","price":"0.0666"},"sms":{"count_total":"2"},"destination":{"network_code":"23415"}}"#;

    /// Sample S6 body: SMS rejected with error 1330 (exact bytes, signed).
    const S6: &str = r#"{"message_uuid":"5b0d4b1e-6f2a-4c3e-9a8b-1c2d3e4f5a6b","to":"447700900123","from":"447700900001","timestamp":"2025-03-14T09:27:02.118Z","status":"rejected","channel":"sms","client_ref":"order-77814","error":{"type":"https://developer.vonage.com/api-errors/messages#1330","title":"1330","detail":"Unknown - An unknown error was received from the carrier.","instance":"bf0ca0bf927b3b52e3cb03217e1a1ddf"}}"#;

    /// A legacy v0.1 ("olympus") status: address objects, `error{code, reason}`.
    const LEGACY: &str = r#"{"message_uuid":"aaaaaaaa-bbbb-cccc-dddd-0123456789ab","to":{"type":"sms","number":"447700900000"},"from":{"type":"sms","number":"AcmeShop"},"timestamp":"2020-01-01T14:00:00.000Z","status":"undeliverable","error":{"code":1220,"reason":"Handset busy"},"usage":{"currency":"GBP","price":"0.0333"}}"#;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    fn with(member: &str, value: Value) -> Vec<u8> {
        let mut object: Map<String, Value> = serde_json::from_str(S5).expect("S5 is JSON");
        object.insert(member.to_owned(), value);
        serde_json::to_vec(&object).expect("serialises")
    }

    fn without(member: &str) -> Vec<u8> {
        let mut object: Map<String, Value> = serde_json::from_str(S5).expect("S5 is JSON");
        object.remove(member);
        serde_json::to_vec(&object).expect("serialises")
    }

    fn problem_fields(err: &ReceiptError) -> Vec<&str> {
        err.problems().iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn parses_s5_submitted() {
        let event = parse(S5.as_bytes(), now()).expect("valid");
        assert_eq!(event.provider, Provider::VonageMessages);
        assert_eq!(event.message_id.as_str(), "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f");
        assert_eq!(event.outcome, Outcome::Pending);
        assert!(event.status_recognised);
        assert_eq!(event.status, "submitted");
        assert_eq!(event.error, None);
        assert_eq!(event.recipient.as_deref(), Some("447700900123"));
        assert_eq!(event.sender.as_deref(), Some("AcmeShop"));
        assert_eq!(event.channel.as_deref(), Some("sms"));
        assert_eq!(event.client_ref.as_deref(), Some("order-77815"));
        assert_eq!(
            event.price,
            Some(Price { amount: "0.0666".to_owned(), currency: Some("EUR".to_owned()) })
        );
        assert_eq!(event.network_code.as_deref(), Some("23415"));
        assert_eq!(event.account, None);
        assert_eq!(
            event.provider_timestamp.map(|t| t.to_rfc3339()),
            Some("2025-03-14T09:26:58.347+00:00".to_owned())
        );
        assert_eq!(event.carrier_timestamp, None);
        assert_eq!(event.received_at, now());
        assert_eq!(
            event.event_id,
            EventId::derive(
                Provider::VonageMessages,
                &["9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f", "submitted", "2025-03-14T09:26:58.347Z"],
            )
        );
    }

    #[test]
    fn raw_is_the_object_as_received() {
        let event = parse(S5.as_bytes(), now()).expect("valid");
        let expected: Map<String, Value> = serde_json::from_str(S5).expect("JSON");
        assert_eq!(event.raw, expected);
        // Member order is kept (preserve_order), which matters for audit diffs.
        let keys: Vec<_> = event.raw.keys().map(String::as_str).collect();
        assert_eq!(keys.first(), Some(&"message_uuid"));
        assert_eq!(keys.last(), Some(&"destination"));
    }

    #[test]
    fn parses_s6_rejected_with_error() {
        let event = parse(S6.as_bytes(), now()).expect("valid");
        assert_eq!(event.outcome, Outcome::Failed);
        assert_eq!(event.sender.as_deref(), Some("447700900001"));
        assert_eq!(event.price, None);
        assert_eq!(event.network_code, None);
        assert_eq!(
            event.error,
            Some(ProviderError {
                code: "1330".to_owned(),
                description: Some("Unknown - An unknown error was received from the carrier.".to_owned()),
                retryable: false,
            })
        );
    }

    #[test]
    fn parses_legacy_v0_1_format() {
        let event = parse(LEGACY.as_bytes(), now()).expect("valid");
        assert_eq!(event.outcome, Outcome::Failed);
        assert_eq!(event.recipient.as_deref(), Some("447700900000"));
        assert_eq!(event.sender.as_deref(), Some("AcmeShop"));
        assert_eq!(event.channel.as_deref(), Some("sms"));
        assert_eq!(
            event.error,
            Some(ProviderError {
                code: "1220".to_owned(),
                description: Some("Handset busy".to_owned()),
                retryable: true,
            })
        );
        assert_eq!(event.price.and_then(|p| p.currency).as_deref(), Some("GBP"));
    }

    #[test]
    fn legacy_address_may_be_an_id() {
        let body = with("to", serde_json::json!({"type": "messenger", "id": "fb-123abc"}));
        let body = {
            let mut object: Map<String, Value> = serde_json::from_slice(&body).expect("JSON");
            object.remove("channel");
            serde_json::to_vec(&object).expect("serialises")
        };
        let event = parse(&body, now()).expect("valid");
        assert_eq!(event.recipient.as_deref(), Some("fb-123abc"));
        assert_eq!(event.channel.as_deref(), Some("messenger"));
    }

    #[test]
    fn legacy_error_code_must_be_an_integer() {
        for bad in [
            serde_json::json!("busy"),
            serde_json::json!(-1),
            serde_json::json!(12.5),
            serde_json::json!([1]),
        ] {
            let body = with("error", serde_json::json!({"code": bad, "reason": "x"}));
            let err = parse(&body, now()).expect_err("invalid");
            assert_eq!(problem_fields(&err), vec!["error.code"], "{bad}");
        }
        // A string of digits is as good as the integer.
        let body = with("error", serde_json::json!({"code": "1230"}));
        let error = parse(&body, now()).expect("valid").error.expect("error");
        assert_eq!((error.code.as_str(), error.retryable), ("1230", true));
        assert_eq!(error.description.as_deref(), Some("Network Error"));
    }

    #[test]
    fn error_code_sources_in_order() {
        let code = |error: Value| parse(&with("error", error), now()).expect("valid").error.map(|e| e.code);
        // Numeric title, as a string or a number.
        assert_eq!(code(serde_json::json!({"title": 1180})).as_deref(), Some("1180"));
        assert_eq!(code(serde_json::json!({"title": " 1190 "})).as_deref(), Some("1190"));
        // Title wins over the type fragment.
        assert_eq!(
            code(serde_json::json!({"title": "1250", "type": "https://x/errors#1260"})).as_deref(),
            Some("1250")
        );
        // Wordy title: the type fragment gives the code.
        assert_eq!(
            code(serde_json::json!({"title": "Unroutable", "type": "https://x/errors#1250"})).as_deref(),
            Some("1250")
        );
        // Only the last `#` counts.
        assert_eq!(code(serde_json::json!({"type": "https://x/a#1#1331"})).as_deref(), Some("1331"));
        // Nothing numeric at all: the wordy title is kept verbatim.
        assert_eq!(code(serde_json::json!({"title": "Throttled"})).as_deref(), Some("Throttled"));
        // No code anywhere: no error, the object stays in raw.
        assert_eq!(code(serde_json::json!({"detail": "something"})), None);
        assert_eq!(code(serde_json::json!({})), None);
        assert_eq!(code(Value::Null), None);
    }

    #[test]
    fn description_falls_back_to_the_table() {
        let body = with(
            "error",
            serde_json::json!({"type": "https://developer.vonage.com/api-errors/messages#1360", "title": "1360", "detail": ""}),
        );
        let error = parse(&body, now()).expect("valid").error.expect("error");
        assert_eq!(error.description.as_deref(), Some("TTL Activated"));
        assert!(!error.retryable);
        let body = with("error", serde_json::json!({"title": "9999"}));
        let error = parse(&body, now()).expect("valid").error.expect("error");
        assert_eq!((error.description, error.retryable), (None, false));
    }

    #[test]
    fn retryable_codes_are_flagged() {
        for (code, retryable) in [
            (1180, true),
            (1190, false),
            (1220, true),
            (1230, true),
            (1331, true),
            (1330, false),
            (1360, false),
        ] {
            let body = with("error", serde_json::json!({"title": code.to_string()}));
            let error = parse(&body, now()).expect("valid").error.expect("error");
            assert_eq!(error.retryable, retryable, "{code}");
        }
    }

    #[test]
    fn error_that_is_not_an_object_is_named() {
        let err = parse(&with("error", serde_json::json!("1330")), now()).expect_err("invalid");
        assert_eq!(problem_fields(&err), vec!["error"]);
    }

    #[test]
    fn status_table_matches_the_reference() {
        for (word, outcome, recognised) in [
            ("submitted", Outcome::Pending, true),
            ("delivered", Outcome::Delivered, true),
            ("read", Outcome::Delivered, true),
            ("rejected", Outcome::Failed, true),
            ("undeliverable", Outcome::Failed, true),
            ("DELIVERED", Outcome::Delivered, true),
            ("clicked", Outcome::Pending, false),
        ] {
            let event = parse(&with("status", Value::String(word.to_owned())), now()).expect("valid");
            assert_eq!((event.outcome, event.status_recognised), (outcome, recognised), "{word}");
            assert_eq!(event.status, word);
        }
    }

    #[test]
    fn status_case_does_not_change_the_event_id() {
        let a = parse(&with("status", serde_json::json!("delivered")), now()).expect("valid");
        let b = parse(&with("status", serde_json::json!("Delivered")), now()).expect("valid");
        assert_eq!(a.event_id, b.event_id);
        let c =
            parse(&with("timestamp", serde_json::json!("2025-03-14T09:26:59.000Z")), now()).expect("valid");
        assert_ne!(a.event_id, c.event_id);
    }

    #[test]
    fn missing_or_empty_required_members_are_named() {
        let err = parse(&without("message_uuid"), now()).expect_err("invalid");
        assert_eq!(err.problems(), &[FieldProblem::new("message_uuid", "is missing")]);
        let err = parse(&with("status", serde_json::json!("  ")), now()).expect_err("invalid");
        assert_eq!(err.problems(), &[FieldProblem::new("status", "must not be empty")]);
        let err = parse(&with("status", Value::Null), now()).expect_err("invalid");
        assert_eq!(problem_fields(&err), vec!["status"]);
        let err = parse(&with("message_uuid", serde_json::json!({"id": 1})), now()).expect_err("invalid");
        assert_eq!(problem_fields(&err), vec!["message_uuid"]);
        let err = parse(&with("message_uuid", serde_json::json!("has space")), now()).expect_err("invalid");
        assert_eq!(problem_fields(&err), vec!["message_uuid"]);
        let err = parse(b"{}", now()).expect_err("invalid");
        assert_eq!(problem_fields(&err), vec!["message_uuid", "status"]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(br#"{"status":"","error":[1]}"#, now()).expect_err("invalid");
        assert_eq!(problem_fields(&err), vec!["message_uuid", "status", "error"]);
        assert_eq!(err.reason(), "invalid_fields");
    }

    #[test]
    fn garbage_and_non_objects_are_malformed_json() {
        for body in [&b""[..], b"{", b"not json", b"[1,2]", b"\"text\"", b"null", b"42", b"\xff\xfe"] {
            match parse(body, now()) {
                Err(ReceiptError::Malformed { format, .. }) => assert_eq!(format, "json"),
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn inbound_message_is_refused() {
        let body = br#"{"message_uuid":"x-1","to":"447700900000","from":"447700900123","message_type":"text","text":"hi","channel":"sms"}"#;
        assert!(matches!(parse(body, now()), Err(ReceiptError::NotAReceipt(_))));
    }

    #[test]
    fn empty_optional_members_mean_absent() {
        let body = br#"{"message_uuid":"x-1","status":"delivered","to":"","from":null,"channel":"","client_ref":" ","usage":{"currency":"","price":""},"destination":{},"timestamp":"","error":null}"#;
        let event = parse(body, now()).expect("valid");
        assert_eq!(event.recipient, None);
        assert_eq!(event.sender, None);
        assert_eq!(event.channel, None);
        assert_eq!(event.client_ref, None);
        assert_eq!(event.price, None);
        assert_eq!(event.network_code, None);
        assert_eq!(event.provider_timestamp, None);
        assert_eq!(event.error, None);
        assert_eq!(event.raw.len(), 10);
    }

    #[test]
    fn numbers_where_strings_are_expected() {
        let body = br#"{"message_uuid":"x-1","status":"submitted","to":447700900123,"client_ref":77815,"usage":{"currency":"EUR","price":0.0666},"destination":{"network_code":23415},"sms":{"count_total":2}}"#;
        let event = parse(body, now()).expect("valid");
        assert_eq!(event.recipient.as_deref(), Some("447700900123"));
        assert_eq!(event.client_ref.as_deref(), Some("77815"));
        assert_eq!(event.price.map(|p| p.amount).as_deref(), Some("0.0666"));
        assert_eq!(event.network_code.as_deref(), Some("23415"));
    }

    #[test]
    fn odd_shapes_in_optional_members_are_ignored() {
        let body = br#"{"message_uuid":"x-1","status":"submitted","to":["447700900123"],"from":{"type":"sms"},"usage":"0.1","destination":"23415","timestamp":"yesterday","sms":[]}"#;
        let event = parse(body, now()).expect("valid");
        assert_eq!(event.recipient, None);
        assert_eq!(event.sender, None);
        assert_eq!(event.channel.as_deref(), Some("sms"));
        assert_eq!(event.price, None);
        assert_eq!(event.network_code, None);
        assert_eq!(event.provider_timestamp, None);
        // An unparseable timestamp still distinguishes events.
        assert_eq!(
            event.event_id,
            EventId::derive(Provider::VonageMessages, &["x-1", "submitted", "yesterday"])
        );
    }

    #[test]
    fn prices_must_be_plain_decimals() {
        for (price, kept) in [("0.0333", true), ("1", true), ("1e-3", false), ("abc", false), (".5", false)] {
            let body = with("usage", serde_json::json!({"currency": "EUR", "price": price}));
            assert_eq!(parse(&body, now()).expect("valid").price.is_some(), kept, "{price}");
        }
    }

    #[test]
    fn recipient_with_plus_is_normalised_and_others_kept() {
        let event = parse(&with("to", serde_json::json!("+447700900123")), now()).expect("valid");
        assert_eq!(event.recipient.as_deref(), Some("447700900123"));
        let event = parse(&with("to", serde_json::json!("user@example.com")), now()).expect("valid");
        assert_eq!(event.recipient.as_deref(), Some("user@example.com"));
    }

    #[test]
    fn utf8_client_ref_and_unknown_members_are_kept() {
        let body = with("client_ref", serde_json::json!("Bestellung-ÄÖÜ-注文-🚀"));
        let mut object: Map<String, Value> = serde_json::from_slice(&body).expect("JSON");
        object.insert(
            "workflow".to_owned(),
            serde_json::json!({"id": "w1", "item_number": "1", "items_total": "2"}),
        );
        object.insert("brand_new".to_owned(), serde_json::json!([1, {"x": null}]));
        object.insert("api_key".to_owned(), serde_json::json!("a1b2c3d4"));
        let body = serde_json::to_vec(&object).expect("serialises");
        let event = parse(&body, now()).expect("valid");
        assert_eq!(event.client_ref.as_deref(), Some("Bestellung-ÄÖÜ-注文-🚀"));
        assert_eq!(event.account.as_deref(), Some("a1b2c3d4"));
        assert_eq!(event.raw["brand_new"], serde_json::json!([1, {"x": null}]));
        assert_eq!(event.raw["workflow"]["items_total"], "2");
        assert_eq!(event.raw, object);
    }

    /// JSON values whose keys are mostly the ones the parser looks at, so the
    /// generated bodies reach deep into it rather than failing at the first check.
    fn json_value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            prop::sample::select(vec![
                "message_uuid",
                "status",
                "to",
                "from",
                "timestamp",
                "channel",
                "client_ref",
                "error",
                "usage",
                "price",
                "currency",
                "destination",
                "network_code",
                "type",
                "title",
                "detail",
                "code",
                "reason",
                "number",
                "id",
                "api_key",
                "text",
                "message_type",
            ])
            .prop_map(str::to_owned),
            ".{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop::sample::select(vec![
                "delivered",
                "rejected",
                "1330",
                "https://x#1220",
                "0.01",
                "+447700900123",
                "2025-03-14T09:26:58.347Z",
                ""
            ])
            .prop_map(Value::from),
            ".{0,24}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 48, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..8)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&body, now());
        }

        #[test]
        fn arbitrary_json_never_panics(value in json_value()) {
            let body = serde_json::to_vec(&value).expect("serialises");
            if let Ok(event) = parse(&body, now()) {
                prop_assert_eq!(event.event_id.as_str().len(), 32);
                prop_assert_eq!(Value::Object(event.raw), value);
            }
        }
    }
}
