//! Settings both binaries read the same way.
//!
//! Each binary has one `Config` struct (clap derive with `env`), so the same
//! definition gives environment variables for Kubernetes, flags for local
//! runs, documented defaults in `--help`, and a start-up error that names the
//! variable. The pieces both binaries need are defined here and flattened in.

use clap::{Args, ValueEnum};
use secrecy::SecretString;
use std::time::Duration;

use crate::amqp::Topology;

/// Default broker address: the local RabbitMQ with the guest account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Broker connection settings.
#[derive(Debug, Clone, Args)]
pub struct BrokerConfig {
    /// AMQP URI of RabbitMQ (`amqps://` for TLS). Holds the password: never logged.
    #[arg(long = "amqp-url", env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_default_value = false)]
    pub url: SecretString,
    /// Exchange and queue names.
    #[command(flatten)]
    pub topology: Topology,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for terminals.
    Text,
}

/// Logging settings. The level filter itself is `RUST_LOG` (tracing's
/// `EnvFilter` syntax), defaulting to `info`.
#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// Log format.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub format: LogFormat,
    /// Log filter, e.g. `info` or `info,dlr_ingest=debug`.
    #[arg(long = "log-level", env = "RUST_LOG", default_value = "info")]
    pub level: String,
}

/// Parses a whole number of milliseconds into a `Duration` (for clap).
pub fn parse_millis(value: &str) -> Result<Duration, String> {
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{value:?} is not a whole number of milliseconds"))
}

/// Parses a whole number of seconds into a `Duration` (for clap).
pub fn parse_seconds(value: &str) -> Result<Duration, String> {
    value
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{value:?} is not a whole number of seconds"))
}
