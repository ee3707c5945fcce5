//! Log set-up, once per process.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber. Returns an error if the filter
/// does not parse or a subscriber is already installed (tests call this
/// through the binaries only, never twice).
pub fn init(config: &LogConfig) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(&config.level).map_err(|e| format!("invalid RUST_LOG {:?}: {e}", config.level))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true).with_span_list(false))
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer()).try_init(),
    };
    result.map_err(|e| e.to_string())
}
