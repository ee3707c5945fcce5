//! Log and trace set-up, once per process.
//!
//! - [`config`]: the standard `OTEL_*` settings, checked at start-up;
//! - [`context`]: W3C trace context in and out (HTTP, AMQP headers);
//! - `export`: the OTLP pipeline, which never makes a receipt wait;
//! - `log_ids`: trace and span ids on log lines;
//! - [`spans`]: spans both binaries open alike.
//!
//! Besides the format, this decides which library lines may appear at all:
//! lapin logs a returned message in full (the whole event, phone number
//! included) and repeats, at ERROR, every connection failure our supervisor
//! already reports with its cause, including on a clean shutdown. Its
//! targets are therefore off unless `RUST_LOG` names them.

pub mod config;
pub mod context;
mod export;
mod log_ids;
pub mod spans;

pub use config::TracingConfig;
pub use context::{SPAN_TARGET, TraceHeaders, continued};
pub use export::{TelemetryGuard, spans_dropped};

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

use crate::config::{LogConfig, LogFormat};

/// Directives added to `RUST_LOG` unless it names the target itself.
/// `lapin::returned_messages` prints message bodies; the rest of lapin
/// duplicates errors our code reports (and logs ERROR on clean shutdowns
/// and on each reconnect attempt).
const DEFAULT_DIRECTIVES: [(&str, &str); 2] =
    [("lapin", "lapin=off"), ("lapin::returned_messages", "lapin::returned_messages=off")];

/// `RUST_LOG` plus the default directives for targets it does not name.
/// Spans for export ([`SPAN_TARGET`]) are on exactly while `exporting`:
/// off, no layer is interested in them and they cost nothing.
pub fn effective_filter(level: &str, exporting: bool) -> String {
    let mut filter = level.trim().to_owned();
    let spans = if exporting { "dlr_trace=info" } else { "dlr_trace=off" };
    if !filter.split(',').any(|d| d.trim().split(['=', '[']).next() == Some(SPAN_TARGET)) {
        if !filter.is_empty() {
            filter.push(',');
        }
        filter.push_str(spans);
    }
    for (target, directive) in DEFAULT_DIRECTIVES {
        let named = filter.split(',').any(|d| d.trim().split(['=', '[']).next() == Some(target));
        let covered = target != "lapin::returned_messages" && filter.contains(target);
        if !named && !covered {
            if !filter.is_empty() {
                filter.push(',');
            }
            filter.push_str(directive);
        }
    }
    filter
}

