//! The one trait every provider API implements, and what it describes.
//!
//! A provider is a folder under `providers/` (wire format, authenticity
//! check, settings, sample requests) whose `mod.rs` implements
//! [`ProviderApi`]; [`super::registry`] lists them. Everything generic (the
//! route table, the intake path, metric label sets, the quarantine's header
//! allowlist, start-up configuration, the deploy checks' variables, the
//! pending ranks the worker installs) is driven by that list, so that adding
//! a provider is one folder and one registry line.

use chrono::{DateTime, Utc};
use dlr_shared::{Outcome, Provider};
use url::Url;

use super::ProviderSettings;
use super::{Batch, ReceiptError};
use crate::accounts::Accounts;
use crate::config::ConfigError;
use crate::error::IngestError;
use crate::intake::WebhookRequest;
use crate::signature::{Freshness, SignatureError, SignatureMode};

/// A provider API: how its requests are routed, decoded, verified and
/// parsed, and what it is configured with.
///
/// Every request takes the same way ([`crate::intake::receive`]): the
/// method and media type are checked against [`ProviderApi::ROUTE`], then
/// [`ProviderApi::decode`], [`ProviderApi::admit`], the authenticity check
/// ([`ProviderApi::verify`], run according to the mode), [`ProviderApi::parse`]
/// into a batch (a single receipt is a batch of one), and one publish.
pub trait ProviderApi: Send + Sync + 'static {
    /// Its flags and environment variables; the registry flattens them
    /// into `ingest --help`.
    type Settings: clap::Args + ModeSetting + Clone + std::fmt::Debug + Default + Send + Sync + 'static;
    /// What its requests are verified with, once configured.
    type Credentials: Send + Sync + 'static;
    /// A request decoded as far as the authenticity check and the parser need.
    type Decoded: Send + Sync;

    /// Which provider API this is: the event's `provider`, the metric label.
    const PROVIDER: Provider;
    /// Its name for people (the README's provider table).
    const NAME: &'static str;
    /// Its webhook route.
    const ROUTE: Route;
    /// The variables that configure it.
    const SETTINGS: SettingNames;
    /// Request headers its authenticity check reads: a quarantine copy keeps
    /// them, so that a refused request can be verified again on replay.
    const SIGNATURE_HEADERS: &'static [&'static str];
    /// Its documented status words, their outcome and their rank within pending.
    const STATUSES: &'static [StatusWord];
    /// Sample requests, as the provider documents them (tests run over them).
    const SAMPLES: &'static [Sample];

    /// Resolves its mode and parses its credentials, once at start-up.
    fn configure(
        settings: &ProviderSettings,
        common: &Common,
    ) -> Result<Configured<Self::Credentials>, ConfigError>;

    /// Decodes a request whose method and media type fit [`ProviderApi::ROUTE`].
    fn decode(request: &WebhookRequest) -> Result<Self::Decoded, IngestError>;

    /// The provider API the decoded request belongs to: [`ProviderApi::PROVIDER`]
    /// unless one route takes two formats (`/dlr/vonage` takes Messages API
    /// bodies from accounts switched to it).
    fn provider_of(_decoded: &Self::Decoded) -> Provider {
        Self::PROVIDER
    }

    /// Refuses a decoded request before its authenticity is checked (input
    /// a signature could not pin down, an unsigned request the provider will
    /// retry signed).
    fn admit(
        _configured: &Configured<Self::Credentials>,
        _request: &WebhookRequest,
        _decoded: &Self::Decoded,
    ) -> Result<(), IngestError> {
        Ok(())
    }

    /// Checks the request's authenticity; returns which secret matched
    /// (0: the current one, more: a previous one).
    fn verify(
        credentials: &Self::Credentials,
        common: &Common,
        request: &WebhookRequest,
        decoded: &Self::Decoded,
    ) -> Result<usize, SignatureError>;

    /// Interprets the decoded request as receipts.
    fn parse(decoded: &Self::Decoded, received_at: DateTime<Utc>) -> Result<Batch, ReceiptError>;

    /// The outcome of a status word (`None`: not a delivery receipt's word),
    /// as the parser classifies it; tests hold it to [`ProviderApi::STATUSES`].
    fn outcome_of(word: &str) -> Option<Outcome>;
}

