//! Sinch SMS REST API delivery reports.
//!
//! The report type is chosen per batch. `per_recipient` and
//! `per_recipient_final` send one `recipient_delivery_report_sms` per
//! status change; `full` sends one `delivery_report_sms` listing the
//! recipients per status, split here into one receipt per recipient;
//! `summary` sends counts without recipients, which identify no message:
//! those are answered 200 and counted as ignored.
//!
//! Sinch has no per-message id: a batch goes to many recipients under one
//! `batch_id`. The message id is therefore `"{batch_id}:{recipient}"`, the
//! pair that names one sent message.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::providers::json::{self, address, text};
use crate::providers::{Batch, ElementProblem, FieldProblem, MAX_BATCH_ELEMENTS, ReceiptError};
use dlr_shared::domain::{EventId, MessageId, Outcome, Provider};
use dlr_shared::event::{ProviderError, ReceiptEvent, SCHEMA_VERSION};

/// The outcome of a Sinch status word (compared case-insensitively: the
/// documentation writes `Delivered`, the Python SDK `DELIVERED`); `None`
/// for a word not in the documented list.
pub fn outcome(status: &str) -> Option<Outcome> {
    match status.to_ascii_lowercase().as_str() {
        "queued" | "dispatched" => Some(Outcome::Pending),
        "delivered" => Some(Outcome::Delivered),
        "aborted" | "cancelled" | "rejected" | "deleted" | "failed" | "expired" => Some(Outcome::Failed),
        // Documented without saying whether it is final: nothing is known
        // about the handset, so the message is still pending to us.
        "unknown" => Some(Outcome::Pending),
        _ => None,
    }
}

/// Parses a Sinch delivery report body.
pub fn parse(body: &[u8], received_at: DateTime<Utc>) -> Result<Batch, ReceiptError> {
    let object = json::object(body)?;
    match text(object.get("type")).as_deref() {
        Some("recipient_delivery_report_sms" | "recipient_delivery_report_mms") => {
            recipient_report(&object, received_at).map(Batch::one)
        }
        Some("delivery_report_sms" | "delivery_report_mms") => batch_report(&object, received_at),
        Some("mo_text" | "mo_binary" | "mo_media") => {
            Err(ReceiptError::NotAReceipt("this is an inbound message (mo_*)"))
        }
        Some(_) => Err(ReceiptError::NotAReceipt("unknown report type")),
        None => Err(ReceiptError::InvalidFields(vec![FieldProblem::new("type", "is missing")])),
    }
}

/// What one receipt is made of, wherever in the body it came from.
struct Report<'a> {
    batch_id: &'a str,
    recipient: String,
    status: String,
    code: Option<String>,
    at: Option<String>,
    client_ref: Option<String>,
    sender: Option<String>,
}

fn recipient_report(
    object: &Map<String, Value>,
    received_at: DateTime<Utc>,
) -> Result<ReceiptEvent, ReceiptError> {
    let mut problems = Vec::new();
    let mut required = |name: &str| {
        let value = text(object.get(name));
        if value.is_none() {
            problems.push(FieldProblem::new(name, "is missing"));
        }
        value
    };
    let (batch_id, recipient, status) = (required("batch_id"), required("recipient"), required("status"));
    let (Some(batch_id), Some(recipient), Some(status)) = (batch_id, recipient, status) else {
        return Err(ReceiptError::InvalidFields(problems));
    };
    event(
        Report {
            batch_id: &batch_id,
            recipient,
            status,
            code: text(object.get("code")),
            at: text(object.get("at")),
            client_ref: text(object.get("client_reference")),
            sender: text(object.get("applied_originator")),
        },
        object,
        received_at,
    )
}

