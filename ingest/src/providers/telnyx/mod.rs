//! Telnyx messaging webhooks v2 on `/dlr/telnyx`
//! (<https://developers.telnyx.com/docs/messaging/messages/receiving-webhooks>):
//! JSON `message.sent` / `message.finalized`, a status per recipient,
//! signed with Ed25519.
//!
//! Accounts: the signing key pair belongs to the Telnyx account (the portal
//! shows its public key), and the signed body names that account in
//! `data.payload.organization_id` (message payload,
//! <https://developers.telnyx.com/api-reference/callbacks/delivery-update>).
//! With a `[telnyx]` table in the accounts file, that field selects the
//! keys, so one account's key never verifies a webhook naming another; it
//! is also the event's `account`.
//!
//! - [`wire`]: the body and status words, parsed into receipts.
//! - [`signature`]: the Ed25519 check.
//! - [`settings`]: its variables, `TELNYX_*`.
//! - `samples/`: sample requests.

pub mod settings;
pub mod signature;
pub mod wire;

pub use settings::{Keys, Settings};
pub use wire::parse;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use dlr_shared::{Outcome, Provider};

use super::api::{AccountKey, Answer, Route, Sample, SettingNames, StatusWord, Verb, header};
use super::{Batch, Common, Configured, ProviderApi, ProviderSettings, ReceiptError};
use crate::config::ConfigError;
use crate::error::IngestError;
use crate::intake::WebhookRequest;
use crate::signature::{SignatureError, unselected};
use signature::PublicKeys;
use wire::TelnyxStatus;

/// Telnyx's messaging API.
pub struct Telnyx;

impl ProviderApi for Telnyx {
    type Settings = Settings;
    type Credentials = Keys;
    type Decoded = Bytes;

    const PROVIDER: Provider = Provider::Telnyx;
    const NAME: &'static str = "Telnyx";
    const ROUTE: Route = Route {
        path: "/dlr/telnyx",
        methods: &[Verb::Post],
        media_types: &["application/json"],
        answer: Answer::Receipts,
        large_bodies: false,
    };
    const SETTINGS: SettingNames = SettingNames {
        group: "telnyx",
        mode_variable: "TELNYX_SIGNATURE_MODE",
        credential_variables: &["TELNYX_PUBLIC_KEY"],
        secret: false,
        account: Some(AccountKey::Field("data.payload.organization_id")),
    };
    const SIGNATURE_HEADERS: &'static [&'static str] = &["telnyx-signature-ed25519", "telnyx-timestamp"];
    // queued -> sending -> sent, then a final status; delivery_unconfirmed
    // is kept pending and comes only once sending is over (receiving
    // webhooks, "Message status").
    const STATUSES: &'static [StatusWord] = &[
        StatusWord::pending("queued", 1),
        StatusWord::pending("sending", 2),
        StatusWord::pending("sent", 3),
        StatusWord::pending("delivery_unconfirmed", 4),
        StatusWord::delivered("delivered"),
        StatusWord::failed("sending_failed"),
        StatusWord::failed("delivery_failed"),
        StatusWord::failed("expired"),
    ];
    const SAMPLES: &'static [Sample] = &[
        Sample::post(
            "application/json",
            "telnyx-message-finalized-delivered.json",
            include_str!("samples/telnyx-message-finalized-delivered.json"),
            &[Outcome::Delivered],
        ),
        Sample::post(
            "application/json",
            "telnyx-message-finalized-failed.json",
            include_str!("samples/telnyx-message-finalized-failed.json"),
            &[Outcome::Failed],
        ),
    ];

    fn configure(settings: &ProviderSettings, common: &Common) -> Result<Configured<Keys>, ConfigError> {
        settings::configure(settings, common)
    }

    fn decode(request: &WebhookRequest) -> Result<Bytes, IngestError> {
        Ok(request.body.clone())
    }

    /// With accounts configured, the keys of the account the body names
    /// (the signature covers the body, so the name cannot be changed).
    fn verify(
        keys: &Keys,
        common: &Common,
        request: &WebhookRequest,
        body: &Bytes,
    ) -> Result<usize, SignatureError> {
        let check = |keys: &PublicKeys| {
            signature::verify_entry(
                body,
                header(request, "telnyx-signature-ed25519"),
                header(request, "telnyx-timestamp"),
                keys,
                common.freshness.max_future,
                common.now_unix(request),
            )
        };
        let selected = if keys.accounts.is_empty() {
            keys.flat.as_ref().ok_or(SignatureError::Missing("secret"))
        } else {
            wire::account(body)
                .ok_or(SignatureError::Missing("account"))
                .and_then(|account| keys.accounts.get(&account).ok_or(SignatureError::UnknownAccount))
        };
        match selected {
            Ok(keys) => check(keys),
            Err(error) => Err(unselected(error, check(&PublicKeys::none()))),
        }
    }

    fn parse(body: &Bytes, received_at: DateTime<Utc>) -> Result<Batch, ReceiptError> {
        wire::parse(body, received_at)
    }

    fn outcome_of(word: &str) -> Option<Outcome> {
        match TelnyxStatus::parse(word) {
            TelnyxStatus::Unrecognised(_) => None,
            known => Some(known.outcome()),
        }
    }
}
