//! Vonage SMS API delivery receipts on `/dlr/vonage`
//! (<https://developer.vonage.com/en/messaging/sms/guides/delivery-receipts>):
//! the same fields as a query string, a form body or a flat JSON object
//! depending on an account setting, signed with a `sig` parameter.
//!
//! - [`wire`]: the fields and status words, parsed into a receipt.
//! - [`signature`]: the `sig` check.
//! - [`settings`]: `VONAGE_*`, shared with the Messages API.
//! - `samples/`: sample requests.

pub mod settings;
pub mod signature;
pub mod wire;

pub use settings::{Credentials, Settings};
pub use wire::parse;

use axum::http::Method;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use dlr_shared::{Outcome, Provider};

use super::api::{AccountKey, Answer, Route, Sample, SettingNames, StatusWord, Verb};
use super::vonage_messages::VonageMessages;
use super::{
    Batch, Common, Configured, FieldProblem, Fields, ProviderApi, ProviderSettings, ReceiptError,
    decode_urlencoded, fields_from_json_object,
};
use crate::config::ConfigError;
use crate::error::IngestError;
use crate::intake::WebhookRequest;
use crate::signature::{SecretList, SignatureError, unselected};
use wire::VonageStatus;

/// The Vonage SMS API.
pub struct VonageSms;

/// What a `/dlr/vonage` request turned out to be.
pub enum Decoded {
    /// SMS API receipt fields.
    Fields(Fields),
    /// A Messages API JSON body (top-level `message_uuid`, no `messageId`):
    /// an account switched to the Messages API sends that format to the
    /// same URL, so it is taken rather than refused.
    MessagesApi(Bytes),
}

impl ProviderApi for VonageSms {
    type Settings = Settings;
    type Credentials = Credentials;
    type Decoded = Decoded;