fn batch_report(object: &Map<String, Value>, received_at: DateTime<Utc>) -> Result<Batch, ReceiptError> {
    let Some(batch_id) = text(object.get("batch_id")) else {
        return Err(ReceiptError::InvalidFields(vec![FieldProblem::new("batch_id", "is missing")]));
    };
    let Some(Value::Array(statuses)) = object.get("statuses") else {
        return Err(ReceiptError::InvalidFields(vec![FieldProblem::new(
            "statuses",
            "is missing or not an array",
        )]));
    };
    let total: usize = statuses
        .iter()
        .map(|s| match s.get("recipients") {
            Some(Value::Array(r)) => r.len(),
            _ => 0,
        })
        .sum();
    if total > MAX_BATCH_ELEMENTS {
        return Err(ReceiptError::InvalidFields(vec![FieldProblem::new(
            "statuses",
            format!("list more than {MAX_BATCH_ELEMENTS} recipients"),
        )]));
    }
    let mut batch = Batch::default();
    let client_ref = text(object.get("client_reference"));
    let mut any_recipients = false;
    for (i, group) in statuses.iter().enumerate() {
        let status = group.get("status").and_then(|s| text(Some(s)));
        let code = group.get("code").and_then(|c| text(Some(c)));
        let Some(Value::Array(recipients)) = group.get("recipients") else {
            continue;
        };
        any_recipients = true;
        for (j, recipient) in recipients.iter().enumerate() {
            let location = format!("statuses[{i}].recipients[{j}]");
            let result = match (&status, text(Some(recipient))) {
                (None, _) => {
                    Err(ReceiptError::InvalidFields(vec![FieldProblem::new("status", "is missing")]))
                }
                (_, None) => {
                    Err(ReceiptError::InvalidFields(vec![FieldProblem::new("recipient", "is not a number")]))
                }
                (Some(status), Some(recipient)) => event(
                    Report {
                        batch_id: &batch_id,
                        recipient,
                        status: status.clone(),
                        code: code.clone(),
                        at: None,
                        client_ref: client_ref.clone(),
                        sender: None,
                    },
                    object,
                    received_at,
                ),
            };
            match result {
                Ok(event) => batch.events.push(event),
                Err(error) => batch.rejected.push(ElementProblem { location, error }),
            }
        }
    }
    if !any_recipients {
        // A `summary` report: counts only, nothing that names a message.
        batch.ignored = 1;
    }
    Ok(batch)
}

