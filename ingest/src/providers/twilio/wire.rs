//! Twilio Programmable Messaging status callbacks (<https://www.twilio.com/docs/messaging/guides/track-outbound-message-status>).
//!
//! Twilio POSTs a form body; the HTTP layer decodes it into [`Fields`] (the
//! same pairs its signature covers) and this module interprets them. Twilio
//! adds parameters without notice, so unknown ones are kept in `raw` and
//! never refused.

use chrono::{DateTime, Utc};

use crate::providers::shapes::{Rule, Shapes, digits, sid, status_word};
use crate::providers::{FieldProblem, Fields, ReceiptError};
use dlr_shared::domain::{EventId, MessageId, Msisdn, Outcome, Provider};
use dlr_shared::event::{ProviderError, ReceiptEvent, SCHEMA_VERSION};

/// Twilio's `MessageStatus` words (<https://www.twilio.com/docs/messaging/api/message-resource#message-status-values>), plus any word we have never seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioStatus {
    /// A Messaging Service accepted the message.
    Accepted,
    /// Scheduled for later sending.
    Scheduled,
    /// Waiting in Twilio's queue.
    Queued,
    /// Being handed to the carrier.
    Sending,
    /// Accepted by the next carrier; may be the last status ever seen (no
    /// carrier receipt, most MMS), so it stays pending.
    Sent,
    /// The carrier confirmed delivery.
    Delivered,
    /// Read receipt (channels that have them): a message read was delivered.
    Read,
    /// The carrier says it was not delivered.
    Undelivered,
    /// Never sent (and not charged).
    Failed,
    /// A scheduled message was cancelled before it went out: it will never arrive.
    Canceled,
    /// In the API's status enum without documented semantics; treated as failed.
    PartiallyDelivered,
    /// Inbound only: Twilio is receiving a message *to* us.
    Receiving,
    /// Inbound only: Twilio received a message *to* us.
    Received,
    /// A word Twilio may add later: the receipt is authentic, so it is accepted,
    /// kept verbatim and treated as pending (and logged) rather than refused.
    Unrecognised(String),
}

impl TwilioStatus {
    /// Reads a status word, case-insensitively: Twilio sends lower case, but
    /// another spelling carries no different meaning.
    pub fn parse(word: &str) -> Self {
        match word.to_ascii_lowercase().as_str() {
            "accepted" => Self::Accepted,
            "scheduled" => Self::Scheduled,
            "queued" => Self::Queued,
            "sending" => Self::Sending,
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "undelivered" => Self::Undelivered,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            "partially_delivered" => Self::PartiallyDelivered,
            "receiving" => Self::Receiving,
            "received" => Self::Received,
            _ => Self::Unrecognised(word.to_owned()),
        }
    }

    /// True for the statuses of inbound messages, which are not receipts.
    pub fn is_inbound(&self) -> bool {
        matches!(self, Self::Receiving | Self::Received)
    }

    /// The business outcome (delivered / failed / pending); `None` for inbound statuses,
    /// which have no delivery outcome and are refused before this is asked.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Self::Delivered | Self::Read => Some(Outcome::Delivered),
            Self::Undelivered | Self::Failed | Self::Canceled | Self::PartiallyDelivered => {
                Some(Outcome::Failed)
            }
            Self::Accepted
            | Self::Scheduled
            | Self::Queued
            | Self::Sending
            | Self::Sent
            | Self::Unrecognised(_) => Some(Outcome::Pending),
            Self::Receiving | Self::Received => None,
        }
    }
}

/// Common `ErrorCode`s (<https://www.twilio.com/docs/api/errors>) and whether a resend may succeed.
///
/// Retryable is a judgement: 30003 (handset switched off or out of
/// coverage) and 30008 (unknown error, for which Twilio itself suggests
/// retrying) may succeed later. 30005 (number does not exist), 30006
/// (landline or unreachable carrier) and 30007 (carrier filtering: the same
/// content would be filtered again) will not.
fn describe_error_code(code: u32) -> (Option<&'static str>, bool) {
    let description = match code {
        30003 => "Unreachable destination handset",
        30005 => "Unknown destination handset",
        30006 => "Landline or unreachable carrier",
        30007 => "Message filtered by the carrier",
        30008 => "Unknown error",
        _ => return (None, false),
    };
    (Some(description), matches!(code, 30003 | 30008))
}

