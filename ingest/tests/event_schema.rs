//! The published JSON Schema and the events the parsers build must agree.
//!
//! `shared/schema/receipt-event.v1.json` is the contract other teams code
//! against; the Rust types are what ingest actually publishes. These tests
//! run every provider's parser on the reference samples and validate the
//! serialised events, so a field added to `ReceiptEvent` without a schema
//! change (or the other way round) fails here rather than in a consumer.

use chrono::{DateTime, Utc};
use dlr_ingest::providers::{
    Fields, REGISTRY, ReceiptError, decode_json_object, decode_urlencoded, twilio, vonage_messages,
    vonage_sms,
};
use dlr_shared::event::{ReceiptEvent, SCHEMA};
use jsonschema::Validator;
use proptest::prelude::*;
use serde_json::{Value, json};

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("schema file is JSON")
}

/// A draft 2020-12 validator that also checks `format` (date-time), which
/// the draft treats as an annotation only unless asked.
fn validator() -> Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema())
        .expect("schema compiles")
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_741_944_500, 123_000_000).unwrap_or_default()
}

fn assert_valid(validator: &Validator, event: &ReceiptEvent) {
    let instance: Value = serde_json::from_slice(&event.to_json()).expect("event serialises to JSON");
    let errors: Vec<String> =
        validator.iter_errors(&instance).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(
        errors.is_empty(),
        "{} event does not match the schema: {errors:#?}\n{instance:#}",
        event.provider
    );
    // The schema's view and the Rust view must round-trip through the same bytes.
    assert_eq!(&ReceiptEvent::from_json(&event.to_json()).expect("parses back"), event);
}

fn vonage_sms_events() -> Vec<ReceiptEvent> {
    let seed = "msisdn=14155551234&to=12015556666&network-code=310090&messageId=02000000FEA5EE9B&price=0.00570000&status=delivered&scts=1208121359&err-code=0&message-timestamp=2016-10-19+22%3A40%3A30";
    // S1 (POST-JSON) and S2 (GET, failed with err-code 3) from the reference.
    let s1 = br#"{"msisdn":"447700900123","to":"AcmeShop","network-code":"23415","messageId":"0C0000002A9F31B6","price":"0.03330000","status":"delivered","scts":"2503140926","err-code":"0","api-key":"a1b2c3d4","client-ref":"order-77812","message-timestamp":"2025-03-14 09:26:41"}"#;
    let s2 = "msisdn=491701234567&to=AcmeShop&network-code=26203&messageId=0B0000001F2E3D4C&price=0.07450000&status=failed&scts=2503141112&err-code=3&api-key=a1b2c3d4&message-timestamp=2025-03-14+10%3A12%3A07";
    let fields: Vec<Fields> = vec![
        decode_urlencoded(seed.as_bytes(), "form").expect("sample parses"),
        decode_json_object(s1).expect("sample parses"),
        decode_urlencoded(s2.as_bytes(), "query").expect("sample parses"),
        decode_urlencoded(b"messageId=A1&status=teleported&msisdn=447700900123", "form")
            .expect("sample parses"),
    ];
    fields.iter().map(|f| vonage_sms::parse(f, now()).expect("sample parses")).collect()
}

