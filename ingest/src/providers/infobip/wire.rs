//! Infobip SMS delivery reports: `{"results":[...]}`, up to 100 per request.
//!
//! Infobip batches reports (its `maxBucketSize`, 100 by default) and retries
//! a failed request whole, so one malformed report must not cost its valid
//! siblings: this parser returns a [`Batch`] of the valid receipts and the
//! problems of the others, and the HTTP layer publishes the first and
//! quarantines the second.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::providers::fields::is_decimal;
use crate::providers::json::{self, address, member_text, text};
use crate::providers::{Batch, ElementProblem, FieldProblem, MAX_BATCH_ELEMENTS, ReceiptError};
use dlr_shared::domain::{EventId, MessageId, Outcome, Provider};
use dlr_shared::event::{Price, ProviderError, ReceiptEvent, SCHEMA_VERSION};

/// Infobip's status groups (message-status-codes page): the outcome comes
/// from the group, with one exception (see [`outcome`]).
fn group_outcome(group: &str) -> Option<Outcome> {
    match group.to_ascii_uppercase().as_str() {
        "1" | "PENDING" => Some(Outcome::Pending),
        "2" | "UNDELIVERABLE" => Some(Outcome::Failed),
        "3" | "DELIVERED" => Some(Outcome::Delivered),
        "4" | "EXPIRED" => Some(Outcome::Failed),
        "5" | "REJECTED" => Some(Outcome::Failed),
        _ => None,
    }
}

/// The outcome of a status `name` in `group`; `None` when neither is known.
///
/// `DELIVERED_TO_OPERATOR` is in the DELIVERED group but only means the
/// operator accepted the message: the handset may never get it, so it is
/// pending; `DELIVERED_TO_HANDSET` is the final delivery. Without a group,
/// the name's prefix (`PENDING_`, `EXPIRED_`, ...) names it.
pub fn outcome(name: &str, group: Option<&str>) -> Option<Outcome> {
    if name.eq_ignore_ascii_case("DELIVERED_TO_OPERATOR") {
        return Some(Outcome::Pending);
    }
    group
        .and_then(group_outcome)
        .or_else(|| name.split_once('_').and_then(|(prefix, _)| group_outcome(prefix)))
}

/// Parses an Infobip report body into one receipt per `results[]` element.
///
/// The body must be an object with a `results` array of at most
/// [`MAX_BATCH_ELEMENTS`]; anything else fails the whole request.
pub fn parse(body: &[u8], received_at: DateTime<Utc>) -> Result<Batch, ReceiptError> {
    let object = json::object(body)?;
    let results = match object.get("results") {
        Some(Value::Array(results)) if results.len() <= MAX_BATCH_ELEMENTS => results,
        Some(Value::Array(_)) => {
            return Err(ReceiptError::InvalidFields(vec![FieldProblem::new(
                "results",
                format!("has more than {MAX_BATCH_ELEMENTS} reports"),
            )]));
        }
        _ => {
            return Err(ReceiptError::InvalidFields(vec![FieldProblem::new(
                "results",
                "is missing or not an array",
            )]));
        }
    };
    let mut batch = Batch::default();
    for (index, element) in results.iter().enumerate() {
        match report(element, received_at) {
            Ok(event) => batch.events.push(event),
            Err(error) => {
                batch.rejected.push(ElementProblem { location: format!("results[{index}]"), error })
            }
        }
    }
    Ok(batch)
}