/// The mode setting every provider's settings have (`None` for settings
/// that another provider's own cover, as the Vonage Messages API's).
pub trait ModeSetting {
    /// The explicit mode (`off`, `log-only`, `enforce`), to set it.
    fn mode_mut(&mut self) -> Option<&mut Option<SignatureMode>>;
}

/// A provider's webhook route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The path (`/dlr/twilio`).
    pub path: &'static str,
    /// The methods it is called with; others get 405.
    pub methods: &'static [Verb],
    /// The media types a POST body may have.
    pub media_types: &'static [&'static str],
    /// The shape of the 200 answer.
    pub answer: Answer,
    /// True when one request carries up to a hundred receipts and so needs
    /// the larger body limit (`routes::BATCH_BODY_LIMIT_BYTES`).
    pub large_bodies: bool,
}

/// An HTTP method a provider calls its route with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// The receipt is in the query string.
    Get,
    /// The receipt is in the body.
    Post,
}

/// The shape of a route's 200 answer, as documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `{"status":"accepted","event_id":…,"outcome":…}`: the provider sends one receipt per request.
    Receipt,
    /// `{"status":"accepted","receipts":[…],"quarantined":…,"ignored":…}`: requests may carry several.
    Receipts,
}

/// The variables that configure a provider, for the start-up log, the
/// deploy checks and the accounts file.
#[derive(Debug, Clone, Copy)]
pub struct SettingNames {
    /// The settings' name in logs and the deploy checks (`vonage` is shared
    /// by the SMS and the Messages API: one account signs both).
    pub group: &'static str,
    /// The variable that sets the mode.
    pub mode_variable: &'static str,
    /// The variables holding credentials (any of them set: `enforce` by default).
    pub credential_variables: &'static [&'static str],
    /// Whether the credentials are secrets (a public key is not).
    pub secret: bool,
    /// What names the account in a request, when per-account credentials
    /// can be given in `PROVIDER_ACCOUNTS_FILE` (table [`SettingNames::group`]).
    pub account: Option<AccountKey>,
}

/// Where a provider's request names the account whose credentials verify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKey {
    /// A field the signature covers (Twilio `AccountSid`, Telnyx
    /// `organization_id`): the field's name, for the start-up error and docs.
    Field(&'static str),
    /// Nothing in the request names it (Basic auth covers no byte of the
    /// body, Sinch reports carry no service plan): the route takes an
    /// optional last path segment, `<route>/{account}`, which the operator
    /// enters per account in the provider's portal.
    PathSegment,
}

impl AccountKey {
    /// How the README and the start-up error describe it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Field(field) => field,
            Self::PathSegment => "path segment /{account}",
        }
    }
}

/// One documented status word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusWord {
    /// The word as the provider spells it (compared ignoring ASCII case).
    pub word: &'static str,
    /// What it means for the message.
    pub outcome: Outcome,
    /// For a pending word: its place in the provider's lifecycle (1 first);
    /// the status store never lets a lower rank replace a higher one. 0 for
    /// final words.
    pub pending_rank: u8,
}

impl StatusWord {
    /// A pending step at `rank` in the provider's lifecycle.
    pub const fn pending(word: &'static str, rank: u8) -> Self {
        Self { word, outcome: Outcome::Pending, pending_rank: rank }
    }

    /// A final delivered word.
    pub const fn delivered(word: &'static str) -> Self {
        Self { word, outcome: Outcome::Delivered, pending_rank: 0 }
    }

    /// A final failed word.
    pub const fn failed(word: &'static str) -> Self {
        Self { word, outcome: Outcome::Failed, pending_rank: 0 }
    }
}

/// One sample request, stored in the provider's `samples/` folder.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The file's name, for messages.
    pub name: &'static str,
    /// How it is sent.
    pub verb: Verb,
    /// The body's media type (POST), empty for GET.
    pub content_type: &'static str,
    /// The body (POST) or the query string (GET).
    pub payload: &'static str,
    /// The HTTP status it gets (200, or 400 for a request that is no receipt).
    pub status: u16,
    /// The outcome of each receipt it carries, in order.
    pub outcomes: &'static [Outcome],
}

impl Sample {
    /// A POST of `payload` as `content_type`, stored as receipts with `outcomes`.
    pub const fn post(
        content_type: &'static str,
        name: &'static str,
        payload: &'static str,
        outcomes: &'static [Outcome],
    ) -> Self {
        Self { name, verb: Verb::Post, content_type, payload, status: 200, outcomes }
    }