fn vonage_messages_events() -> Vec<ReceiptEvent> {
    let bodies: [&[u8]; 5] = [
        // S5: submitted, charged.
        br#"{"message_uuid":"9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f","to":"447700900123","from":"AcmeShop","timestamp":"2025-03-14T09:26:58.347Z","status":"submitted","channel":"sms","client_ref":"order-77815","usage":{"currency":"EUR","price":"0.0666"},"sms":{"count_total":"2"},"destination":{"network_code":"23415"}}"#,
        // S6: rejected with error 1330.
        br#"{"message_uuid":"5b0d4b1e-6f2a-4c3e-9a8b-1c2d3e4f5a6b","to":"447700900123","from":"447700900001","timestamp":"2025-03-14T09:27:02.118Z","status":"rejected","channel":"sms","client_ref":"order-77814","error":{"type":"https://developer.vonage.com/api-errors/messages#1330","title":"1330","detail":"Unknown - An unknown error was received from the carrier.","instance":"bf0ca0bf927b3b52e3cb03217e1a1ddf"}}"#,
        // Legacy v0.1 format.
        br#"{"message_uuid":"aaaaaaaa-bbbb-cccc-dddd-0123456789ab","to":{"type":"sms","number":"447700900000"},"from":{"type":"sms","number":"AcmeShop"},"timestamp":"2020-01-01T14:00:00.000Z","status":"undeliverable","error":{"code":1220,"reason":"Handset busy"}}"#,
        // Read receipt on an OTT channel, with an api_key.
        br#"{"message_uuid":"c0ffee00-0000-4000-8000-000000000001","to":"447700900123","from":"447700900001","timestamp":"2025-03-14T09:30:00Z","status":"read","channel":"whatsapp","api_key":"a1b2c3d4"}"#,
        // Minimal body with a status word nobody knows yet.
        br#"{"message_uuid":"c0ffee00-0000-4000-8000-000000000002","status":"clicked"}"#,
    ];
    bodies.iter().map(|b| vonage_messages::parse(b, now()).expect("sample parses")).collect()
}

fn twilio_events() -> Vec<ReceiptEvent> {
    let forms = [
        // S7: undelivered, ErrorCode 30003.
        "AccountSid=AC0123456789abcdef0123456789abcdef&ApiVersion=2010-04-01&ErrorCode=30003&From=%2B15017122661&MessageSid=SM5b1f2e3d4c5b6a79881726354a5b6c7d&MessageStatus=undelivered&RawDlrDoneDate=2503141027&SmsSid=SM5b1f2e3d4c5b6a79881726354a5b6c7d&SmsStatus=undelivered&To=%2B15558675310",
        // S8: sent via a Messaging Service.
        "AccountSid=AC0123456789abcdef0123456789abcdef&ApiVersion=2010-04-01&From=%2B15017122661&MessageSid=SM0f9e8d7c6b5a49382716f5e4d3c2b1a0&MessageStatus=sent&MessagingServiceSid=MG9752274e9e519418a7406176694466fa&SmsSid=SM0f9e8d7c6b5a49382716f5e4d3c2b1a0&SmsStatus=sent&To=%2B15558675310",
        // WhatsApp read receipt, repeated unknown field.
        "MessageSid=SM0f9e8d7c6b5a49382716f5e4d3c2b1a1&MessageStatus=read&To=whatsapp%3A%2B15558675310&From=whatsapp%3A%2B15017122661&EventType=READ&X=1&X=2",
    ];
    forms
        .iter()
        .map(|f| {
            twilio::parse(&decode_urlencoded(f.as_bytes(), "form").expect("sample parses"), now())
                .expect("sample parses")
        })
        .collect()
}

/// Every provider's sample requests (its `samples/` folder, listed in the
/// registry), every receipt of every request.
fn sample_events() -> Vec<ReceiptEvent> {
    let mut events = Vec::new();
    for entry in REGISTRY {
        for sample in entry.samples().iter().filter(|s| s.status == 200) {
            let batch = entry.read(&sample.request(&entry.route()), now()).expect("sample parses");
            assert_eq!(batch.events.len(), sample.outcomes.len(), "{}", sample.name);
            events.extend(batch.events);
        }
    }
    events
}

#[test]
fn every_sample_event_matches_the_schema() {
    let validator = validator();
    let events = sample_events();
    let providers: std::collections::HashSet<_> = events.iter().map(|e| e.provider).collect();
    assert_eq!(providers.len(), REGISTRY.len(), "every provider's samples are checked");
    for event in events {
        assert_valid(&validator, &event);
    }
}

