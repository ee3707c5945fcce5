//! Infobip SMS delivery reports on `/dlr/infobip`
//! (status names: <https://www.infobip.com/docs/essentials/api-essentials/response-status-and-error-codes>):
//! `{"results":[...]}`, up to 100 reports per request, protected with HTTP
//! Basic (the documented subscription security setting we can verify).
//!
//! Accounts: a report names no account Basic could vouch for (Basic covers
//! no byte of the body, and the report's fields, `bulkId`, `messageId`,
//! `to`, ... name none; delivery report webhook,
//! <https://www.infobip.com/docs/api/channels/sms/sms-messaging/logs-and-status-reports/receive-outbound-sms-message-report>).
//! So each account gets its own report URL, `/dlr/infobip/{account}`, as the
//! `notifyUrl` or in its subscription, with its own credentials in the
//! accounts file's `[infobip]`: the path names the account, only that
//! account's credentials verify it, and it is the event's `account`.
//! `/dlr/infobip` keeps `INFOBIP_BASIC_AUTH`.
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
use chrono::{DateTime, Utc};
use dlr_shared::{Outcome, Provider};

use super::api::{AccountKey, Answer, PathBody, Route, Sample, SettingNames, StatusWord, Verb, header};
use super::{Batch, Common, Configured, ProviderApi, ProviderSettings, ReceiptError};
use crate::config::ConfigError;
use crate::error::IngestError;
use crate::intake::WebhookRequest;
use crate::signature::{SecretList, SignatureError, basic, unselected};

/// Infobip's SMS API.
pub struct Infobip;

impl ProviderApi for Infobip {
    type Settings = Settings;
    type Credentials = Option<SecretList>;
    type Decoded = PathBody;

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
        account: Some(AccountKey::PathSegment),
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
        common: &Common,
    ) -> Result<Configured<Option<SecretList>>, ConfigError> {
        settings::configure(settings, common)
    }

    fn decode(request: &WebhookRequest) -> Result<PathBody, IngestError> {
        Ok(PathBody::of(&Self::ROUTE, request))
    }

    /// The credentials of the account the path names, or on `/dlr/infobip`
    /// the variable's.
    fn verify(
        credentials: &Option<SecretList>,
        common: &Common,
        request: &WebhookRequest,
        decoded: &PathBody,
    ) -> Result<usize, SignatureError> {
        let authorization = header(request, header::AUTHORIZATION.as_str());
        let check = |list: &SecretList| list.first_match(|one| basic::verify(authorization, one));
        match common.accounts.by_path("infobip", decoded.account.as_deref(), credentials.as_ref()) {
            Ok(list) => check(list),
            Err(error) => Err(unselected(error, basic::verify(authorization, &SecretList::none()).map(|()| 0))),
        }
    }

    fn parse(decoded: &PathBody, received_at: DateTime<Utc>) -> Result<Batch, ReceiptError> {
        wire::parse(&decoded.body, received_at).map(|batch| decoded.label(batch))
    }

    fn outcome_of(word: &str) -> Option<Outcome> {
        wire::outcome(word, None)
    }
}
