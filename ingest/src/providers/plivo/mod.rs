//! Plivo message status callbacks on `/dlr/plivo`
//! (<https://www.plivo.com/docs/messaging/api/message/message-status-callbacks>):
//! the `url` and `method` given when sending, a form body (POST) or the same
//! fields as a query (GET), signed with `X-Plivo-Signature-V3`.
//!
//! - [`wire`]: the parameters and status words, parsed into a receipt.
//! - [`signature`]: the V3 (and, only when enabled, V2) check.
//! - [`settings`]: its variables, `PLIVO_*`.
//! - `samples/`: sample requests.

pub mod settings;
pub mod signature;
pub mod wire;

pub use settings::{Credentials, Settings};
pub use wire::parse;

use axum::http::Method;
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

/// Plivo's messaging API.
pub struct Plivo;

impl ProviderApi for Plivo {
    type Settings = Settings;
    type Credentials = Credentials;
    type Decoded = (signature::Method, Fields);

    const PROVIDER: Provider = Provider::Plivo;
    const NAME: &'static str = "Plivo";
    const ROUTE: Route = Route {
        path: "/dlr/plivo",
        methods: &[Verb::Get, Verb::Post],
        media_types: &["application/x-www-form-urlencoded"],
        answer: Answer::Receipts,
        large_bodies: false,
    };
    const SETTINGS: SettingNames = SettingNames {
        group: "plivo",
        mode_variable: "PLIVO_SIGNATURE_MODE",
        credential_variables: &["PLIVO_AUTH_TOKEN"],
        secret: true,
        account: Some(AccountKey::Field("ParentAuthID")),
    };
    const SIGNATURE_HEADERS: &'static [&'static str] = &[
        "x-plivo-signature-v3",
        "x-plivo-signature-ma-v3",
        "x-plivo-signature-v3-nonce",
        "x-plivo-signature-v2",
        "x-plivo-signature-ma-v2",
        "x-plivo-signature-v2-nonce",
    ];
    // queued -> sent, then delivered/undelivered/failed (message status callbacks).
    const STATUSES: &'static [StatusWord] = &[
        StatusWord::pending("queued", 1),
        StatusWord::pending("sent", 2),
        StatusWord::delivered("delivered"),
        StatusWord::delivered("read"),
        StatusWord::failed("failed"),
        StatusWord::failed("undelivered"),
        StatusWord::failed("rejected"),
    ];
    const SAMPLES: &'static [Sample] = &[
        Sample::post(
            "application/x-www-form-urlencoded",
            "plivo-delivered.form",
            include_str!("samples/plivo-delivered.form"),
            &[Outcome::Delivered],
        ),
        Sample::get(
            "plivo-undelivered.query",
            include_str!("samples/plivo-undelivered.query"),
            &[Outcome::Failed],
        ),
    ];

    fn configure(
        settings: &ProviderSettings,
        common: &Common,
    ) -> Result<Configured<Credentials>, ConfigError> {
        settings::configure(settings, common)
    }

    fn decode(request: &WebhookRequest) -> Result<Self::Decoded, IngestError> {
        if request.method == Method::GET {
            let query = request.query.as_deref().unwrap_or("");
            return Ok((signature::Method::Get, decode_urlencoded(query.as_bytes(), "query")?));
        }
        Ok((signature::Method::Post, decode_urlencoded(&request.body, "form")?))
    }

    fn verify(
        credentials: &Credentials,
        common: &Common,
        request: &WebhookRequest,
        (method, fields): &Self::Decoded,
    ) -> Result<usize, SignatureError> {
        let headers = signature::Headers {
            v3: header(request, "x-plivo-signature-v3"),
            ma_v3: header(request, "x-plivo-signature-ma-v3"),
            v3_nonce: header(request, "x-plivo-signature-v3-nonce"),
            v2: header(request, "x-plivo-signature-v2"),
            ma_v2: header(request, "x-plivo-signature-ma-v2"),
            v2_nonce: header(request, "x-plivo-signature-v2-nonce"),
            accept_v2: credentials.accept_v2,
        };
        // A GET's parameters are in the URL, which is signed as such.
        let empty = Fields::default();
        let form = if *method == signature::Method::Post { fields } else { &empty };
        let url = common.public_url(request);
        let check = |tokens: &SecretList| signature::verify(*method, &url, form, headers, tokens);
        let entry = match common.accounts.secrets_for("plivo", fields.get("ParentAuthID"), credentials.tokens.as_ref()) {
            Ok(tokens) => tokens.first_match(check)?,
            Err(error) => return Err(unselected(error, check(&SecretList::none()).map(|()| 0))),
        };
        let v3 = [headers.v3, headers.ma_v3].iter().flatten().any(|v| !v.trim().is_empty());
        match headers.v2_nonce {
            // V2 signs no parameters and no time: its nonce verifies once
            // (a sealed replay is a copy ingest made, maybe after the nonce was used).
            Some(nonce) if !v3 && !request.sealed_replay => {
                if credentials.v2_nonces.first_use(nonce.trim(), std::time::Instant::now()) {
                    Ok(entry)
                } else {
                    Err(SignatureError::Replayed)
                }
            }
            _ => Ok(entry),
        }
    }

    /// Refuses a callback whose signed text could have been re-split first.
    fn parse((_, fields): &Self::Decoded, received_at: DateTime<Utc>) -> Result<Batch, ReceiptError> {
        wire::unambiguous(fields).and_then(|()| wire::parse(fields, received_at)).map(Batch::one)
    }

    fn outcome_of(word: &str) -> Option<Outcome> {
        wire::outcome(word)
    }
}
