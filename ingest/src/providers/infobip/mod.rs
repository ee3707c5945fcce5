//! Infobip SMS delivery reports on `/dlr/infobip`
//! (status names: <https://www.infobip.com/docs/essentials/api-essentials/response-status-and-error-codes>):
//! `{"results":[...]}`, up to 100 reports per request, protected with HTTP
//! Basic (the documented subscription security setting we can verify).
//!
//! - [`wire`]: the body and status names, parsed into receipts.
//! - Basic authentication is [`crate::signature::basic`].
//! - [`settings`]: its variables, `INFOBIP_*`.
//! - `samples/`: sample requests.

pub mod settings;
pub mod wire;

pub use settings::Settings;
pub use wire::parse;

use axum::http::header;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use dlr_shared::{Outcome, Provider};

use super::api::{Answer, Route, Sample, SettingNames, StatusWord, Verb, header};
use super::{Batch, Common, Configured, ProviderApi, ProviderSettings, ReceiptError};
use crate::config::ConfigError;
use crate::error::IngestError;
use crate::intake::WebhookRequest;
use crate::signature::{SecretList, SignatureError, basic};

/// Infobip's SMS API.
pub struct Infobip;

impl ProviderApi for Infobip {
    type Settings = Settings;
    type Credentials = Option<SecretList>;
    type Decoded = Bytes;

    const PROVIDER: Provider = Provider::Infobip;
    const NAME: &'static str = "Infobip";
    const ROUTE: Route = Route {
        path: "/dlr/infobip",
        methods: &[Verb::Post],
        media_types: &["application/json"],
        answer: Answer::Receipts,
        large_bodies: true,
    };
    const SETTINGS: SettingNames = SettingNames {
        group: "infobip",
        mode_variable: "INFOBIP_AUTH_MODE",
        credential_variables: &["INFOBIP_BASIC_AUTH"],
        secret: true,
        account_field: None,
    };
    const SIGNATURE_HEADERS: &'static [&'static str] = &["authorization"];
    // PENDING_ACCEPTED (accepted by Infobip) -> PENDING_ENROUTE (sent to the
    // operator) -> PENDING_WAITING_DELIVERY (acknowledged by the operator,
    // report awaited) -> DELIVERED_TO_OPERATOR, then a final status
    // (response status and error codes).
    const STATUSES: &'static [StatusWord] = &[
        StatusWord::pending("PENDING_ACCEPTED", 1),
        StatusWord::pending("PENDING_ENROUTE", 2),
        StatusWord::pending("PENDING_WAITING_DELIVERY", 3),
        StatusWord::pending("DELIVERED_TO_OPERATOR", 4),
        StatusWord::delivered("DELIVERED_TO_HANDSET"),
        StatusWord::failed("UNDELIVERABLE_REJECTED_OPERATOR"),
        StatusWord::failed("UNDELIVERABLE_NOT_DELIVERED"),
        StatusWord::failed("EXPIRED_EXPIRED"),
        StatusWord::failed("EXPIRED_DLR_UNKNOWN"),
        StatusWord::failed("REJECTED_NETWORK"),
    ];
    const SAMPLES: &'static [Sample] = &[Sample::post(
        "application/json",
        "infobip-results.json",
        include_str!("samples/infobip-results.json"),
        &[Outcome::Delivered, Outcome::Failed, Outcome::Pending],
    )];

    fn configure(
        settings: &ProviderSettings,
        _common: &Common,
    ) -> Result<Configured<Option<SecretList>>, ConfigError> {
        settings::configure(settings)
    }

    fn decode(request: &WebhookRequest) -> Result<Bytes, IngestError> {
        Ok(request.body.clone())
    }

    fn verify(
        credentials: &Option<SecretList>,
        _common: &Common,
        request: &WebhookRequest,
        _body: &Bytes,
    ) -> Result<usize, SignatureError> {
        let credentials = credentials.as_ref().ok_or(SignatureError::Missing("secret"))?;
        let authorization = header(request, header::AUTHORIZATION.as_str());
        credentials.first_match(|one| basic::verify(authorization, one))
    }

    fn parse(body: &Bytes, received_at: DateTime<Utc>) -> Result<Batch, ReceiptError> {
        wire::parse(body, received_at)
    }

    fn outcome_of(word: &str) -> Option<Outcome> {
        wire::outcome(word, None)
    }
}
