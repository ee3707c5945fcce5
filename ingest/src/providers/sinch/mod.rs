//! Sinch SMS delivery reports on `/dlr/sinch`
//! (<https://developers.sinch.com/docs/sms/api-reference/sms/tag/Delivery-reports/>):
//! JSON per-recipient or batch reports, signed with
//! `x-sinch-webhook-signature` or protected with HTTP Basic.
//!
//! - [`wire`]: the body and status words, parsed into receipts.
//! - [`signature`]: the HMAC check (Basic is [`crate::signature::basic`]).
//! - [`settings`]: its variables, `SINCH_*`.
//! - `samples/`: sample requests.

pub mod settings;
pub mod signature;
pub mod wire;

pub use settings::{Credentials, Settings};
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
use crate::signature::{SignatureError, basic};

/// Sinch's SMS API.
pub struct Sinch;

impl ProviderApi for Sinch {
    type Settings = Settings;
    type Credentials = Credentials;
    type Decoded = Bytes;

    const PROVIDER: Provider = Provider::Sinch;
    const NAME: &'static str = "Sinch";
    const ROUTE: Route = Route {
        path: "/dlr/sinch",
        methods: &[Verb::Post],
        media_types: &["application/json"],
        answer: Answer::Receipts,
        large_bodies: true,
    };
    const SETTINGS: SettingNames = SettingNames {
        group: "sinch",
        mode_variable: "SINCH_SIGNATURE_MODE",
        credential_variables: &["SINCH_WEBHOOK_SECRET", "SINCH_BASIC_AUTH"],
        secret: true,
        account_field: None,
    };
    const SIGNATURE_HEADERS: &'static [&'static str] = &[
        "authorization",
        signature::SIGNATURE_HEADER,
        signature::NONCE_HEADER,
        signature::TIMESTAMP_HEADER,
        signature::ALGORITHM_HEADER,
    ];
    // Queued -> Dispatched, then a final status; Unknown (kept pending)
    // comes after Dispatched, when the operator gave no answer.
    const STATUSES: &'static [StatusWord] = &[
        StatusWord::pending("Queued", 1),
        StatusWord::pending("Dispatched", 2),
        StatusWord::pending("Unknown", 3),
        StatusWord::delivered("Delivered"),
        StatusWord::failed("Aborted"),
        StatusWord::failed("Cancelled"),
        StatusWord::failed("Rejected"),
        StatusWord::failed("Deleted"),
        StatusWord::failed("Failed"),
        StatusWord::failed("Expired"),
    ];
    const SAMPLES: &'static [Sample] = &[
        Sample::post(
            "application/json",
            "sinch-recipient-delivered.json",
            include_str!("samples/sinch-recipient-delivered.json"),
            &[Outcome::Delivered],
        ),
        Sample::post(
            "application/json",
            "sinch-full.json",
            include_str!("samples/sinch-full.json"),
            &[Outcome::Delivered, Outcome::Delivered, Outcome::Failed],
        ),
        // A summary names no recipient: answered 200, nothing stored.
        Sample::post(
            "application/json",
            "sinch-summary.json",
            include_str!("samples/sinch-summary.json"),
            &[],
        ),
    ];

    fn configure(
        settings: &ProviderSettings,
        _common: &Common,
    ) -> Result<Configured<Credentials>, ConfigError> {
        settings::configure(settings)
    }

    fn decode(request: &WebhookRequest) -> Result<Bytes, IngestError> {
        Ok(request.body.clone())
    }

    /// A request is checked by the scheme it carries; Basic only when it
    /// carries no HMAC signature (or no secret is configured).
    fn verify(
        credentials: &Credentials,
        common: &Common,
        request: &WebhookRequest,
        body: &Bytes,
    ) -> Result<usize, SignatureError> {
        let authorization = header(request, header::AUTHORIZATION.as_str());
        let signature = header(request, signature::SIGNATURE_HEADER);
        let signed = signature::is_signed(signature);
        match (&credentials.basic, &credentials.hmac) {
            (Some(basic), None) => basic.first_match(|one| basic::verify(authorization, one)),
            (Some(basic), Some(_)) if !signed => basic.first_match(|one| basic::verify(authorization, one)),
            (_, Some(secrets)) => {
                let algorithm =
                    signature::Algorithm::from_header(header(request, signature::ALGORITHM_HEADER))?;
                secrets.first_match(|secret| {
                    signature::verify_with(
                        algorithm,
                        body,
                        signature,
                        header(request, signature::NONCE_HEADER),
                        header(request, signature::TIMESTAMP_HEADER),
                        secret,
                        common.freshness,
                        common.now_unix(request),
                    )
                })
            }
            (None, None) => Err(SignatureError::Missing("secret")),
        }
    }

    fn parse(body: &Bytes, received_at: DateTime<Utc>) -> Result<Batch, ReceiptError> {
        wire::parse(body, received_at)
    }

    fn outcome_of(word: &str) -> Option<Outcome> {
        wire::outcome(word)
    }
}
