//! The registry: every provider API, once, in one list.
//!
//! The list itself is the `registry!` invocation in `providers/mod.rs`:
//! one line per provider. [`REGISTRY`] is what the generic code iterates: the router adds each
//! served provider's route, the metrics pre-create each provider's series,
//! the quarantine keeps the union of their signature headers, start-up logs
//! one line per provider, and [`ProviderSettings`] flattens each provider's
//! settings into `ingest --help`. Tests hold the deploy checks' variable
//! list, the event schema's provider enum, the pending ranks the worker's
//! migration installs and the README's provider table to this list.

use axum::extract::State;
use axum::routing::MethodRouter;
use chrono::{DateTime, Utc};
use dlr_shared::{Outcome, Provider};
use std::marker::PhantomData;
use std::sync::Arc;

use super::api::{AccountKey, Common, ProviderApi, Route, Sample, SettingNames, StatusWord, Verb};
use super::{Batch, ProviderSettings, REGISTRY};
use crate::config::ConfigError;
use crate::error::IngestError;
use crate::intake::{self, WebhookRequest};
use crate::signature::SignatureMode;
use crate::state::AppState;

/// Lists the providers: `module => Type`, where `providers/module/` is the
/// provider's folder, `module::Type` implements [`ProviderApi`] and
/// `module::Settings` is its settings struct. Declares the modules and
/// generates [`REGISTRY`](super::REGISTRY) and
/// [`ProviderSettings`](super::ProviderSettings). Invoked once, in `providers/mod.rs`.
macro_rules! registry {
    ($($module:ident => $api:ident),+ $(,)?) => {
        $(pub mod $module;)+

        /// Every provider's settings, flattened into `ingest`'s configuration
        /// (and `--help`) in registry order.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct ProviderSettings {
            $(
                #[doc = concat!("`", stringify!($module), "`'s settings.")]
                #[command(flatten)]
                pub $module: $module::Settings,
            )+
        }

        impl ProviderSettings {
            /// Sets every provider's mode (a demo or a test that serves every
            /// provider unsigned sets `off`).
            pub fn set_every_mode(&mut self, mode: Option<crate::signature::SignatureMode>) {
                $(
                    if let Some(own) = crate::providers::api::ModeSetting::mode_mut(&mut self.$module) {
                        *own = mode;
                    }
                )+
            }
        }

        /// Every provider API, in the order of the README's tables.
        pub static REGISTRY: &[&dyn registry::Listed] =
            &[$(&registry::Entry::<$module::$api>(std::marker::PhantomData)),+];
    };
}

/// A registry entry: what generic code needs to know of a [`ProviderApi`]
/// without naming its type.
pub trait Listed: Sync {
    /// [`ProviderApi::PROVIDER`].
    fn provider(&self) -> Provider;
    /// [`ProviderApi::NAME`].
    fn name(&self) -> &'static str;
    /// [`ProviderApi::ROUTE`].
    fn route(&self) -> Route;
    /// [`ProviderApi::SETTINGS`].
    fn settings(&self) -> SettingNames;
    /// [`ProviderApi::SIGNATURE_HEADERS`].
    fn signature_headers(&self) -> &'static [&'static str];
    /// [`ProviderApi::STATUSES`].
    fn statuses(&self) -> &'static [StatusWord];
    /// [`ProviderApi::SAMPLES`].
    fn samples(&self) -> &'static [Sample];
    /// [`ProviderApi::outcome_of`].
    fn outcome_of(&self, word: &str) -> Option<Outcome>;
    /// Reads a request as its route does (method and media type, decode,
    /// parse) without checking its authenticity: for tests and benchmarks
    /// that hold a sample.
    fn read(&self, request: &WebhookRequest, received_at: DateTime<Utc>) -> Result<Batch, IngestError>;
    /// Configures the provider: its mode and, when it is served, its route's handler.
    fn serve(
        &self,
        settings: &ProviderSettings,
        common: &Arc<Common>,
    ) -> Result<(Option<SignatureMode>, Option<MethodRouter<AppState>>), ConfigError>;
}

/// The registry's entry for `P`.
pub(crate) struct Entry<P>(pub(crate) PhantomData<fn() -> P>);

impl<P: ProviderApi> Listed for Entry<P> {
    fn provider(&self) -> Provider {
        P::PROVIDER
    }

