//! Twilio Programmable Messaging status callbacks on `/dlr/twilio`
//! (<https://www.twilio.com/docs/messaging/api/message-resource#message-status-values>):
//! a form body signed with `X-Twilio-Signature` over the URL and parameters.
//!
//! - [`wire`]: the parameters and status words, parsed into a receipt.
//! - [`signature`]: the `X-Twilio-Signature` check.
//! - [`settings`]: its variables, `TWILIO_*`.
//! - `samples/`: sample requests.

pub mod settings;
pub mod signature;
pub mod wire;

pub use settings::Settings;
pub use wire::parse;

use chrono::{DateTime, Utc};
use dlr_shared::{Outcome, Provider};

use super::api::{AccountKey, Answer, Route, Sample, SettingNames, StatusWord, Verb, header};
use super::{
    Batch, Common, Configured, Fields, ProviderApi, ProviderSettings, ReceiptError, decode_urlencoded,
};
use crate::config::ConfigError;
use crate::error::IngestError;
use crate::intake::WebhookRequest;
use crate::signature::{SecretList, SignatureError, unselected};
use wire::TwilioStatus;

/// Twilio's messaging API.
pub struct Twilio;

impl ProviderApi for Twilio {
    type Settings = Settings;
    type Credentials = Option<SecretList>;
    type Decoded = Fields;

    const PROVIDER: Provider = Provider::Twilio;
    const NAME: &'static str = "Twilio";
    const ROUTE: Route = Route {
        path: "/dlr/twilio",
        methods: &[Verb::Post],
        media_types: &["application/x-www-form-urlencoded"],
        answer: Answer::Receipt,
        large_bodies: false,
    };
    const SETTINGS: SettingNames = SettingNames {
        group: "twilio",
        mode_variable: "TWILIO_SIGNATURE_MODE",
        credential_variables: &["TWILIO_AUTH_TOKEN"],
        secret: true,
        account: Some(AccountKey::Field("AccountSid")),
    };
    const SIGNATURE_HEADERS: &'static [&'static str] =
        &["x-twilio-signature", "x-twilio-webhooks-signature-settings"];
    // accepted (by a Messaging Service) -> scheduled -> queued -> sending ->
    // sent, then a final status (Message resource, "Message status values").
    const STATUSES: &'static [StatusWord] = &[
        StatusWord::pending("accepted", 1),
        StatusWord::pending("scheduled", 2),
        StatusWord::pending("queued", 3),
        StatusWord::pending("sending", 4),
        StatusWord::pending("sent", 5),
        StatusWord::delivered("delivered"),
        StatusWord::delivered("read"),
        StatusWord::failed("undelivered"),
        StatusWord::failed("failed"),
        StatusWord::failed("canceled"),
        StatusWord::failed("partially_delivered"),
    ];
    const SAMPLES: &'static [Sample] = &[
        Sample::post(
            "application/x-www-form-urlencoded",
            "s7-twilio-undelivered-signed.form",
            include_str!("samples/s7-twilio-undelivered-signed.form"),
            &[Outcome::Failed],
        ),
        Sample::post(
            "application/x-www-form-urlencoded",
            "s8-twilio-sent-messaging-service.form",
            include_str!("samples/s8-twilio-sent-messaging-service.form"),
            &[Outcome::Pending],
        ),
    ];

    fn configure(
        settings: &ProviderSettings,
        common: &Common,
    ) -> Result<Configured<Option<SecretList>>, ConfigError> {
        settings::configure(settings, common)
    }

    fn decode(request: &WebhookRequest) -> Result<Fields, IngestError> {
        Ok(decode_urlencoded(&request.body, "form")?)
    }

    fn verify(
        tokens: &Option<SecretList>,
        common: &Common,
        request: &WebhookRequest,
        fields: &Fields,
    ) -> Result<usize, SignatureError> {
        let signature_header = header(request, "x-twilio-signature");
        let settings_header = header(request, "x-twilio-webhooks-signature-settings");
        let url = common.public_url(request);
        let check =
            |tokens: &SecretList| signature::verify(&url, fields.pairs(), signature_header, settings_header, tokens);
        match common.accounts.secrets_for("twilio", fields.get("AccountSid"), tokens.as_ref()) {
            Ok(tokens) => tokens.first_match(check),
            Err(error) => Err(unselected(error, check(&SecretList::none()).map(|()| 0))),
        }
    }

    /// Refuses a callback whose signed text could have been re-split first.
    fn parse(fields: &Fields, received_at: DateTime<Utc>) -> Result<Batch, ReceiptError> {
        wire::unambiguous(fields).and_then(|()| wire::parse(fields, received_at)).map(Batch::one)
    }

    fn outcome_of(word: &str) -> Option<Outcome> {
        match TwilioStatus::parse(word) {
            TwilioStatus::Unrecognised(_) => None,
            known => known.outcome(),
        }
    }
}