/// Fields whose repetition would make the receipt ambiguous (which id,
/// which status?). Other repeated fields are kept in `raw` as arrays.
const IDENTIFYING_FIELDS: [&str; 5] = ["MessageSid", "SmsSid", "MessageStatus", "SmsStatus", "ErrorCode"];

/// The documented shapes of Twilio's identifying parameters (Twilio's
/// "Message resource" reference: SIDs are a two-letter prefix and 32 hex
/// digits; `ErrorCode` is set for `failed` and `undelivered` messages).
const SHAPES: Shapes = Shapes {
    rules: &[
        Rule {
            name: "MessageSid",
            valid: |v| sid(v, &["SM", "MM"], 32),
            shape: "SM or MM and 32 hex digits",
        },
        Rule { name: "SmsSid", valid: |v| sid(v, &["SM", "MM"], 32), shape: "SM or MM and 32 hex digits" },
        Rule { name: "AccountSid", valid: |v| sid(v, &["AC"], 32), shape: "AC and 32 hex digits" },
        Rule { name: "MessagingServiceSid", valid: |v| sid(v, &["MG"], 32), shape: "MG and 32 hex digits" },
        Rule { name: "MessageStatus", valid: status_word, shape: "a lower-case status word" },
        Rule { name: "SmsStatus", valid: status_word, shape: "a lower-case status word" },
        Rule { name: "ErrorCode", valid: digits, shape: "a number" },
        Rule { name: "ApiVersion", valid: |v| v == "2010-04-01", shape: "2010-04-01" },
    ],
    status_fields: &["MessageStatus", "SmsStatus"],
    failure_statuses: &["failed", "undelivered"],
    error_code: "ErrorCode",
};

/// Refuses a callback whose signed text could have been re-split: see
/// [`crate::providers::shapes`]. Run before [`parse`] on every Twilio request.
pub fn unambiguous(fields: &Fields) -> Result<(), ReceiptError> {
    SHAPES.check(fields)
}

/// Interprets decoded form fields as a Twilio status callback.
///
/// Required: `MessageSid` (or its legacy twin `SmsSid`) and `MessageStatus`
/// (or `SmsStatus`); `ErrorCode` must be a number when present, because it
/// decides whether a failure is retried. Inbound statuses (`receiving`,
/// `received`) are refused as not a receipt. Everything else is optional.
pub fn parse(fields: &Fields, received_at: DateTime<Utc>) -> Result<ReceiptEvent, ReceiptError> {
    let mut problems = Vec::new();
    for name in fields.duplicated_names() {
        if IDENTIFYING_FIELDS.contains(&name) {
            problems.push(FieldProblem::new(name, "is repeated"));
        }
    }
    let message_id = required(fields, "MessageSid", "SmsSid", &mut problems).and_then(|v| {
        MessageId::parse(v).map_err(|e| problems.push(FieldProblem::new("MessageSid", e))).ok()
    });
    let status = required(fields, "MessageStatus", "SmsStatus", &mut problems);
    let error_code_text = fields.get("ErrorCode");
    let error_code = match error_code_text {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(code) => Some(code),
            Err(_) => {
                problems.push(FieldProblem::new("ErrorCode", "must be a non-negative integer"));
                None
            }
        },
    };
    let (Some(message_id), Some(status)) = (message_id, status) else {
        return Err(ReceiptError::InvalidFields(problems));
    };
    if !problems.is_empty() {
        return Err(ReceiptError::InvalidFields(problems));
    }

    let parsed_status = TwilioStatus::parse(status);
    let Some(outcome) = parsed_status.outcome() else {
        return Err(ReceiptError::NotAReceipt("this is an inbound message (status receiving/received)"));
    };
    // Lower-cased like the Vonage parsers, so that a retry spelled
    // differently still de-duplicates (the event id is derived from the provider, message id and status).
    let event_id = EventId::derive(
        Provider::Twilio,
        &[message_id.as_str(), &status.to_ascii_lowercase(), error_code_text.unwrap_or("")],
    );
    // Twilio has no error code 0, but a `0` from a proxy or a replay tool
    // means "no error", as it does for Vonage.
    let error = error_code.filter(|code| *code != 0).map(|code| {
        let (description, retryable) = describe_error_code(code);
        ProviderError { code: code.to_string(), description: description.map(str::to_owned), retryable }
    });
    let channel = channel(fields, &message_id);

    Ok(ReceiptEvent {
        schema_version: SCHEMA_VERSION,
        event_id,
        provider: Provider::Twilio,
        message_id,
        outcome,
        status_recognised: !matches!(parsed_status, TwilioStatus::Unrecognised(_)),
        status: status.to_owned(),
        error,
        client_ref: None,
        recipient: fields.get("To").map(address),
        sender: fields.get("From").map(address),
        channel: Some(channel),
        price: None,
        network_code: None,
        account: fields.get("AccountSid").map(str::to_owned),
        provider_timestamp: None,
        carrier_timestamp: fields.get("RawDlrDoneDate").map(str::to_owned),
        authenticity: None,
        received_at,
        raw: fields.to_raw(),
        synthetic: false,
        destination: None,
    })
}