/// One element of `results`.
pub fn report(element: &Value, received_at: DateTime<Utc>) -> Result<ReceiptEvent, ReceiptError> {
    let Value::Object(report) = element else {
        return Err(ReceiptError::Malformed { format: "json", detail: "report is not an object".to_owned() });
    };
    let mut problems = Vec::new();
    let message_id = match text(report.get("messageId")) {
        Some(id) => MessageId::parse(&id).map_err(|e| problems.push(FieldProblem::new("messageId", e))).ok(),
        None => {
            problems.push(FieldProblem::new("messageId", "is missing"));
            None
        }
    };
    let status = report.get("status");
    let name = member_text(status, "name").or_else(|| member_text(status, "groupName"));
    if name.is_none() {
        problems.push(FieldProblem::new("status.name", "is missing"));
    }
    let error = provider_error(report.get("error"), &mut problems);
    let (Some(message_id), Some(name)) = (message_id, name) else {
        return Err(ReceiptError::InvalidFields(problems));
    };
    if !problems.is_empty() {
        return Err(ReceiptError::InvalidFields(problems));
    }
    let group = member_text(status, "groupId").or_else(|| member_text(status, "groupName"));
    let known = outcome(&name, group.as_deref());
    let outcome = known.unwrap_or(Outcome::Pending);
    let error = if outcome == Outcome::Delivered { None } else { error };
    let done_at = text(report.get("doneAt"));
    // What identifies the report: message, status, error and when it happened.
    let event_id = EventId::derive(
        Provider::Infobip,
        &[
            message_id.as_str(),
            &name.to_ascii_uppercase(),
            error.as_ref().map(|e| e.code.as_str()).unwrap_or(""),
            done_at.as_deref().unwrap_or(""),
        ],
    );
    let price = member_text(report.get("price"), "pricePerMessage")
        .filter(|p| is_decimal(p))
        .map(|amount| Price { amount, currency: member_text(report.get("price"), "currency") });
    Ok(ReceiptEvent {
        schema_version: SCHEMA_VERSION,
        event_id,
        provider: Provider::Infobip,
        message_id,
        outcome,
        status_recognised: known.is_some(),
        status: name,
        error,
        client_ref: text(report.get("callbackData")),
        recipient: text(report.get("to")).map(address),
        // `from` in the v2 reports; the v3 name is unconfirmed, `sender` is the likeliest.
        sender: text(report.get("from")).or_else(|| text(report.get("sender"))).map(address),
        channel: Some("sms".to_owned()),
        price,
        network_code: text(report.get("mccMnc")),
        account: None,
        provider_timestamp: done_at
            .as_deref()
            .or(text(report.get("sentAt")).as_deref())
            .and_then(parse_timestamp),
        carrier_timestamp: None,
        authenticity: None,
        received_at,
        raw: report.clone(),
        synthetic: false,
        destination: None,
    })
}

/// `error{id, name, description, permanent}`; id 0 (`NO_ERROR`) is no error.
/// Retryable is the opposite of `permanent`; an error without that flag is
/// taken as permanent, so nothing is resent on a guess.
fn provider_error(error: Option<&Value>, problems: &mut Vec<FieldProblem>) -> Option<ProviderError> {
    let error: &Map<String, Value> = match error {
        None | Some(Value::Null) => return None,
        Some(Value::Object(error)) => error,
        Some(_) => {
            problems.push(FieldProblem::new("error", "must be an object"));
            return None;
        }
    };
    let code = text(error.get("id"))?;
    if code == "0" {
        return None;
    }
    let description = text(error.get("description")).or_else(|| text(error.get("name")));
    let retryable = matches!(error.get("permanent"), Some(Value::Bool(false)));
    Some(ProviderError { code, description, retryable })
}

