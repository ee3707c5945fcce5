//! Ingest configuration: one struct, read from the environment (or flags).
//!
//! `ingest --help` prints every variable with its default.

use crate::providers::settings::exposed;
use crate::providers::{Common, ProviderSettings, Served};
use crate::signature::Freshness;
use clap::{Args, Parser};
use dlr_shared::config::{
    BrokerConfig, LogConfig, parse_nonzero_millis, parse_nonzero_seconds, parse_seconds,
};
use secrecy::SecretString;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Everything `ingest` can be told.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ingest",
    version,
    about = "HTTP intake for SMS delivery receipts (Vonage SMS, Vonage Messages, Twilio, Telnyx, Plivo, Sinch, Infobip)"
)]
pub struct Config {
    /// Address to listen on for webhooks, probes and /metrics.
    #[arg(long = "addr", env = "INGEST_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,
    /// Broker connection and names.
    #[command(flatten)]
    pub broker: BrokerConfig,
    /// Largest accepted request body in bytes (larger: 413).
    #[arg(long = "body-limit-bytes", env = "INGEST_BODY_LIMIT_BYTES", default_value_t = 65_536)]
    pub body_limit_bytes: usize,
    /// How long to wait for the broker's publisher confirm before answering 503.
    #[arg(long = "confirm-timeout-ms", env = "INGEST_CONFIRM_TIMEOUT_MS", default_value = "5000", value_parser = parse_nonzero_millis)]
    pub confirm_timeout: Duration,
    /// Upper bound for a whole request, body upload included (slow clients get
    /// 408). Must exceed INGEST_CONFIRM_TIMEOUT_MS, so that a request whose
    /// body has arrived always gets the confirm's answer (200 or 503), never
    /// a 408 that hides an unconfirmed publish.
    #[arg(long = "request-timeout-ms", env = "INGEST_REQUEST_TIMEOUT_MS", default_value = "10000", value_parser = parse_nonzero_millis)]
    pub request_timeout: Duration,
    /// After SIGTERM, how long in-flight requests may take before the process exits anyway.
    #[arg(long = "drain-timeout-seconds", env = "INGEST_DRAIN_TIMEOUT_SECONDS", default_value = "20", value_parser = parse_nonzero_seconds)]
    pub drain_timeout: Duration,
    /// Requests handled at once; beyond this ingest answers 429 with Retry-After
    /// (providers retry 429) instead of queueing unbounded work.
    #[arg(long = "max-concurrency", env = "INGEST_MAX_CONCURRENCY", default_value_t = 1024)]
    pub max_concurrency: usize,
    /// Receipts being published at once, each on its own broker channel (one
    /// publish per channel is what attributes every return to its own
    /// receipt); further receipts wait for a channel within the confirm timeout.
    #[arg(long = "publish-channels", env = "INGEST_PUBLISH_CHANNELS", default_value_t = 128, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(1..=2000), usize::from))]
    pub publish_channels: usize,
    /// How long this pod stays ready after losing its broker connection. A
    /// blocked connection (broker-wide alarm) never makes it unready.
    #[arg(long = "readiness-broker-grace-seconds", env = "INGEST_READINESS_BROKER_GRACE_SECONDS", default_value = "30", value_parser = parse_seconds)]
    pub readiness_broker_grace: Duration,
    /// Open client connections at most; further clients wait in the kernel's
    /// accept queue. Bounds memory held by idle or slow connections.
    #[arg(long = "max-connections", env = "INGEST_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Bytes of a refused request's body kept in its quarantine copy; longer
    /// bodies are cut (and marked so, and cannot be replayed). The default is
    /// the largest body any route accepts, so that every copy can be replayed.
    #[arg(
        long = "quarantine-body-limit-bytes",
        env = "INGEST_QUARANTINE_BODY_LIMIT_BYTES",
        default_value_t = 1_048_576
    )]
    pub quarantine_body_limit_bytes: usize,
    /// Quarantine copies of requests that failed their signature check, per
    /// provider and minute; beyond it they are only refused (and counted).
    #[arg(
        long = "quarantine-copies-per-minute",
        env = "INGEST_QUARANTINE_COPIES_PER_MINUTE",
        default_value_t = 600
    )]
    pub quarantine_copies_per_minute: u32,
    /// Body bytes of those copies per provider and minute: with the copies
    /// per minute, bounds what a flood of forged requests adds to the
    /// quarantine, whatever their size.
    #[arg(
        long = "quarantine-bytes-per-minute",
        env = "INGEST_QUARANTINE_BYTES_PER_MINUTE",
        default_value_t = 4_194_304
    )]
    pub quarantine_bytes_per_minute: usize,
    /// Keys (comma-separated, current first, each at least 32 bytes) that
    /// seal quarantine copies, so that `worker replay-quarantine` can replay
    /// them after the freshness window and with their Basic credential.
    /// Unset: copies are not sealed and are verified on replay as new requests.
    #[arg(long = "quarantine-replay-key", env = "INGEST_QUARANTINE_REPLAY_KEY", hide_env_values = true)]
    pub quarantine_replay_key: Option<SecretString>,
    /// Settings every provider's authenticity check may use.
    #[command(flatten)]
    pub signatures: SignatureConfig,
    /// Each provider's mode and credentials, from the registry.
    #[command(flatten)]
    pub providers: ProviderSettings,
    /// Logging.
    #[command(flatten)]
    pub log: LogConfig,
    /// Trace export (OpenTelemetry's `OTEL_*` variables).
    #[command(flatten)]
    pub tracing: dlr_shared::telemetry::TracingConfig,
}