#[test]
fn schema_is_a_valid_draft_2020_12_schema() {
    let schema = schema();
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("schema violates its meta-schema: {e}");
    }
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
}

#[test]
fn every_property_is_documented() {
    fn check(path: &str, schema: &Value) {
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return };
        for (name, property) in properties {
            let here = format!("{path}/{name}");
            assert!(
                property.get("description").and_then(Value::as_str).is_some_and(|d| !d.is_empty()),
                "{here} has no description"
            );
            check(&here, property);
        }
    }
    check("", &schema());
}

#[test]
fn vonage_sms_events_match_the_schema() {
    let validator = validator();
    for event in vonage_sms_events() {
        assert_valid(&validator, &event);
    }
}

#[test]
fn vonage_messages_events_match_the_schema() {
    let validator = validator();
    for event in vonage_messages_events() {
        assert_valid(&validator, &event);
    }
}

#[test]
fn twilio_events_match_the_schema() {
    let validator = validator();
    for event in twilio_events() {
        assert_valid(&validator, &event);
    }
}

/// Every member a fully populated event serialises must be declared, and
/// every declared member must be one the struct can produce: this is the
/// check that catches a field added on one side only.
#[test]
fn schema_properties_are_exactly_the_event_members() {
    let mut event = vonage_messages_events().remove(1);
    event.price = vonage_messages_events().remove(0).price;
    event.network_code = Some("23415".to_owned());
    event.account = Some("a1b2c3d4".to_owned());
    event.carrier_timestamp = Some("2503140926".to_owned());
    event.provider_timestamp = Some(now());
    event.synthetic = true;
    event.destination = Some(dlr_shared::Destination {
        country: Some("GB".to_owned()),
        network: Some(dlr_shared::Network {
            mcc: "234".to_owned(),
            mnc: "15".to_owned(),
            country: Some("GB".to_owned()),
        }),
    });
    event.authenticity = Some(dlr_shared::event::Authenticity::FailedLogOnly);
    let serialised: Value = serde_json::from_slice(&event.to_json()).expect("event is JSON");
    let mut members: Vec<&String> = serialised.as_object().expect("an object").keys().collect();
    let schema = schema();
    let mut declared: Vec<&String> = schema["properties"].as_object().expect("an object").keys().collect();
    members.sort();
    declared.sort();
    assert_eq!(members, declared);
    assert_valid(&validator(), &event);
}

/// Turns a valid serialised event into one specific kind of invalid one.
type Breakage = fn(&mut Value);

#[test]
fn events_with_wrong_members_do_not_validate() {
    let validator = validator();
    let event = twilio_events().remove(0);
    let good: Value = serde_json::from_slice(&event.to_json()).expect("event is JSON");
    assert!(validator.is_valid(&good));
    let cases: Vec<(&str, Breakage)> = vec![
        ("unknown outcome", |v| v["outcome"] = json!("lost")),
        ("outcome in upper case", |v| v["outcome"] = json!("DELIVERED")),
        ("unknown provider", |v| v["provider"] = json!("messagebird")),
        ("schema version 2", |v| v["schema_version"] = json!(2)),
        ("upper-case event id", |v| v["event_id"] = json!("ABCDEF0123456789ABCDEF0123456789")),
        ("short event id", |v| v["event_id"] = json!("abc")),
        ("message id with a space", |v| v["message_id"] = json!("SM 1")),
        ("empty status", |v| v["status"] = json!("")),
        ("null optional member", |v| v["client_ref"] = Value::Null),
        ("unknown top-level member", |v| v["extra"] = json!(1)),
        ("received_at not a date-time", |v| v["received_at"] = json!("yesterday")),
        ("numeric error code", |v| v["error"]["code"] = json!(30003)),
        ("error without retryable", |v| v["error"] = json!({"code": "30003"})),
        ("float price", |v| v["price"] = json!({"amount": 0.5})),
        ("exponent price", |v| v["price"] = json!({"amount": "1e-3"})),
        ("raw not an object", |v| v["raw"] = json!("a=1")),
        ("unknown authenticity", |v| v["authenticity"] = json!("trusted")),
        ("missing raw", |v| _ = v.as_object_mut().expect("an object").remove("raw")),
        ("unrecognised status that is not pending", |v| {
            v["status_recognised"] = json!(false);
            v["outcome"] = json!("failed");
        }),
    ];
    for (what, mutate) in cases {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(!validator.is_valid(&bad), "{what} was accepted: {bad:#}");
    }
}