/// Infobip writes `yyyy-MM-dd'T'HH:mm:ss.SSSZ` with an offset without a
/// colon (`2019-04-09T16:01:56.494-0300`), which RFC 3339 parsers refuse;
/// `%z` takes both spellings.
pub fn parse_timestamp(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(value))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The documentation's example report (receive outbound SMS report).
    const DOCS: &str = r#"{"results":[{"bulkId":"BULK-ID-123-xyz","messageId":"MESSAGE-ID-123-xyz","to":"41793026727","sentAt":"2019-11-09T16:00:00.000+0000","doneAt":"2019-11-09T16:00:00.000+0000","smsCount":1,"mccMnc":"22801","callbackData":"DLR callback data","price":{"pricePerMessage":0.01,"currency":"EUR"},"status":{"groupId":3,"groupName":"DELIVERED","id":5,"name":"DELIVERED_TO_HANDSET","description":"Message delivered to handset"},"error":{"groupId":0,"groupName":"OK","id":0,"name":"NO_ERROR","description":"No Error","permanent":false}},{"bulkId":"BULK-ID-123-xyz","messageId":"12db39c3-7822-4e72-a3ec-c87442c0ffc5","to":"41793026834","sentAt":"2019-04-09T16:00:00.000-0300","doneAt":"2019-04-09T16:01:56.494-0300","smsCount":1,"mccMnc":"22801","price":{"pricePerMessage":0.01,"currency":"EUR"},"status":{"groupId":2,"groupName":"UNDELIVERABLE","id":9,"name":"UNDELIVERABLE_NOT_DELIVERED","description":"Message sent not delivered"},"error":{"groupId":1,"groupName":"HANDSET_ERRORS","id":27,"name":"EC_ABSENT_SUBSCRIBER","description":"Absent Subscriber","permanent":false}}]}"#;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    #[test]
    fn parses_the_documented_example() {
        let batch = parse(DOCS.as_bytes(), now()).expect("valid");
        assert!(batch.rejected.is_empty());
        let [delivered, failed] = batch.events.as_slice() else { panic!("two receipts") };
        assert_eq!(delivered.message_id.as_str(), "MESSAGE-ID-123-xyz");
        assert_eq!(
            (delivered.outcome, delivered.status.as_str()),
            (Outcome::Delivered, "DELIVERED_TO_HANDSET")
        );
        assert_eq!(delivered.error, None);
        assert_eq!(delivered.price, Some(Price { amount: "0.01".into(), currency: Some("EUR".into()) }));
        assert_eq!(delivered.network_code.as_deref(), Some("22801"));
        assert_eq!(delivered.client_ref.as_deref(), Some("DLR callback data"));
        assert_eq!(delivered.recipient.as_deref(), Some("41793026727"));
        assert_eq!(failed.outcome, Outcome::Failed);
        let error = failed.error.clone().expect("error");
        assert_eq!((error.code.as_str(), error.retryable), ("27", true));
        assert_eq!(error.description.as_deref(), Some("Absent Subscriber"));
        // -0300: 16:01:56.494 local is 19:01:56.494 UTC.
        assert_eq!(
            failed.provider_timestamp.map(|t| t.to_rfc3339()),
            Some("2019-04-09T19:01:56.494+00:00".to_owned())
        );
    }

    #[test]
    fn status_table() {
        for (name, group, expected, recognised) in [
            ("PENDING_ENROUTE", Some("1"), Outcome::Pending, true),
            ("UNDELIVERABLE_REJECTED_OPERATOR", Some("2"), Outcome::Failed, true),
            ("DELIVERED_TO_OPERATOR", Some("3"), Outcome::Pending, true),
            ("DELIVERED_TO_HANDSET", Some("3"), Outcome::Delivered, true),
            ("EXPIRED_EXPIRED", Some("4"), Outcome::Failed, true),
            ("REJECTED_NETWORK", Some("5"), Outcome::Failed, true),
            ("EXPIRED_DLR_UNKNOWN", None, Outcome::Failed, true),
            ("SOMETHING_NEW", Some("9"), Outcome::Pending, false),
        ] {
            let known = outcome(name, group);
            assert_eq!(
                (known.unwrap_or(Outcome::Pending), known.is_some()),
                (expected, recognised),
                "{name}"
            );
        }
    }

    #[test]
    fn a_bad_element_does_not_cost_its_siblings() {
        let body = r#"{"results":[{"messageId":"a1","status":{"groupId":3,"name":"DELIVERED_TO_HANDSET"}},{"status":{"name":"DELIVERED_TO_HANDSET"}},7,{"messageId":"a2","status":{"groupName":"PENDING","name":"PENDING_ENROUTE"},"error":"x"}]}"#;
        let batch = parse(body.as_bytes(), now()).expect("valid envelope");
        assert_eq!(batch.events.len(), 1);
        let locations: Vec<&str> = batch.rejected.iter().map(|r| r.location.as_str()).collect();
        assert_eq!(locations, ["results[1]", "results[2]", "results[3]"]);
        assert_eq!(batch.rejected[0].error.problems()[0].field, "messageId");
    }

    #[test]
    fn envelopes_are_checked() {
        assert!(matches!(parse(b"[]", now()), Err(ReceiptError::Malformed { .. })));
        assert!(matches!(parse(br#"{"results":{}}"#, now()), Err(ReceiptError::InvalidFields(_))));
        let many = format!(r#"{{"results":[{}]}}"#, vec!["{}"; MAX_BATCH_ELEMENTS + 1].join(","));
        assert!(matches!(parse(many.as_bytes(), now()), Err(ReceiptError::InvalidFields(_))));
        assert_eq!(parse(br#"{"results":[]}"#, now()).expect("empty").events.len(), 0);
    }

    #[test]
    fn duplicates_in_a_batch_share_an_event_id() {
        let one = r#"{"messageId":"a1","doneAt":"2019-04-09T16:01:56.494-0300","status":{"groupId":3,"name":"DELIVERED_TO_HANDSET"}}"#;
        let body = format!(r#"{{"results":[{one},{one}]}}"#);
        let batch = parse(body.as_bytes(), now()).expect("valid");
        assert_eq!(batch.events[0].event_id, batch.events[1].event_id);
    }

    #[test]
    fn timestamps_with_and_without_colon() {
        let a = parse_timestamp("2019-04-09T16:01:56.494-0300").expect("no colon");
        let b = parse_timestamp("2019-04-09T16:01:56.494-03:00").expect("colon");
        assert_eq!(a, b);
        assert!(parse_timestamp("2019-04-09 16:01").is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&body, now());
        }

        #[test]
        fn arbitrary_reports_never_panic(id in ".{0,20}", name in ".{0,20}", group in ".{0,4}", done in ".{0,30}") {
            let element = serde_json::json!({"messageId": id, "doneAt": done, "status": {"name": name, "groupId": group}});
            if let Ok(event) = report(&element, now()) {
                prop_assert_eq!(event.event_id.as_str().len(), 32);
            }
        }
    }
}