/// Settings every provider's authenticity check may use.
#[derive(Debug, Clone, Args)]
pub struct SignatureConfig {
    /// TOML file of per-account credentials (Vonage api key, Twilio AccountSid,
    /// Plivo auth id, Telnyx organization id, Sinch and Infobip path account
    /// -> secrets, current first), mounted from a Kubernetes Secret.
    #[arg(long = "provider-accounts-file", env = "PROVIDER_ACCOUNTS_FILE")]
    pub accounts_file: Option<std::path::PathBuf>,
    /// Scheme and host the providers call (e.g. https://dlr.example.com). Twilio
    /// signs the public URL, which differs from ours behind a load balancer.
    #[arg(long = "public-base-url", env = "PUBLIC_BASE_URL")]
    pub public_base_url: Option<Url>,
    /// Oldest signature timestamp accepted. Default 72 h: Vonage retries a DLR
    /// for up to 72 h and does not document re-signing retries, so a tight
    /// window would turn retries into permanent 401s (replays of a genuine
    /// receipt are harmless: events are de-duplicated by id).
    #[arg(long = "signature-max-age-seconds", env = "SIGNATURE_MAX_AGE_SECONDS", default_value = "259200", value_parser = parse_nonzero_seconds)]
    pub max_age: Duration,
    /// How far in the future a signature timestamp may be (clock skew).
    #[arg(long = "signature-max-future-seconds", env = "SIGNATURE_MAX_FUTURE_SECONDS", default_value = "300", value_parser = parse_seconds)]
    pub max_future: Duration,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting is missing or contradicts another.
    #[error("{variable}: {problem}")]
    Invalid {
        /// The environment variable to fix.
        variable: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The configuration's providers, validated: what their checks share and
/// each provider's mode and handler.
#[derive(Debug)]
pub struct Validated {
    /// Settings every provider's check may use.
    pub common: Arc<Common>,
    /// Every provider in registry order, served or not.
    pub served: Vec<Served>,
}

impl Config {
    /// The quarantine replay keys, checked (`None` when unset).
    pub fn replay_keys(&self) -> Result<Option<crate::intake::ReplayKeys>, ConfigError> {
        exposed(&self.quarantine_replay_key)
            .map(crate::intake::ReplayKeys::parse)
            .transpose()
            .map_err(|problem| invalid("INGEST_QUARANTINE_REPLAY_KEY", problem))
    }

    /// Checks cross-field rules clap cannot express, once, at start-up.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        if self.body_limit_bytes == 0 {
            return Err(invalid("INGEST_BODY_LIMIT_BYTES", "must be greater than 0"));
        }
        if self.max_connections == 0 {
            return Err(invalid("INGEST_MAX_CONNECTIONS", "must be greater than 0"));
        }
        if self.max_concurrency == 0 {
            return Err(invalid("INGEST_MAX_CONCURRENCY", "must be greater than 0"));
        }
        if self.quarantine_bytes_per_minute < self.quarantine_body_limit_bytes {
            return Err(invalid(
                "INGEST_QUARANTINE_BYTES_PER_MINUTE",
                format!(
                    "({}) must be at least INGEST_QUARANTINE_BODY_LIMIT_BYTES ({}): a copy of the largest body could never be made",
                    self.quarantine_bytes_per_minute, self.quarantine_body_limit_bytes
                ),
            ));
        }
        if self.readiness_broker_grace.is_zero() {
            return Err(invalid("INGEST_READINESS_BROKER_GRACE_SECONDS", "must be greater than 0"));
        }
        if self.confirm_timeout.is_zero() || self.confirm_timeout >= Duration::from_secs(15) {
            return Err(invalid(
                "INGEST_CONFIRM_TIMEOUT_MS",
                "must be between 1 and 14999: providers give up on a webhook after 15 s",
            ));
        }
        if self.request_timeout <= self.confirm_timeout {
            return Err(invalid(
                "INGEST_REQUEST_TIMEOUT_MS",
                format!(
                    "({} ms) must be greater than INGEST_CONFIRM_TIMEOUT_MS ({} ms): the confirm wait happens inside the request",
                    self.request_timeout.as_millis(),
                    self.confirm_timeout.as_millis()
                ),
            ));
        }
        let s = &self.signatures;
        let accounts = match &s.accounts_file {
            Some(path) => crate::accounts::Accounts::load(&path.to_string_lossy())
                .map_err(|e| invalid("PROVIDER_ACCOUNTS_FILE", e.to_string()))?,
            None => crate::accounts::Accounts::default(),
        };
        // A list that does not parse is reported by `serve_all` below, which
        // stops start-up; here it only offers no candidate. Each account's
        // (`/dlr/infobip/{account}`, `/dlr/sinch/{account}`) too: the
        // provider's check then takes only the path's account's.
        let basic_credentials = [&self.providers.infobip.basic_auth, &self.providers.sinch.basic_auth]
            .into_iter()
            .filter_map(exposed)
            .filter_map(|raw| crate::providers::settings::basic_list(raw).ok())
            .chain(["infobip", "sinch"].into_iter().flat_map(|p| accounts.table(p).map(|(_, l)| l.clone())))
            .collect();
        let common = Arc::new(Common {
            public_base_url: s.public_base_url.clone(),
            freshness: Freshness { max_age: s.max_age, max_future: s.max_future },
            accounts,
            basic_credentials,
        });
        let served = crate::providers::serve_all(&self.providers, &common)?;
        Ok(Validated { common, served })
    }
}