fn event(
    report: Report<'_>,
    raw: &Map<String, Value>,
    received_at: DateTime<Utc>,
) -> Result<ReceiptEvent, ReceiptError> {
    let recipient = address(report.recipient);
    let message_id = MessageId::parse(&format!("{}:{recipient}", report.batch_id))
        .map_err(|e| ReceiptError::InvalidFields(vec![FieldProblem::new("batch_id", e)]))?;
    let known = outcome(&report.status);
    let outcome = known.unwrap_or(Outcome::Pending);
    // Code 0 is Sinch's "delivered"; other codes explain a failure.
    let error = report.code.as_deref().filter(|c| *c != "0" && outcome == Outcome::Failed).map(|code| {
        ProviderError {
            code: code.to_owned(),
            description: None,
            // An expired message found the handset unreachable for its whole
            // validity: a later resend may reach it. Other failures are final.
            retryable: report.status.eq_ignore_ascii_case("expired"),
        }
    });
    let event_id = EventId::derive(
        Provider::Sinch,
        &[
            message_id.as_str(),
            &report.status.to_ascii_lowercase(),
            report.code.as_deref().unwrap_or(""),
            report.at.as_deref().unwrap_or(""),
        ],
    );
    Ok(ReceiptEvent {
        schema_version: SCHEMA_VERSION,
        event_id,
        provider: Provider::Sinch,
        message_id,
        outcome,
        status_recognised: known.is_some(),
        status: report.status,
        error,
        client_ref: report.client_ref,
        recipient: Some(recipient),
        sender: report.sender.map(address),
        channel: Some("sms".to_owned()),
        price: None,
        network_code: None,
        account: None,
        provider_timestamp: report
            .at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
        carrier_timestamp: None,
        authenticity: None,
        received_at,
        raw: raw.clone(),
        synthetic: false,
        destination: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The SDK end-to-end test's per-recipient report.
    const PER_RECIPIENT: &str = r#"{"type":"recipient_delivery_report_sms","batch_id":"01W4FFL35P4NC4K35SMSBATCH9","recipient":"12017777777","code":0,"status":"Delivered","at":"2024-06-06T08:17:19.210Z","operator_status_at":"2024-06-06T08:17:18Z","client_reference":"client-ref"}"#;

    /// A `full` report: recipients listed per status.
    const FULL: &str = r#"{"type":"delivery_report_sms","batch_id":"01W4FFL35P4NC4K35SMSBATCH1","total_message_count":3,"statuses":[{"code":0,"count":2,"status":"Delivered","recipients":["12017777777","12018888888"]},{"code":402,"count":1,"status":"FAILED","recipients":["12019999999"]}],"client_reference":"ref-1"}"#;

    const SUMMARY: &str = r#"{"type":"delivery_report_sms","batch_id":"01W4FFL35P4NC4K35SMSBATCH1","total_message_count":3,"statuses":[{"code":0,"count":2,"status":"Delivered"},{"code":402,"count":1,"status":"Failed"}]}"#;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    #[test]
    fn per_recipient_report() {
        let batch = parse(PER_RECIPIENT.as_bytes(), now()).expect("valid");
        let [event] = batch.events.as_slice() else { panic!("one receipt") };
        assert_eq!(event.message_id.as_str(), "01W4FFL35P4NC4K35SMSBATCH9:12017777777");
        assert_eq!((event.outcome, event.status.as_str()), (Outcome::Delivered, "Delivered"));
        assert_eq!(event.error, None);
        assert_eq!(event.client_ref.as_deref(), Some("client-ref"));
        assert_eq!(event.provider_timestamp.map(|t| t.timestamp_millis()), Some(1_717_661_839_210));
    }

    #[test]
    fn full_report_is_split_per_recipient() {
        let batch = parse(FULL.as_bytes(), now()).expect("valid");
        assert_eq!(batch.events.len(), 3);
        assert_eq!(batch.ignored, 0);
        let failed = &batch.events[2];
        assert_eq!(failed.message_id.as_str(), "01W4FFL35P4NC4K35SMSBATCH1:12019999999");
        assert_eq!(failed.outcome, Outcome::Failed);
        assert_eq!(failed.error.as_ref().map(|e| e.code.as_str()), Some("402"));
        assert_ne!(batch.events[0].event_id, batch.events[1].event_id);
    }

    #[test]
    fn summary_reports_are_ignored_not_refused() {
        let batch = parse(SUMMARY.as_bytes(), now()).expect("valid");
        assert_eq!((batch.events.len(), batch.rejected.len(), batch.ignored), (0, 0, 1));
    }

    #[test]
    fn status_words_case_insensitively() {
        for (word, expected) in [
            ("Queued", Some(Outcome::Pending)),
            ("DISPATCHED", Some(Outcome::Pending)),
            ("delivered", Some(Outcome::Delivered)),
            ("Aborted", Some(Outcome::Failed)),
            ("CANCELLED", Some(Outcome::Failed)),
            ("Rejected", Some(Outcome::Failed)),
            ("Deleted", Some(Outcome::Failed)),
            ("Failed", Some(Outcome::Failed)),
            ("Expired", Some(Outcome::Failed)),
            ("Unknown", Some(Outcome::Pending)),
            ("Teleported", None),
        ] {
            assert_eq!(outcome(word), expected, "{word}");
        }
    }

    #[test]
    fn inbound_unknown_and_incomplete_bodies() {
        assert!(matches!(
            parse(br#"{"type":"mo_text","body":"hi"}"#, now()),
            Err(ReceiptError::NotAReceipt(_))
        ));
        assert!(matches!(parse(br#"{"batch_id":"x"}"#, now()), Err(ReceiptError::InvalidFields(_))));
        let err = parse(br#"{"type":"recipient_delivery_report_sms"}"#, now()).expect_err("invalid");
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["batch_id", "recipient", "status"]);
        let bad = r#"{"type":"delivery_report_sms","batch_id":"B","statuses":[{"status":"Delivered","recipients":["1201",{"x":1}]}]}"#;
        let batch = parse(bad.as_bytes(), now()).expect("envelope ok");
        assert_eq!((batch.events.len(), batch.rejected.len()), (1, 1));
        assert_eq!(batch.rejected[0].location, "statuses[0].recipients[1]");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&body, now());
        }

        #[test]
        fn arbitrary_full_reports_never_panic(groups in prop::collection::vec((".{0,10}", prop::collection::vec(".{0,16}", 0..4)), 0..4)) {
            let statuses: Vec<Value> = groups.into_iter().map(|(s, r)| serde_json::json!({"status": s, "recipients": r})).collect();
            let body = serde_json::json!({"type": "delivery_report_sms", "batch_id": "B", "statuses": statuses});
            let _ = parse(&serde_json::to_vec(&body).unwrap_or_default(), now());
        }
    }
}