    fn name(&self) -> &'static str {
        P::NAME
    }

    fn route(&self) -> Route {
        P::ROUTE
    }

    fn settings(&self) -> SettingNames {
        P::SETTINGS
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        P::SIGNATURE_HEADERS
    }

    fn statuses(&self) -> &'static [StatusWord] {
        P::STATUSES
    }

    fn samples(&self) -> &'static [Sample] {
        P::SAMPLES
    }

    fn outcome_of(&self, word: &str) -> Option<Outcome> {
        P::outcome_of(word)
    }

    fn read(&self, request: &WebhookRequest, received_at: DateTime<Utc>) -> Result<Batch, IngestError> {
        intake::accept(&P::ROUTE, request)?;
        let decoded = P::decode(request)?;
        Ok(P::parse(&decoded, received_at)?)
    }

    fn serve(
        &self,
        settings: &ProviderSettings,
        common: &Arc<Common>,
    ) -> Result<(Option<SignatureMode>, Option<MethodRouter<AppState>>), ConfigError> {
        let configured = Arc::new(P::configure(settings, common)?);
        let mode = configured.mode;
        let handler = move |State(state): State<AppState>, request: Result<WebhookRequest, IngestError>| {
            let configured = configured.clone();
            async move {
                let result = intake::receive::<P>(&state, &configured, request).await;
                intake::respond(P::ROUTE.answer, result)
            }
        };
        let handler = mode.map(|_| {
            P::ROUTE.methods.iter().fold(MethodRouter::<AppState>::new(), |router, verb| match verb {
                Verb::Get => router.get(handler.clone()),
                Verb::Post => router.post(handler.clone()),
            })
        });
        Ok((mode, handler))
    }
}

/// One provider as configured at start-up.
pub struct Served {
    /// Its registry entry.
    pub entry: &'static dyn Listed,
    /// Its mode; `None`: not served.
    pub mode: Option<SignatureMode>,
    /// Its route's handler, when served.
    pub handler: Option<MethodRouter<AppState>>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served").field("provider", &self.entry.provider()).field("mode", &self.mode).finish()
    }
}

/// Configures every provider in registry order.
pub fn serve_all(settings: &ProviderSettings, common: &Arc<Common>) -> Result<Vec<Served>, ConfigError> {
    REGISTRY
        .iter()
        .map(|entry| {
            let (mode, handler) = entry.serve(settings, common)?;
            Ok(Served { entry: *entry, mode, handler })
        })
        .collect()
}

/// One start-up line per provider: enforced, log-only, off (a warning) or
/// not served, so an operator sees at a glance what is accepted.
pub fn log_serving(served: &[Served]) {
    for one in served {
        let provider = one.entry.provider().as_str();
        let route = one.entry.route().path;
        let settings = one.entry.settings();
        match one.mode {
            Some(SignatureMode::Enforce) => {
                tracing::info!(provider, route, "provider served: signatures enforced");
            }
            Some(SignatureMode::LogOnly) => {
                tracing::warn!(
                    provider,
                    route,
                    variable = settings.mode_variable,
                    "provider served in log-only mode: receipts that fail verification are accepted"
                );
            }
            Some(SignatureMode::Off) => {
                tracing::warn!(
                    provider,
                    route,
                    variable = settings.mode_variable,
                    "provider served with signature checks OFF: anyone can post receipts"
                );
            }
            None => tracing::info!(
                provider,
                route,
                variables = settings.credential_variables.join(" "),
                "provider not served (404): no credentials and no explicit mode"
            ),
        }
    }
}

/// Every request header some provider's authenticity check reads, plus the
/// media type: what a quarantine copy keeps.
pub fn copied_headers() -> Vec<&'static str> {
    let mut names = vec!["content-type"];
    for name in REGISTRY.iter().flat_map(|entry| entry.signature_headers()) {
        if !names.contains(name) {
            names.push(name);
        }
    }
    names
}

/// The providers whose requests name an account, with what names it: the
/// tables `PROVIDER_ACCOUNTS_FILE` may have.
pub fn account_tables() -> Vec<(&'static str, AccountKey)> {
    let mut tables: Vec<(&str, AccountKey)> = Vec::new();
    for settings in REGISTRY.iter().map(|entry| entry.settings()) {
        if let Some(key) = settings.account
            && !tables.iter().any(|(group, _)| *group == settings.group)
        {
            tables.push((settings.group, key));
        }
    }
    tables
}

#[cfg(test)]
mod tests;