/// The value of `name`, else of its legacy twin `fallback`. Problems are
/// reported under the current name, which is the one Twilio documents.
fn required<'a>(
    fields: &'a Fields,
    name: &str,
    fallback: &str,
    problems: &mut Vec<FieldProblem>,
) -> Option<&'a str> {
    let value = fields.get(name).or_else(|| fields.get(fallback));
    if value.is_none() {
        let problem = if fields.contains(name) || fields.contains(fallback) {
            "must not be empty"
        } else {
            "is missing"
        };
        problems.push(FieldProblem::new(name, problem));
    }
    value
}

/// `To`/`From`: a phone number as `+E.164` becomes digits like every other
/// provider's; anything else (`whatsapp:+1...`, short codes, alphanumeric
/// sender ids) is kept verbatim. The `+` is required because a short code
/// such as `123456` would otherwise pass for a phone number.
fn address(value: &str) -> String {
    match Msisdn::parse(value) {
        Ok(msisdn) if value.starts_with('+') => msisdn.into(),
        _ => value.to_owned(),
    }
}

/// Twilio names no channel for SMS; other channels prefix the addresses
/// (`whatsapp:+1...`) and may send `ChannelPrefix`. An `MM` sid is an MMS.
fn channel(fields: &Fields, message_id: &MessageId) -> String {
    let prefix = |name: &str| {
        fields
            .get(name)
            .and_then(|address| address.split_once(':'))
            .map(|(prefix, _)| prefix.trim())
            .filter(|p| {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            .map(str::to_owned)
    };
    fields
        .get("ChannelPrefix")
        .map(str::to_owned)
        .or_else(|| prefix("To"))
        .or_else(|| prefix("From"))
        .map(|p| p.to_ascii_lowercase())
        .unwrap_or_else(|| if message_id.as_str().starts_with("MM") { "mms" } else { "sms" }.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::decode_urlencoded;
    use proptest::prelude::*;

    /// Sample S7: undelivered with ErrorCode 30003 (signed with the test token).
    const S7: &str = "AccountSid=AC0123456789abcdef0123456789abcdef&ApiVersion=2010-04-01&ErrorCode=30003&From=%2B15017122661&MessageSid=SM5b1f2e3d4c5b6a79881726354a5b6c7d&MessageStatus=undelivered&RawDlrDoneDate=2503141027&SmsSid=SM5b1f2e3d4c5b6a79881726354a5b6c7d&SmsStatus=undelivered&To=%2B15558675310";

    /// Sample S8: sent via a Messaging Service (intermediate).
    const S8: &str = "AccountSid=AC0123456789abcdef0123456789abcdef&ApiVersion=2010-04-01&From=%2B15017122661&MessageSid=SM0f9e8d7c6b5a49382716f5e4d3c2b1a0&MessageStatus=sent&MessagingServiceSid=MG9752274e9e519418a7406176694466fa&SmsSid=SM0f9e8d7c6b5a49382716f5e4d3c2b1a0&SmsStatus=sent&To=%2B15558675310";

    const SID: &str = "SM5b1f2e3d4c5b6a79881726354a5b6c7d";

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    fn form(body: &str) -> Fields {
        decode_urlencoded(body.as_bytes(), "form").expect("decodes")
    }

    fn problem_fields(err: &ReceiptError) -> Vec<&str> {
        err.problems().iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn parses_s7_undelivered() {
        let event = parse(&form(S7), now()).expect("valid");
        assert_eq!(event.provider, Provider::Twilio);
        assert_eq!(event.message_id.as_str(), SID);
        assert_eq!(event.outcome, Outcome::Failed);
        assert!(event.status_recognised);
        assert_eq!(event.status, "undelivered");
        assert_eq!(
            event.error,
            Some(ProviderError {
                code: "30003".to_owned(),
                description: Some("Unreachable destination handset".to_owned()),
                retryable: true,
            })
        );
        assert_eq!(event.recipient.as_deref(), Some("15558675310"));
        assert_eq!(event.sender.as_deref(), Some("15017122661"));
        assert_eq!(event.account.as_deref(), Some("AC0123456789abcdef0123456789abcdef"));
        assert_eq!(event.channel.as_deref(), Some("sms"));
        assert_eq!(event.carrier_timestamp.as_deref(), Some("2503141027"));
        assert_eq!(event.provider_timestamp, None);
        assert_eq!(event.price, None);
        assert_eq!(event.client_ref, None);
        assert_eq!(event.received_at, now());
        assert_eq!(event.raw.len(), 10);
        assert_eq!(event.raw["To"], "+15558675310");
        assert_eq!(event.event_id, EventId::derive(Provider::Twilio, &[SID, "undelivered", "30003"]));
    }

    #[test]
    fn parses_s8_sent_via_messaging_service() {
        let event = parse(&form(S8), now()).expect("valid");
        assert_eq!(event.outcome, Outcome::Pending);
        assert_eq!(event.error, None);
        assert_eq!(event.carrier_timestamp, None);
        assert_eq!(event.raw["MessagingServiceSid"], "MG9752274e9e519418a7406176694466fa");
        assert_eq!(
            event.event_id,
            EventId::derive(Provider::Twilio, &["SM0f9e8d7c6b5a49382716f5e4d3c2b1a0", "sent", ""])
        );
    }

    #[test]
    fn status_table_matches_the_reference() {
        for (word, outcome, recognised) in [
            ("accepted", Outcome::Pending, true),
            ("scheduled", Outcome::Pending, true),
            ("queued", Outcome::Pending, true),
            ("sending", Outcome::Pending, true),
            ("sent", Outcome::Pending, true),
            ("delivered", Outcome::Delivered, true),
            ("read", Outcome::Delivered, true),
            ("undelivered", Outcome::Failed, true),
            ("failed", Outcome::Failed, true),
            ("canceled", Outcome::Failed, true),
            ("partially_delivered", Outcome::Failed, true),
            ("Delivered", Outcome::Delivered, true),
            ("teleported", Outcome::Pending, false),
        ] {
            let event =
                parse(&form(&format!("MessageSid={SID}&MessageStatus={word}")), now()).expect("valid");
            assert_eq!((event.outcome, event.status_recognised), (outcome, recognised), "{word}");
            assert_eq!(event.status, word);
        }
    }

    #[test]
    fn inbound_statuses_are_not_receipts() {
        for word in ["receiving", "received", "RECEIVED"] {
            let fields = form(&format!("MessageSid={SID}&MessageStatus={word}&Body=hello"));
            assert!(matches!(parse(&fields, now()), Err(ReceiptError::NotAReceipt(_))), "{word}");
        }
    }

    #[test]
    fn legacy_twins_are_the_fallback() {
        let event = parse(&form(&format!("SmsSid={SID}&SmsStatus=delivered")), now()).expect("valid");
        assert_eq!(event.message_id.as_str(), SID);
        assert_eq!(event.outcome, Outcome::Delivered);
        // An empty current name falls back too.
        let event = parse(&form(&format!("MessageSid=&SmsSid={SID}&MessageStatus=&SmsStatus=sent")), now())
            .expect("valid");
        assert_eq!((event.message_id.as_str(), event.status.as_str()), (SID, "sent"));
        // When both are present, the documented current name wins.
        let event = parse(
            &form(&format!("MessageSid={SID}&SmsSid=SMother&MessageStatus=sent&SmsStatus=queued")),
            now(),
        )
        .expect("valid");
        assert_eq!((event.message_id.as_str(), event.status.as_str()), (SID, "sent"));
    }

    #[test]
    fn missing_or_empty_required_fields_are_named() {
        let err = parse(&form("MessageStatus=sent"), now()).expect_err("invalid");
        assert_eq!(err.problems(), &[FieldProblem::new("MessageSid", "is missing")]);
        let err = parse(&form("MessageSid=&SmsSid=&MessageStatus=sent"), now()).expect_err("invalid");
        assert_eq!(err.problems(), &[FieldProblem::new("MessageSid", "must not be empty")]);
        let err = parse(&form(&format!("MessageSid={SID}")), now()).expect_err("invalid");
        assert_eq!(err.problems(), &[FieldProblem::new("MessageStatus", "is missing")]);
        let err = parse(&Fields::default(), now()).expect_err("invalid");
        assert_eq!(problem_fields(&err), vec!["MessageSid", "MessageStatus"]);
        let err = parse(&form("MessageSid=SM%20x&MessageStatus=sent"), now()).expect_err("invalid");
        assert_eq!(problem_fields(&err), vec!["MessageSid"]);
    }

    #[test]
    fn error_code_must_be_numeric_and_every_problem_is_reported() {
        let err = parse(&form("MessageStatus=&ErrorCode=busy"), now()).expect_err("invalid");
        assert_eq!(problem_fields(&err), vec!["MessageSid", "MessageStatus", "ErrorCode"]);
        let err = parse(&form(&format!("MessageSid={SID}&MessageStatus=failed&ErrorCode=-1")), now())
            .expect_err("x");
        assert_eq!(problem_fields(&err), vec!["ErrorCode"]);
    }

    #[test]
    fn error_codes_are_described() {
        for (code, description, retryable) in [
            ("30003", Some("Unreachable destination handset"), true),
            ("30005", Some("Unknown destination handset"), false),
            ("30006", Some("Landline or unreachable carrier"), false),
            ("30007", Some("Message filtered by the carrier"), false),
            ("30008", Some("Unknown error"), true),
            ("21610", None, false),
        ] {
            let fields = form(&format!("MessageSid={SID}&MessageStatus=undelivered&ErrorCode={code}"));
            let error = parse(&fields, now()).expect("valid").error.expect("error");
            assert_eq!(error.code, code);
            assert_eq!((error.description.as_deref(), error.retryable), (description, retryable), "{code}");
        }
        // Empty and zero error codes mean no error.
        for code in ["", "0"] {
            let fields = form(&format!("MessageSid={SID}&MessageStatus=delivered&ErrorCode={code}"));
            assert_eq!(parse(&fields, now()).expect("valid").error, None, "{code:?}");
        }
    }

    #[test]
    fn error_code_distinguishes_events() {
        let a = parse(&form(&format!("MessageSid={SID}&MessageStatus=failed&ErrorCode=30003")), now())
            .expect("a");
        let b = parse(&form(&format!("MessageSid={SID}&MessageStatus=failed&ErrorCode=30008")), now())
            .expect("b");
        let c = parse(&form(&format!("MessageSid={SID}&MessageStatus=FAILED&ErrorCode=30003")), now())
            .expect("c");
        assert_ne!(a.event_id, b.event_id);
        assert_eq!(a.event_id, c.event_id);
    }

    #[test]
    fn signature_and_unknown_fields_do_not_change_the_event_id() {
        let a = parse(&form(S7), now()).expect("a");
        let b = parse(&form(&format!("{S7}&NewTwilioField=x&ChannelStatusMessage=")), now()).expect("b");
        assert_eq!(a.event_id, b.event_id);
        assert_eq!(b.raw["NewTwilioField"], "x");
        assert_eq!(b.raw["ChannelStatusMessage"], "");
    }

    #[test]
    fn channel_addresses_are_kept_verbatim() {
        let fields = form(&format!(
            "MessageSid={SID}&MessageStatus=read&To=whatsapp%3A%2B15558675310&From=whatsapp%3A%2B15017122661&EventType=READ"
        ));
        let event = parse(&fields, now()).expect("valid");
        assert_eq!(event.recipient.as_deref(), Some("whatsapp:+15558675310"));
        assert_eq!(event.sender.as_deref(), Some("whatsapp:+15017122661"));
        assert_eq!(event.channel.as_deref(), Some("whatsapp"));
        assert_eq!(event.outcome, Outcome::Delivered);
    }

    #[test]
    fn channel_choice() {
        let channel = |extra: &str, sid: &str| {
            parse(&form(&format!("MessageSid={sid}&MessageStatus=sent{extra}")), now())
                .expect("valid")
                .channel
        };
        assert_eq!(channel("&ChannelPrefix=RCS&To=%2B15558675310", SID).as_deref(), Some("rcs"));
        assert_eq!(channel("&To=messenger%3A12345", SID).as_deref(), Some("messenger"));
        assert_eq!(
            channel("&To=%2B15558675310&From=whatsapp%3A%2B15017122661", SID).as_deref(),
            Some("whatsapp")
        );
        assert_eq!(channel("&To=%2B15558675310", "MM0123").as_deref(), Some("mms"));
        assert_eq!(channel("&To=%2B15558675310", SID).as_deref(), Some("sms"));
        // A colon inside something that is not a scheme is not a channel.
        assert_eq!(channel("&To=odd%20thing%3Ax", SID).as_deref(), Some("sms"));
    }

    #[test]
    fn addresses_need_a_plus_to_be_normalised() {
        let event =
            parse(&form(&format!("MessageSid={SID}&MessageStatus=sent&To=123456&From=AcmeShop")), now())
                .expect("valid");
        assert_eq!(event.recipient.as_deref(), Some("123456"));
        assert_eq!(event.sender.as_deref(), Some("AcmeShop"));
        let event =
            parse(&form(&format!("MessageSid={SID}&MessageStatus=sent&To=%2B12")), now()).expect("valid");
        assert_eq!(event.recipient.as_deref(), Some("+12"));
    }

    #[test]
    fn empty_optional_fields_mean_absent() {
        let fields = form(&format!(
            "MessageSid={SID}&MessageStatus=delivered&To=&From=&AccountSid=&RawDlrDoneDate=&ErrorCode="
        ));
        let event = parse(&fields, now()).expect("valid");
        assert_eq!((event.recipient, event.sender, event.account), (None, None, None));
        assert_eq!((event.carrier_timestamp, event.error), (None, None));
        assert_eq!(event.raw.len(), 7);
    }

    #[test]
    fn repeated_identifying_fields_are_refused_others_kept() {
        let err = parse(&form(&format!("{S7}&MessageStatus=delivered")), now()).expect_err("ambiguous");
        assert_eq!(problem_fields(&err), vec!["MessageStatus"]);
        let event = parse(&form(&format!("{S7}&Extra=1&Extra=2")), now()).expect("valid");
        assert_eq!(event.raw["Extra"], serde_json::json!(["1", "2"]));
    }

    #[test]
    fn utf8_values_are_kept() {
        let fields = form(&format!(
            "{S7}&ChannelStatusMessage=Zustellung%20fehlgeschlagen%20%E2%80%93%20%E6%9C%AA%E9%85%8D%E9%81%94"
        ));
        let event = parse(&fields, now()).expect("valid");
        assert_eq!(event.raw["ChannelStatusMessage"], "Zustellung fehlgeschlagen – 未配達");
    }

    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "MessageSid",
                "SmsSid",
                "MessageStatus",
                "SmsStatus",
                "ErrorCode",
                "To",
                "From",
                "AccountSid",
                "RawDlrDoneDate",
                "ChannelPrefix",
            ])
            .prop_map(str::to_owned),
            ".{0,12}",
        ]
    }

    fn field_value() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "delivered",
                "received",
                "sent",
                "30003",
                "0",
                "",
                " ",
                "+15558675310",
                "whatsapp:+1",
                ":",
                SID,
                "MM1",
            ])
            .prop_map(str::to_owned),
            ".{0,24}",
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_fields_never_panic(pairs in prop::collection::vec((field_name(), field_value()), 0..12)) {
            let fields = Fields::from_pairs(pairs);
            if let Ok(event) = parse(&fields, now()) {
                prop_assert_eq!(event.event_id.as_str().len(), 32);
                prop_assert_eq!(event.raw, fields.to_raw());
            }
        }

        #[test]
        fn arbitrary_form_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(fields) = decode_urlencoded(&body, "form") {
                let _ = parse(&fields, now());
            }
        }
    }
}