    const PROVIDER: Provider = Provider::VonageSms;
    const NAME: &'static str = "Vonage SMS";
    const ROUTE: Route = Route {
        path: "/dlr/vonage",
        methods: &[Verb::Get, Verb::Post],
        media_types: &["application/x-www-form-urlencoded", "application/json"],
        answer: Answer::Receipt,
        large_bodies: false,
    };
    const SETTINGS: SettingNames = SettingNames {
        group: "vonage",
        mode_variable: "VONAGE_SIGNATURE_MODE",
        credential_variables: &["VONAGE_SIGNATURE_SECRET"],
        secret: true,
        account: Some(AccountKey::Field("api-key / JWT api_key")),
    };
    // `sig` is a field; a Messages API body on this route is checked by its JWT.
    const SIGNATURE_HEADERS: &'static [&'static str] = VonageMessages::SIGNATURE_HEADERS;
    // Lifecycle: accepted by the carrier, then possibly buffered for a retry,
    // then a final status (delivery receipts guide, "DLR status").
    const STATUSES: &'static [StatusWord] = &[
        StatusWord::pending("accepted", 1),
        StatusWord::pending("acceptd", 1),
        StatusWord::pending("buffered", 2),
        StatusWord::delivered("delivered"),
        StatusWord::delivered("delivrd"),
        StatusWord::failed("expired"),
        StatusWord::failed("failed"),
        StatusWord::failed("rejected"),
        StatusWord::failed("rejectd"),
        StatusWord::failed("unknown"),
        StatusWord::failed("undelivered"),
        StatusWord::failed("undeliv"),
        StatusWord::failed("deleted"),
    ];
    const SAMPLES: &'static [Sample] = &[
        Sample::post(
            "application/json",
            "s1-vonage-sms-delivered.json",
            include_str!("samples/s1-vonage-sms-delivered.json"),
            &[Outcome::Delivered],
        ),
        Sample::get(
            "s2-vonage-sms-failed.query",
            include_str!("samples/s2-vonage-sms-failed.query"),
            &[Outcome::Failed],
        ),
        Sample::post(
            "application/x-www-form-urlencoded",
            "s3-vonage-sms-part1-delivered.form",
            include_str!("samples/s3-vonage-sms-part1-delivered.form"),
            &[Outcome::Delivered],
        ),
        Sample::post(
            "application/x-www-form-urlencoded",
            "s3-vonage-sms-part2-accepted.form",
            include_str!("samples/s3-vonage-sms-part2-accepted.form"),
            &[Outcome::Pending],
        ),
        Sample::post(
            "application/json",
            "s4-vonage-sms-signed-sha256.json",
            include_str!("samples/s4-vonage-sms-signed-sha256.json"),
            &[Outcome::Delivered],
        ),
        Sample::post(
            "application/x-www-form-urlencoded",
            "vonage-sms-inbound-sms.form",
            include_str!("samples/vonage-sms-inbound-sms.form"),
            &[],
        )
        .refused(),
    ];

    fn configure(
        settings: &ProviderSettings,
        common: &Common,
    ) -> Result<Configured<Credentials>, ConfigError> {
        settings::configure(settings, common)
    }

    /// For POST the query string is ignored: Vonage does not mix the two.
    fn decode(request: &WebhookRequest) -> Result<Decoded, IngestError> {
        if request.method == Method::GET {
            let query = request.query.as_deref().unwrap_or("");
            return Ok(Decoded::Fields(decode_urlencoded(query.as_bytes(), "query")?));
        }
        if !crate::intake::is_json(&request.headers) {
            return Ok(Decoded::Fields(decode_urlencoded(&request.body, "form")?));
        }
        let object = match serde_json::from_slice::<serde_json::Value>(&request.body) {
            Ok(serde_json::Value::Object(object)) => object,
            Ok(_) => {
                return Err(ReceiptError::Malformed {
                    format: "json",
                    detail: "expected a JSON object".to_owned(),
                }
                .into());
            }
            Err(e) => return Err(ReceiptError::Malformed { format: "json", detail: e.to_string() }.into()),
        };
        if object.contains_key("message_uuid") && !object.contains_key("messageId") {
            return Ok(Decoded::MessagesApi(request.body.clone()));
        }
        Ok(Decoded::Fields(fields_from_json_object(object)?))
    }

    fn provider_of(decoded: &Decoded) -> Provider {
        match decoded {
            Decoded::Fields(_) => Self::PROVIDER,
            Decoded::MessagesApi(_) => VonageMessages::PROVIDER,
        }
    }

    fn admit(
        configured: &Configured<Credentials>,
        request: &WebhookRequest,
        decoded: &Decoded,
    ) -> Result<(), IngestError> {
        match decoded {
            Decoded::Fields(fields) => Ok(unambiguous_names(fields)?),
            Decoded::MessagesApi(body) => VonageMessages::admit(configured, request, body),
        }
    }

    fn verify(
        credentials: &Credentials,
        common: &Common,
        request: &WebhookRequest,
        decoded: &Decoded,
    ) -> Result<usize, SignatureError> {
        let fields = match decoded {
            Decoded::Fields(fields) => fields,
            Decoded::MessagesApi(body) => return VonageMessages::verify(credentials, common, request, body),
        };
        let check = |secrets: &SecretList| {
            signature::verify(fields.pairs(), secrets, credentials.method, common.freshness, common.now_unix(request))
        };
        match common.accounts.secrets_for("vonage", fields.get("api-key"), credentials.secrets.as_ref()) {
            Ok(secrets) => secrets.first_match(check),
            Err(error) => Err(unselected(error, check(&SecretList::none()).map(|()| 0))),
        }
    }

    fn parse(decoded: &Decoded, received_at: DateTime<Utc>) -> Result<Batch, ReceiptError> {
        match decoded {
            Decoded::Fields(fields) => wire::parse(fields, received_at).map(Batch::one),
            Decoded::MessagesApi(body) => VonageMessages::parse(body, received_at),
        }
    }

    fn outcome_of(word: &str) -> Option<Outcome> {
        match VonageStatus::parse(word) {
            VonageStatus::Unrecognised(_) => None,
            known => Some(known.outcome()),
        }
    }
}

/// Refuses field names containing `&` or `=`: the `sig` string joins
/// `&name=value` pairs, so such a name would let the signed text of one
/// request be re-split into different fields with the same signature.
fn unambiguous_names(fields: &Fields) -> Result<(), ReceiptError> {
    let problems: Vec<FieldProblem> = fields
        .pairs()
        .iter()
        .filter(|(name, _)| name.contains(['&', '=']))
        .map(|(name, _)| FieldProblem::new(name, "field names must not contain '&' or '='"))
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(ReceiptError::InvalidFields(problems)) }
}