    /// A GET with `payload` as its query string, stored as receipts with `outcomes`.
    pub const fn get(name: &'static str, payload: &'static str, outcomes: &'static [Outcome]) -> Self {
        Self { name, verb: Verb::Get, content_type: "", payload, status: 200, outcomes }
    }

    /// The same request, refused with 400 (it is not a delivery receipt).
    pub const fn refused(self) -> Self {
        Self { status: 400, outcomes: &[], ..self }
    }

    /// The request as `route` receives it (unsigned).
    pub fn request(&self, route: &Route) -> WebhookRequest {
        let mut headers = axum::http::HeaderMap::new();
        let (method, query, body) = match self.verb {
            Verb::Get => {
                (axum::http::Method::GET, Some(self.payload.trim_end().to_owned()), bytes::Bytes::new())
            }
            Verb::Post => {
                headers.insert(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static(self.content_type),
                );
                (axum::http::Method::POST, None, bytes::Bytes::from_static(self.payload.as_bytes()))
            }
        };
        WebhookRequest {
            method,
            path: route.path.to_owned(),
            query,
            headers,
            body,
            received_at: Utc::now(),
            sealed_replay: false,
        }
    }
}

/// What a configured provider verifies with, and how strictly.
#[derive(Debug, Clone)]
pub struct Configured<T> {
    /// `None`: not served (its route answers 404).
    pub mode: Option<SignatureMode>,
    /// Its credentials (empty where the mode is off).
    pub credentials: T,
}

/// Settings every provider's check may use.
#[derive(Debug)]
pub struct Common {
    /// The scheme and host providers call (`PUBLIC_BASE_URL`), for schemes that sign the URL.
    pub public_base_url: Option<Url>,
    /// The signature timestamp window.
    pub freshness: Freshness,
    /// Per-account secrets (`PROVIDER_ACCOUNTS_FILE`; empty without it).
    pub accounts: Accounts,
    /// Every HTTP Basic credential configured (Infobip, Sinch): what a
    /// sealed replay's credential digest is matched against, since its copy
    /// holds the credential redacted.
    pub basic_credentials: Vec<crate::signature::SecretList>,
}

impl Common {
    /// The URL the provider called (Twilio, Plivo sign it): the public base
    /// plus our path and query.
    pub fn public_url(&self, request: &WebhookRequest) -> String {
        let base = self.public_base_url.as_ref().map(|u| u.as_str().trim_end_matches('/')).unwrap_or("");
        match &request.query {
            Some(q) if !q.is_empty() => format!("{base}{}?{q}", request.path),
            _ => format!("{base}{}", request.path),
        }
    }

    /// The time signature windows are checked against: when ingest received
    /// the request (for a sealed replay, when it first received it).
    pub fn now_unix(&self, request: &WebhookRequest) -> i64 {
        request.received_at.timestamp()
    }
}

/// The account a request names in its path (`/dlr/infobip/acme` -> `acme`)
/// on a route whose account is [`AccountKey::PathSegment`]; `None` on the
/// route itself. The router matches one segment only, so the rest is the name.
pub fn path_account<'r>(route: &Route, request: &'r WebhookRequest) -> Option<&'r str> {
    request.path.strip_prefix(route.path)?.strip_prefix('/').filter(|account| !account.is_empty())
}

/// A body and the account its path names: what a provider whose account is
/// [`AccountKey::PathSegment`] decodes a request to.
#[derive(Debug, Clone)]
pub struct PathBody {
    /// The raw body, as signed.
    pub body: bytes::Bytes,
    /// The path's account segment (`None` on the route itself).
    pub account: Option<String>,
}

impl PathBody {
    /// The body of `request` to `route`, with its path's account.
    pub fn of(route: &Route, request: &WebhookRequest) -> Self {
        Self { body: request.body.clone(), account: path_account(route, request).map(str::to_owned) }
    }

    /// `batch` with every receipt's `account` set to the path's: the account
    /// whose credentials verified the request.
    pub fn label(&self, mut batch: super::Batch) -> super::Batch {
        if let Some(account) = &self.account {
            for event in &mut batch.events {
                event.account = Some(account.clone());
            }
        }
        batch
    }
}

/// A request header as text (`None` when absent or not visible ASCII).
pub fn header<'r>(request: &'r WebhookRequest, name: &str) -> Option<&'r str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}
