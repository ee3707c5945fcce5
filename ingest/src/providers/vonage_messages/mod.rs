//! Vonage Messages API status webhooks on `/dlr/vonage-messages`
//! (<https://developer.vonage.com/en/api/messages#message-status>): JSON,
//! signed with a JWT in `Authorization` (v1 and the legacy v0.1 shape).
//!
//! - [`wire`]: the body and status words, parsed into a receipt.
//! - [`signature`]: the JWT check.
//! - [`settings`]: none of its own (Vonage's are shared with the SMS API).
//! - `samples/`: sample requests.

pub mod settings;
pub mod signature;
pub mod wire;

pub use settings::Settings;
pub use wire::parse;

use axum::http::header;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use dlr_shared::{Outcome, Provider};

use super::api::{Answer, Route, Sample, SettingNames, StatusWord, Verb, header};
use super::vonage_sms::{Credentials, VonageSms};
use super::{Batch, Common, Configured, ProviderApi, ProviderSettings, ReceiptError};
use crate::config::ConfigError;
use crate::error::IngestError;
use crate::intake::WebhookRequest;
use crate::signature::{SecretList, SignatureError, SignatureMode, unselected};
use wire::MessagesStatus;

/// The Vonage Messages API.
pub struct VonageMessages;

impl ProviderApi for VonageMessages {
    type Settings = Settings;
    type Credentials = Credentials;
    type Decoded = Bytes;

    const PROVIDER: Provider = Provider::VonageMessages;
    const NAME: &'static str = "Vonage Messages";
    const ROUTE: Route = Route {
        path: "/dlr/vonage-messages",
        methods: &[Verb::Post],
        media_types: &["application/json"],
        answer: Answer::Receipt,
        large_bodies: false,
    };
    const SETTINGS: SettingNames = VonageSms::SETTINGS;
    const SIGNATURE_HEADERS: &'static [&'static str] = &["authorization"];
    // Submitted to the carrier, then a final status (Messages API, message status).
    const STATUSES: &'static [StatusWord] = &[
        StatusWord::pending("submitted", 1),
        StatusWord::delivered("delivered"),
        StatusWord::delivered("read"),
        StatusWord::failed("rejected"),
        StatusWord::failed("undeliverable"),
    ];
    const SAMPLES: &'static [Sample] = &[
        Sample::post(
            "application/json",
            "s5-messages-submitted.json",
            include_str!("samples/s5-messages-submitted.json"),
            &[Outcome::Pending],
        ),
        Sample::post(
            "application/json",
            "s6-messages-rejected-signed.json",
            include_str!("samples/s6-messages-rejected-signed.json"),
            &[Outcome::Failed],
        ),
        Sample::post(
            "application/json",
            "messages-legacy-v0.1-undeliverable.json",
            include_str!("samples/messages-legacy-v0.1-undeliverable.json"),
            &[Outcome::Failed],
        ),
    ];

    fn configure(
        settings: &ProviderSettings,
        common: &Common,
    ) -> Result<Configured<Credentials>, ConfigError> {
        super::vonage_sms::settings::configure(settings, common)
    }

    fn decode(request: &WebhookRequest) -> Result<Bytes, IngestError> {
        Ok(request.body.clone())
    }

    /// Vonage documents that a callback may come unsigned after an internal
    /// error and that the receiver should answer 5xx so that it is retried:
    /// under `enforce` such a callback gets 503 instead of a final 401.
    fn admit(
        configured: &Configured<Credentials>,
        request: &WebhookRequest,
        _body: &Bytes,
    ) -> Result<(), IngestError> {
        let unsigned = header(request, header::AUTHORIZATION.as_str()).is_none();
        if configured.mode == Some(SignatureMode::Enforce) && unsigned {
            return Err(IngestError::UnsignedRetry);
        }
        Ok(())
    }

    fn verify(
        credentials: &Credentials,
        common: &Common,
        request: &WebhookRequest,
        body: &Bytes,
    ) -> Result<usize, SignatureError> {
        let authorization = header(request, header::AUTHORIZATION.as_str());
        let account = signature::unverified_api_key(authorization);
        let check = |secrets: &SecretList| {
            signature::verify(authorization, body, secrets, common.freshness, common.now_unix(request)).map(|_| ())
        };
        match common.accounts.secrets_for("vonage", account.as_deref(), credentials.secrets.as_ref()) {
            Ok(secrets) => secrets.first_match(check),
            Err(error) => Err(unselected(error, check(&SecretList::none()).map(|()| 0))),
        }
    }

    fn parse(body: &Bytes, received_at: DateTime<Utc>) -> Result<Batch, ReceiptError> {
        wire::parse(body, received_at).map(Batch::one)
    }

    fn outcome_of(word: &str) -> Option<Outcome> {
        match MessagesStatus::parse(word) {
            MessagesStatus::Unrecognised(_) => None,
            known => Some(known.outcome()),
        }
    }
}