#[test]
fn the_wrong_outcome_is_refused_by_serde_too() {
    let event = vonage_sms_events().remove(0);
    let mut value: Value = serde_json::from_slice(&event.to_json()).expect("event is JSON");
    value["outcome"] = json!("lost");
    assert!(ReceiptEvent::from_json(value.to_string().as_bytes()).is_err());
}

#[test]
fn refused_payloads_produce_no_event() {
    assert!(matches!(
        vonage_messages::parse(b"[]", now()),
        Err(ReceiptError::Malformed { format: "json", .. })
    ));
    let inbound =
        decode_urlencoded(b"MessageSid=SM1&SmsStatus=received&Body=hi", "form").expect("sample parses");
    assert!(matches!(twilio::parse(&inbound, now()), Err(ReceiptError::NotAReceipt(_))));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever a Twilio callback contains, an event the parser accepts is
    /// one the schema accepts.
    #[test]
    fn accepted_twilio_fields_always_match_the_schema(
        status in prop::sample::select(vec!["sent", "delivered", "undelivered", "read", "canceled", "Queued", "new-word"]),
        error in prop::option::of("[0-9]{1,6}"),
        to in prop::option::of(".{0,20}"),
        extra in prop::collection::vec(("[A-Za-z]{1,8}", ".{0,12}"), 0..4),
    ) {
        let mut pairs = vec![
            ("MessageSid".to_owned(), "SM0f9e8d7c6b5a49382716f5e4d3c2b1a0".to_owned()),
            ("MessageStatus".to_owned(), status.to_owned()),
        ];
        pairs.extend(error.map(|e| ("ErrorCode".to_owned(), e)));
        pairs.extend(to.map(|t| ("To".to_owned(), t)));
        pairs.extend(extra);
        if let Ok(event) = twilio::parse(&Fields::from_pairs(pairs), now()) {
            let instance: Value = serde_json::from_slice(&event.to_json()).expect("event is JSON");
            prop_assert!(validator().is_valid(&instance), "{:#}", instance);
        }
    }

    /// The same for Messages API bodies built from mixed-type members.
    #[test]
    fn accepted_messages_bodies_always_match_the_schema(
        status in prop::sample::select(vec!["submitted", "delivered", "rejected", "read", "odd"]),
        to in prop_oneof![Just(Value::Null), ".{0,16}".prop_map(Value::from), any::<u32>().prop_map(Value::from)],
        title in prop_oneof![Just(Value::Null), "[0-9]{1,5}".prop_map(Value::from), ".{0,8}".prop_map(Value::from)],
        price in prop_oneof![Just(Value::Null), "[0-9.]{0,6}".prop_map(Value::from), any::<f32>().prop_map(Value::from)],
        timestamp in prop_oneof![Just(Value::Null), Just(json!("2025-03-14T09:26:58.347Z")), ".{0,10}".prop_map(Value::from)],
    ) {
        let body = json!({
            "message_uuid": "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f",
            "status": status,
            "to": to,
            "from": {"type": "sms", "number": to},
            "error": {"title": title, "detail": ""},
            "usage": {"currency": "EUR", "price": price},
            "timestamp": timestamp,
        });
        if let Ok(event) = vonage_messages::parse(body.to_string().as_bytes(), now()) {
            let instance: Value = serde_json::from_slice(&event.to_json()).expect("event is JSON");
            prop_assert!(validator().is_valid(&instance), "{:#}", instance);
        }
    }
}