fn invalid(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { variable, problem: problem.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["ingest"];
        all.extend_from_slice(args);
        Config::parse_from(all)
    }

    #[test]
    fn request_timeout_must_exceed_confirm_timeout() {
        let error =
            config(&["--request-timeout-ms", "5000", "--confirm-timeout-ms", "5000"]).validate().err();
        assert!(error.is_some_and(|e| e.to_string().starts_with("INGEST_REQUEST_TIMEOUT_MS")));
        assert!(config(&["--request-timeout-ms", "5001", "--confirm-timeout-ms", "5000"]).validate().is_ok());
    }

    #[test]
    fn the_quarantine_byte_budget_must_hold_the_largest_copy() {
        let error =
            config(&["--quarantine-bytes-per-minute", "1000", "--quarantine-body-limit-bytes", "1001"])
                .validate()
                .err();
        assert!(error.is_some_and(|e| e.to_string().starts_with("INGEST_QUARANTINE_BYTES_PER_MINUTE")));
        let fits =
            config(&["--quarantine-bytes-per-minute", "1000", "--quarantine-body-limit-bytes", "1000"]);
        assert!(fits.validate().is_ok());
        assert!(config(&[]).validate().is_ok(), "the defaults fit");
    }

    #[test]
    fn zero_durations_are_refused() {
        for flag in [
            "--drain-timeout-seconds",
            "--request-timeout-ms",
            "--confirm-timeout-ms",
            "--signature-max-age-seconds",
        ] {
            assert!(Config::try_parse_from(["ingest", flag, "0"]).is_err(), "{flag}=0 accepted");
        }
    }
}
