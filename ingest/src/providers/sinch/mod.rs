//! Sinch SMS delivery reports on `/dlr/sinch`
//! (<https://developers.sinch.com/docs/sms/api-reference/sms/tag/Delivery-reports/>):
//! JSON per-recipient or batch reports, signed with
//! `x-sinch-webhook-signature` or protected with HTTP Basic.
//!
//! Accounts: a delivery report names no account (its fields are `batch_id`,
//! `recipient`, `status`, `code`, `client_reference`, ...; no service plan;
//! [delivery reports](https://developers.sinch.com/docs/sms/api-reference/sms/tag/Delivery-reports/)),
//! but the callback URL is set per service plan in the dashboard or per
//! batch (`callback_url`). So each service plan gets its own URL,
//! `/dlr/sinch/{service plan}`, with its own credentials in the accounts
//! file's `[sinch]` (callback secrets or Basic `user:password`, checked by
//! the scheme the request carries): the path names the account, only its
//! credentials verify it, and it is the event's `account`. `/dlr/sinch`
//! keeps `SINCH_WEBHOOK_SECRET` / `SINCH_BASIC_AUTH`.
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
use chrono::{DateTime, Utc};
use dlr_shared::{Outcome, Provider};

use super::api::{AccountKey, Answer, PathBody, Route, Sample, SettingNames, StatusWord, Verb, header};
use super::{Batch, Common, Configured, ProviderApi, ProviderSettings, ReceiptError};
use crate::config::ConfigError;
use crate::error::IngestError;
use crate::intake::WebhookRequest;
use crate::signature::{SecretList, SignatureError, basic, unselected};

/// Sinch's SMS API.
pub struct Sinch;

impl ProviderApi for Sinch {
    type Settings = Settings;
    type Credentials = Credentials;
    type Decoded = PathBody;

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
        account: Some(AccountKey::PathSegment),
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
        common: &Common,
    ) -> Result<Configured<Credentials>, ConfigError> {
        settings::configure(settings, common)
    }

    fn decode(request: &WebhookRequest) -> Result<PathBody, IngestError> {
        Ok(PathBody::of(&Self::ROUTE, request))
    }

    /// A request is checked by the scheme it carries; on `/dlr/sinch`, Basic
    /// only when it carries no HMAC signature (or no secret is configured);
    /// on `/dlr/sinch/{account}`, with that account's credentials only.
    fn verify(
        credentials: &Credentials,
        common: &Common,
        request: &WebhookRequest,
        decoded: &PathBody,
    ) -> Result<usize, SignatureError> {
        let authorization = header(request, header::AUTHORIZATION.as_str());
        let signature = header(request, signature::SIGNATURE_HEADER);
        let signed = signature::is_signed(signature);
        let basic_check = |list: &SecretList| list.first_match(|one| basic::verify(authorization, one));
        let hmac_verify = |secrets: &SecretList| {
            let algorithm = signature::Algorithm::from_header(header(request, signature::ALGORITHM_HEADER))?;
            signature::verify_with(
                algorithm,
                &decoded.body,
                signature,
                header(request, signature::NONCE_HEADER),
                header(request, signature::TIMESTAMP_HEADER),
                secrets,
                common.freshness,
                common.now_unix(request),
            )
        };
        let hmac_check = |secrets: &SecretList| secrets.first_match(hmac_verify);
        if let Some(account) = decoded.account.as_deref() {
            return match common.accounts.by_path("sinch", Some(account), None) {
                Ok(list) if signed => hmac_check(list),
                Ok(list) => basic_check(list),
                Err(error) if signed => Err(unselected(error, hmac_verify(&SecretList::none()).map(|()| 0))),
                Err(error) => {
                    Err(unselected(error, basic::verify(authorization, &SecretList::none()).map(|()| 0)))
                }
            };
        }
        match (&credentials.basic, &credentials.hmac) {
            (Some(basic), None) => basic_check(basic),
            (Some(basic), Some(_)) if !signed => basic_check(basic),
            (_, Some(secrets)) => hmac_check(secrets),
            (None, None) => Err(SignatureError::Missing("secret")),
        }
    }

    fn parse(decoded: &PathBody, received_at: DateTime<Utc>) -> Result<Batch, ReceiptError> {
        wire::parse(&decoded.body, received_at).map(|batch| decoded.label(batch))
    }

    fn outcome_of(word: &str) -> Option<Outcome> {
        wire::outcome(word)
    }
}