/// Installs the global tracing subscriber and, when an OTLP endpoint is
/// set, the trace exporter (`service` names the binary's spans unless
/// `OTEL_SERVICE_NAME` does). Returns an error if the filter does not
/// parse, the exporter cannot be built, or a subscriber is already
/// installed (tests call this through the binaries only, never twice).
/// Text lines carry ANSI colours only on a terminal, so redirected logs
/// stay plain. Must run inside the Tokio runtime.
pub fn init(
    config: &LogConfig,
    tracing: &TracingConfig,
    service: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    let exporting = tracing.exporting();
    let filter = EnvFilter::try_new(effective_filter(&config.level, exporting))
        .map_err(|source| TelemetryError::InvalidFilter { filter: config.level.clone(), source })?;
    let (tracer, guard) = if exporting {
        let (provider, guard) = export::pipeline(tracing, service)?;
        use opentelemetry::trace::TracerProvider as _;
        (Some(provider.tracer("dlr")), guard)
    } else {
        (None, TelemetryGuard::off())
    };
    // Our spans, and our warnings as span events; never a library's spans
    // (the exporter's own HTTP or gRPC calls would be traced in a loop).
    let exported = Targets::new()
        .with_target(SPAN_TARGET, Level::TRACE)
        .with_target("dlr_shared", Level::WARN)
        .with_target("dlr_ingest", Level::WARN)
        .with_target("dlr_worker", Level::WARN);
    // Without the source location, thread and busy/idle timing the bridge
    // adds by default: per-span work and bytes that a receipt's trace does
    // not need (the span names and attributes say where it was).
    let otel = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(exported)
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match config.format {
        LogFormat::Json => {
            let format =
                fmt::format().json().flatten_event(true).with_current_span(true).with_span_list(false);
            let format = log_ids::WithTraceIds { inner: format, json: true, enabled: exporting };
            registry.with(fmt::layer().json().event_format(format)).try_init()
        }
        LogFormat::Text => {
            let format = log_ids::WithTraceIds { inner: fmt::format(), json: false, enabled: exporting };
            registry
                .with(fmt::layer().with_ansi(std::io::stdout().is_terminal()).event_format(format))
                .try_init()
        }
    };
    result.map_err(TelemetryError::AlreadyInstalled)?;
    context::set_exporting(exporting);
    Ok(guard)
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` is not a valid filter.
    #[error("RUST_LOG {filter:?} is invalid")]
    InvalidFilter {
        /// The filter as given.
        filter: String,
        /// The parser's complaint.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// Called twice in one process.
    #[error("a log subscriber is already installed")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
    /// The OTLP exporter could not be built from the `OTEL_EXPORTER_OTLP_*` settings.
    #[error("OTEL_EXPORTER_OTLP_* settings: {0}")]
    Exporter(String),
}

/// Lets one log line through per interval, for events that can repeat at
/// message rate (a metric counts every one; the log only says it happens).
#[derive(Debug)]
pub struct LogEvery {
    interval: Duration,
    last_millis: AtomicU64,
}

impl LogEvery {
    /// At most one `ready()` per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self { interval, last_millis: AtomicU64::new(0) }
    }

    /// True for the first call and then at most once per interval.
    pub fn ready(&self) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let now = u64::try_from(now).unwrap_or(u64::MAX).max(1);
        let last = self.last_millis.load(Ordering::Relaxed);
        let interval = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        (last == 0 || now.saturating_sub(last) >= interval)
            && self.last_millis.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// An error and its causes on one line, `outer: cause: root cause`, for
/// the last words of a process and for log fields. A cause whose text the
/// line already ends with is skipped: many error types print their source
/// in their own message, and repeating it makes the line hard to read.
pub fn error_chain<'a>(chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>) -> String {
    let mut line = String::new();
    for cause in chain {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// [`error_chain`] of `error` and its sources.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    error_chain(std::iter::successors(Some(error), |e| e.source()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapin_is_off_unless_named() {
        assert_eq!(
            effective_filter("info", false),
            "info,dlr_trace=off,lapin=off,lapin::returned_messages=off"
        );
        assert_eq!(
            effective_filter("info,lapin=debug", false),
            "info,lapin=debug,dlr_trace=off,lapin::returned_messages=off"
        );
        assert_eq!(
            effective_filter("lapin::returned_messages=warn", false),
            "lapin::returned_messages=warn,dlr_trace=off"
        );
        assert!(EnvFilter::try_new(effective_filter("info,dlr_worker=debug", false)).is_ok());
    }

    #[test]
    fn spans_for_export_are_on_only_while_exporting() {
        assert!(effective_filter("warn", true).starts_with("warn,dlr_trace=info,"));
        assert!(effective_filter("debug", false).contains("dlr_trace=off"));
        assert_eq!(
            effective_filter("dlr_trace=off", true),
            "dlr_trace=off,lapin=off,lapin::returned_messages=off"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_does_not_repeat_causes_already_printed() {
        let error = Outer(std::io::Error::other("refused"));
        assert_eq!(describe(&error), "outer: refused");
    }

    #[test]
    fn log_every_lets_one_line_through_per_interval() {
        let every = LogEvery::new(Duration::from_secs(60));
        assert!(every.ready());
        assert!(!every.ready());
    }
}
