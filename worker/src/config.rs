//! Worker configuration: one struct from environment variables (or flags).
//!
//! `worker --help` prints every variable with its default.

use clap::{Args, Parser, Subcommand};
use dlr_shared::config::{
    BrokerConfig, LogConfig, parse_millis, parse_nonzero_millis, parse_nonzero_seconds,
};
use dlr_shared::{Outcome, Provider, words};
use secrecy::SecretString;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use url::Url;

use crate::handlers::HandlerKind;
use crate::maintenance::MaintenanceSettings;
use crate::never_final::NeverFinalWindows;
use crate::parking::ParkReason;
use std::collections::HashMap;

/// `WORKER_PREFETCH` when unset; the benchmark measures the broker's consume
/// ceiling at the same window.
pub const DEFAULT_PREFETCH: u16 = 300;

/// The `worker` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "worker",
    version,
    about = "Routes SMS delivery receipts from RabbitMQ to downstream handlers"
)]
pub struct Cli {
    /// What to do; without a subcommand the worker consumes (same as `run`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings shared by every subcommand.
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Consume receipts and run the handlers (the default).
    Run,
    /// Move parked messages back to the receipts queue, e.g. after a
    /// downstream outage is over. Handlers that already succeeded for an
    /// event are not run again.
    ReplayParked(ReplayArgs),
    /// Re-send quarantined requests (rejected by ingest, e.g. for a bad
    /// signature) to ingest, which verifies them again with its current
    /// secrets; the ones it accepts leave the quarantine.
    ReplayQuarantine(QuarantineArgs),
    /// Look at the parking lot without changing it.
    #[command(subcommand)]
    Parked(ParkedCommand),
    /// Print delivery numbers from the status store (DATABASE_URL): messages,
    /// delivered %, failed %, pending, never-final and the median time to the
    /// final receipt, grouped by provider, country and/or network.
    Report(ReportArgs),
}

/// Options of `report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The period, back from now: a number and s, m, h or d (messages first seen in it).
    #[arg(long, default_value = "24h", value_parser = crate::report::parse_period)]
    pub since: Duration,
    /// Group by these, comma-separated: provider, country, network.
    #[arg(long, default_value = "provider", value_delimiter = ',')]
    pub by: Vec<crate::report::GroupBy>,
}

/// `worker parked ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ParkedCommand {
    /// One line per parked event (event id, provider, outcome, reason,
    /// handler or endpoint, attempts, parked at, last error), oldest first.
    /// The parking lot keeps its messages, in their order.
    List(ListArgs),
}

/// Which parked messages a command looks at: filters and a time window.
#[derive(Debug, Clone, Default, Args)]
pub struct ParkedSelection {
    /// Only messages matching all filters, as key=value with key one of
    /// reason, handler, endpoint, provider, outcome (repeatable).
    #[arg(long = "filter", value_parser = parse_filter)]
    pub filters: Vec<(String, String)>,
    /// Only messages parked at or after this time: RFC 3339
    /// (2026-12-07T10:00:00Z) or a duration ago (90s, 30m, 6h, 2d).
    #[arg(long, value_parser = parse_instant)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only messages parked before this time (same forms as --since).
    #[arg(long, value_parser = parse_instant)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// Options of `replay-parked`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Replay at most this many messages.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Which messages.
    #[command(flatten)]
    pub selection: ParkedSelection,
}

/// Options of `parked list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Print at most this many lines (the whole parking lot is still
    /// cycled, which is what keeps its order).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Which messages.
    #[command(flatten)]
    pub selection: ParkedSelection,
}

/// An instant given as RFC 3339 or as a duration before now.
fn parse_instant(value: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(instant) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(instant.with_timezone(&chrono::Utc));
    }
    let ago = parse_ago(value).ok_or_else(|| {
        format!(
            "{value:?}: expected an RFC 3339 time (2026-12-07T10:00:00Z) or a duration ago (90s, 30m, 6h, 2d)"
        )
    })?;
    Ok(chrono::Utc::now() - ago)
}

fn parse_ago(value: &str) -> Option<chrono::Duration> {
    let value = value.trim();
    let split = value.len().checked_sub(1)?;
    let (number, unit) = value.split_at(split);
    let number: i64 = number.parse().ok().filter(|n| *n >= 0)?;
    match unit {
        "s" => chrono::Duration::try_seconds(number),
        "m" => chrono::Duration::try_minutes(number),
        "h" => chrono::Duration::try_hours(number),
        "d" => chrono::Duration::try_days(number),
        _ => None,
    }
}

/// Options of `replay-quarantine`.
#[derive(Debug, Clone, Args)]
pub struct QuarantineArgs {
    /// Base URL of an ingest instance, e.g. http://ingest:8080.
    #[arg(long = "ingest-url", env = "WORKER_INGEST_URL")]
    pub ingest_url: Url,
    /// Replay at most this many requests.
    #[arg(long)]
    pub limit: Option<u64>,
}

/// Values each replay filter key can match. An unknown value would match
/// nothing and make a replay silently do nothing, so it is refused.
fn filter_values(key: &str) -> Option<Vec<&'static str>> {
    Some(match key {
        "reason" => words::names::<ParkReason>().collect(),
        "handler" => words::names::<HandlerKind>().collect(),
        // Names from the endpoints file, not known to the command line.
        "endpoint" => Vec::new(),
        "provider" => words::names::<Provider>().collect(),
        "outcome" => words::names::<Outcome>().collect(),
        _ => return None,
    })
}

fn parse_filter(value: &str) -> Result<(String, String), String> {
    let (key, wanted) = value.split_once('=').ok_or_else(|| format!("{value:?}: expected key=value"))?;
    let allowed = filter_values(key)
        .ok_or_else(|| format!("{key:?}: filter keys are reason, handler, endpoint, provider, outcome"))?;
    if wanted.is_empty() {
        return Err(format!("{key}: the value is empty"));
    }
    if !allowed.is_empty() && !allowed.contains(&wanted) {
        return Err(format!("{wanted:?} is not a {key}; one of {}", allowed.join(", ")));
    }
    Ok((key.to_owned(), wanted.to_owned()))
}

/// Everything the consuming worker can be told.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long = "addr", env = "WORKER_ADDR", default_value = "0.0.0.0:9090")]
    pub addr: SocketAddr,
    /// Broker connection and names.
    #[command(flatten)]
    pub broker: BrokerConfig,
    /// Unacked deliveries per worker, which is also how many events it handles at once.
    /// 300, the top of RabbitMQ's advised 100-300 range: the worker's rate is at most the
    /// events in flight divided by an event's time in the worker (README, "Benchmark").
    /// Sharded (`AMQP_RECEIPT_SHARDS` = N), the pod's budget: each shard's
    /// channel gets `prefetch / N`, at least 1.
    #[arg(long = "prefetch", env = "WORKER_PREFETCH", default_value_t = DEFAULT_PREFETCH)]
    pub prefetch: u16,
    /// Handlers for delivered receipts, in order (amqp, http, postgres, log).
    #[arg(long = "route-delivered", env = "WORKER_ROUTE_DELIVERED", default_value = "log")]
    pub route_delivered: String,
    /// Handlers for failed receipts, in order.
    #[arg(long = "route-failed", env = "WORKER_ROUTE_FAILED", default_value = "log")]
    pub route_failed: String,
    /// Handlers for pending receipts, in order.
    #[arg(long = "route-pending", env = "WORKER_ROUTE_PENDING", default_value = "log")]
    pub route_pending: String,
    /// How an event's handlers run: `sequential` (in the route's order, each
    /// after the previous one succeeded) or `concurrent` (all at once).
    #[arg(long = "handler-order", env = "WORKER_HANDLER_ORDER", default_value = "sequential")]
    pub handler_order: HandlerOrder,
    /// Topic exchange the amqp handler republishes events to.
    #[arg(long = "events-exchange", env = "WORKER_EVENTS_EXCHANGE", default_value = "dlr.events")]
    pub events_exchange: String,
    /// URL the http handler posts events to (all outcomes unless overridden).
    #[arg(long = "http-url", env = "WORKER_HTTP_URL")]
    pub http_url: Option<Url>,
    /// URL for delivered events (overrides WORKER_HTTP_URL).
    #[arg(long = "http-url-delivered", env = "WORKER_HTTP_URL_DELIVERED")]
    pub http_url_delivered: Option<Url>,
    /// URL for failed events (overrides WORKER_HTTP_URL).
    #[arg(long = "http-url-failed", env = "WORKER_HTTP_URL_FAILED")]
    pub http_url_failed: Option<Url>,
    /// URL for pending events (overrides WORKER_HTTP_URL).
    #[arg(long = "http-url-pending", env = "WORKER_HTTP_URL_PENDING")]
    pub http_url_pending: Option<Url>,
    /// Standard Webhooks signing secret (`whsec_<base64>` or base64) for the http
    /// handler; several, space-separated, during a rotation (the first signs, all are sent).
    #[arg(long = "http-secret", env = "WORKER_HTTP_SECRET", hide_env_values = true)]
    pub http_secret: Option<SecretString>,
    /// Timeout of one forwarding request.
    #[arg(long = "http-timeout-ms", env = "WORKER_HTTP_TIMEOUT_MS", default_value = "5000", value_parser = parse_nonzero_millis)]
    pub http_timeout: Duration,
    /// Most forwarding requests in flight at once, for receivers that cannot take as
    /// many concurrent calls as the worker handles events (unset: up to the prefetch).
    #[arg(long = "http-max-in-flight", env = "WORKER_HTTP_MAX_IN_FLIGHT")]
    pub http_max_in_flight: Option<NonZeroUsize>,
    /// TOML file listing the webhook endpoints of the http handler (name, url,
    /// secrets, filters, limits; README "Webhook endpoints"). Replaces
    /// WORKER_HTTP_URL and WORKER_HTTP_SECRET, which describe one endpoint.
    #[arg(long = "webhooks-file", env = "WORKER_WEBHOOKS_FILE")]
    pub webhooks_file: Option<PathBuf>,
    /// Consecutive failures (connect errors, timeouts, 5xx) after which an endpoint's
    /// circuit opens: its events wait for their next retry without a request. 0: never.
    #[arg(long = "webhook-breaker-failures", env = "WORKER_WEBHOOK_BREAKER_FAILURES", default_value_t = 10)]
    pub webhook_breaker_failures: u32,
    /// How long an open circuit waits before one event probes the endpoint.
    #[arg(long = "webhook-breaker-cooldown-ms", env = "WORKER_WEBHOOK_BREAKER_COOLDOWN_MS", default_value = "30000", value_parser = parse_nonzero_millis)]
    pub webhook_breaker_cooldown: Duration,
    /// PostgreSQL URL for the postgres handler (migrations run at start-up).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// Connections in the PostgreSQL pool.
    #[arg(long = "database-max-connections", env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
    /// Most events the postgres handler writes in one transaction (group commit).
    #[arg(long = "postgres-batch-size", env = "WORKER_POSTGRES_BATCH_SIZE", default_value_t = 100)]
    pub postgres_batch_size: u16,
    /// How long a postgres batch waits for more events after its first one;
    /// 0 writes each event in its own transaction.
    #[arg(long = "postgres-linger-ms", env = "WORKER_POSTGRES_LINGER_MS", default_value_t = 2)]
    pub postgres_linger_ms: u64,
    /// PostgreSQL `statement_timeout` of the handler's connections: a write
    /// that takes longer fails as transient and is retried.
    #[arg(long = "postgres-statement-timeout-ms", env = "WORKER_POSTGRES_STATEMENT_TIMEOUT_MS", default_value = "5000", value_parser = parse_millis)]
    pub postgres_statement_timeout: Duration,
    /// Attempts per handler before an event is parked (first try included). With the
    /// default delays, 19 attempts retry for about 31 h (at least 24.7 h after jitter).
    #[arg(long = "max-attempts", env = "WORKER_MAX_ATTEMPTS", default_value_t = 19)]
    pub max_attempts: u32,
    /// Delay before the first retry.
    #[arg(long = "retry-initial-delay-ms", env = "WORKER_RETRY_INITIAL_DELAY_MS", default_value = "1000", value_parser = parse_nonzero_millis)]
    pub retry_initial_delay: Duration,
    /// Longest delay between attempts (up to 49 days): the delays grow geometrically
    /// over the first 12 retries to it, and later retries wait this long.
    #[arg(long = "retry-max-delay-ms", env = "WORKER_RETRY_MAX_DELAY_MS", default_value = "14400000", value_parser = parse_millis)]
    pub retry_max_delay: Duration,
    /// After SIGTERM, how long in-flight events may take before the worker exits
    /// (unfinished ones are redelivered by the broker).
    #[arg(long = "drain-timeout-seconds", env = "WORKER_DRAIN_TIMEOUT_SECONDS", default_value = "30", value_parser = parse_nonzero_seconds)]
    pub drain_timeout: Duration,
    /// How long an event waits for the broker to take its retry or park copy
    /// (while it blocks publishers or cannot be reached) before its delivery
    /// is given back to the queue. Keep it well under RabbitMQ's consumer
    /// timeout (30 min by default), past which the broker closes the channel.
    #[arg(long = "settle-patience-ms", env = "WORKER_SETTLE_PATIENCE_MS", default_value = "300000", value_parser = parse_nonzero_millis)]
    pub settle_patience: Duration,
    /// How long a message may stay pending in the status store before the
    /// never-final sweep publishes a synthetic failed `no_final_receipt` for it.
    #[arg(long = "never-final-window-seconds", env = "WORKER_NEVER_FINAL_WINDOW_SECONDS", default_value = "172800", value_parser = parse_nonzero_seconds)]
    pub never_final_window: Duration,
    /// Per-provider windows overriding WORKER_NEVER_FINAL_WINDOW_SECONDS, as
    /// provider=seconds,... (e.g. `twilio=259200,telnyx=86400`).
    #[arg(long = "never-final-windows", env = "WORKER_NEVER_FINAL_WINDOWS", default_value = "")]
    pub never_final_windows: String,
    /// Time between two rounds of the status store's maintenance (never-final
    /// sweep, history retention); the first runs at start-up.
    #[arg(long = "maintenance-interval-seconds", env = "WORKER_MAINTENANCE_INTERVAL_SECONDS", default_value = "300", value_parser = parse_nonzero_seconds)]
    pub maintenance_interval: Duration,
    /// Pending messages per never-final sweep batch (100 batches per round at most).
    #[arg(long = "never-final-batch-size", env = "WORKER_NEVER_FINAL_BATCH_SIZE", default_value_t = 500)]
    pub never_final_batch_size: u32,
    /// Days of receipt history (whole months, dropped as partitions) and of final
    /// statuses kept in the status store.
    #[arg(long = "retention-days", env = "WORKER_RETENTION_DAYS", default_value_t = 90)]
    pub retention_days: u32,
    /// Logging.
    #[command(flatten)]
    pub log: LogConfig,
    /// Trace export (OpenTelemetry's `OTEL_*` variables).
    #[command(flatten)]
    pub tracing: dlr_shared::telemetry::TracingConfig,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    /// The environment variable to fix.
    pub variable: &'static str,
    /// What is wrong.
    pub problem: String,
}

/// Whether an event's handlers wait for each other.
///
/// Sequential is the default because it is a promise downstream systems can
/// build on: with `postgres,http`, the status row is committed before the
/// webhook is sent. Concurrent gives that up for latency: an event then
/// takes as long as its slowest handler instead of the sum of all. Since the
/// prefetch bounds the events in flight, that also raises the rate when the
/// handlers' latency, not CPU, is the limit (a remote webhook).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::Display, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "lowercase")]
pub enum HandlerOrder {
    /// One after the other, in the route's order; the first failure stops the rest.
    Sequential,
    /// All pending handlers at once; each one's success is kept.
    Concurrent,
}

impl FromStr for HandlerOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        words::parse(s).ok_or_else(|| format!("{s:?} is not one of {}", words::list::<Self>()))
    }
}

/// Outcome -> ordered handler list, validated, and how the list runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    delivered: Vec<HandlerKind>,
    failed: Vec<HandlerKind>,
    pending: Vec<HandlerKind>,
    order: HandlerOrder,
}

impl RouteTable {
    /// Handlers for `outcome`, in order.
    pub fn handlers(&self, outcome: Outcome) -> &[HandlerKind] {
        match outcome {
            Outcome::Delivered => &self.delivered,
            Outcome::Failed => &self.failed,
            Outcome::Pending => &self.pending,
        }
    }

    /// The same handlers for every outcome, unchecked (dispatch tests).
    #[cfg(test)]
    pub(crate) fn uniform(handlers: Vec<HandlerKind>, order: HandlerOrder) -> Self {
        Self { delivered: handlers.clone(), failed: handlers.clone(), pending: handlers, order }
    }

    /// Whether the handlers of one event wait for each other.
    pub fn order(&self) -> HandlerOrder {
        self.order
    }

    /// True when any outcome uses `kind`.
    pub fn uses(&self, kind: HandlerKind) -> bool {
        Outcome::ALL.iter().any(|&o| self.handlers(o).contains(&kind))
    }
}

impl Config {
    /// Checks the settings together, once, at start-up.
    pub fn validate(&self) -> Result<RouteTable, ConfigError> {
        let routes = RouteTable {
            delivered: parse_route("WORKER_ROUTE_DELIVERED", &self.route_delivered)?,
            failed: parse_route("WORKER_ROUTE_FAILED", &self.route_failed)?,
            pending: parse_route("WORKER_ROUTE_PENDING", &self.route_pending)?,
            order: self.handler_order,
        };
        if self.prefetch == 0 {
            return Err(invalid("WORKER_PREFETCH", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(invalid("WORKER_MAX_ATTEMPTS", "must be at least 1"));
        }
        if self.retry_initial_delay.is_zero() || self.retry_max_delay < self.retry_initial_delay {
            return Err(invalid(
                "WORKER_RETRY_MAX_DELAY_MS",
                "must be at least WORKER_RETRY_INITIAL_DELAY_MS, which must be above 0",
            ));
        }
        if self.retry_max_delay > crate::retry::MAX_DELAY {
            return Err(invalid(
                "WORKER_RETRY_MAX_DELAY_MS",
                "must be at most 4294967295 (RabbitMQ's longest TTL)",
            ));
        }
        self.validate_webhooks(&routes)?;
        if routes.uses(HandlerKind::Postgres) && self.database_url.is_none() {
            return Err(invalid("DATABASE_URL", "is required when the postgres handler is used"));
        }
        if self.postgres_batch_size == 0 {
            return Err(invalid("WORKER_POSTGRES_BATCH_SIZE", "must be at least 1"));
        }
        if self.postgres_statement_timeout.is_zero() {
            return Err(invalid(
                "WORKER_POSTGRES_STATEMENT_TIMEOUT_MS",
                "must be above 0 (0 would mean no limit)",
            ));
        }
        self.maintenance_settings()?;
        Ok(routes)
    }

    /// The status store's maintenance settings, checked.
    pub fn maintenance_settings(&self) -> Result<MaintenanceSettings, ConfigError> {
        if self.never_final_batch_size == 0 {
            return Err(invalid("WORKER_NEVER_FINAL_BATCH_SIZE", "must be at least 1"));
        }
        if !(1..=36_500).contains(&self.retention_days) {
            return Err(invalid("WORKER_RETENTION_DAYS", "must be between 1 and 36500"));
        }
        let mut per_provider = HashMap::new();
        for entry in self.never_final_windows.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let problem = |why: String| invalid("WORKER_NEVER_FINAL_WINDOWS", format!("{entry:?}: {why}"));
            let (name, seconds) =
                entry.split_once('=').ok_or_else(|| problem("expected provider=seconds".to_owned()))?;
            let provider: Provider = words::parse(name.trim())
                .ok_or_else(|| problem(format!("not a provider; one of {}", words::list::<Provider>())))?;
            let window = parse_nonzero_seconds(seconds.trim()).map_err(problem)?;
            per_provider.insert(provider, window);
        }
        Ok(MaintenanceSettings {
            interval: self.maintenance_interval,
            batch_size: self.never_final_batch_size,
            max_batches: 100,
            windows: NeverFinalWindows { default: self.never_final_window, per_provider },
            retention: Duration::from_secs(u64::from(self.retention_days) * 86_400),
        })
    }

    /// The endpoints come from the file or from the shorthand, not both;
    /// with the shorthand, every outcome routed to http needs a URL.
    fn validate_webhooks(&self, routes: &RouteTable) -> Result<(), ConfigError> {
        let shorthand = self.http_url.is_some()
            || Outcome::ALL.iter().any(|&o| self.http_url_override(o).is_some())
            || self.http_secret.is_some();
        if self.webhooks_file.is_some() {
            if shorthand {
                return Err(invalid(
                    "WORKER_WEBHOOKS_FILE",
                    "is set together with WORKER_HTTP_URL(_*) or WORKER_HTTP_SECRET: list every endpoint in the file",
                ));
            }
            return Ok(());
        }
        for &outcome in Outcome::ALL {
            if routes.handlers(outcome).contains(&HandlerKind::Http) && self.http_url_for(outcome).is_none() {
                return Err(invalid(
                    "WORKER_HTTP_URL",
                    format!("is required: {outcome} events are routed to http (or set WORKER_WEBHOOKS_FILE)"),
                ));
            }
        }
        if routes.uses(HandlerKind::Http) && self.http_secret.is_none() {
            return Err(invalid("WORKER_HTTP_SECRET", "is required when the http handler is used"));
        }
        Ok(())
    }

    /// The forwarding URL for `outcome` in the shorthand.
    pub fn http_url_for(&self, outcome: Outcome) -> Option<&Url> {
        self.http_url_override(outcome).or(self.http_url.as_ref())
    }

    /// `WORKER_HTTP_URL_<OUTCOME>`, if set.
    pub fn http_url_override(&self, outcome: Outcome) -> Option<&Url> {
        match outcome {
            Outcome::Delivered => self.http_url_delivered.as_ref(),
            Outcome::Failed => self.http_url_failed.as_ref(),
            Outcome::Pending => self.http_url_pending.as_ref(),
        }
    }

    /// The retry schedule these settings describe.
    pub fn retry_policy(&self) -> crate::retry::RetryPolicy {
        crate::retry::RetryPolicy::new(self.max_attempts, self.retry_initial_delay, self.retry_max_delay)
    }
}

fn parse_route(variable: &'static str, value: &str) -> Result<Vec<HandlerKind>, ConfigError> {
    let mut kinds = Vec::new();
    for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind: HandlerKind = name.parse().map_err(|e: String| invalid(variable, e))?;
        if kinds.contains(&kind) {
            return Err(invalid(variable, format!("{name} is listed twice")));
        }
        kinds.push(kind);
    }
    if kinds.is_empty() {
        return Err(invalid(variable, "needs at least one handler (use log to only log)"));
    }
    Ok(kinds)
}

fn invalid(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { variable, problem: problem.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_in_order_and_reject_unknown_names() {
        assert_eq!(
            parse_route("X", "amqp, postgres,log").ok(),
            Some(vec![HandlerKind::Amqp, HandlerKind::Postgres, HandlerKind::Log])
        );
        assert!(parse_route("X", "amqp,smtp").is_err());
        assert!(parse_route("X", "log,log").is_err());
        assert!(parse_route("X", " ").is_err());
    }

    #[test]
    fn handler_order_is_one_of_two_words() {
        assert_eq!("Concurrent".parse::<HandlerOrder>().ok(), Some(HandlerOrder::Concurrent));
        assert_eq!("sequential".parse::<HandlerOrder>().ok(), Some(HandlerOrder::Sequential));
        let error = "parallel".parse::<HandlerOrder>().err().unwrap_or_default();
        assert!(error.contains("sequential, concurrent"), "{error}");
    }

    #[test]
    fn filters_need_known_keys() {
        assert!(parse_filter("reason=permanent_failure").is_ok());
        assert!(parse_filter("colour=red").is_err());
        assert!(parse_filter("reason").is_err());
        assert!(parse_filter("handler=http").is_ok());
        assert!(parse_filter("provider=twilio").is_ok());
        assert!(parse_filter("outcome=failed").is_ok());
        let error = parse_filter("reason=bogus").err().unwrap_or_default();
        assert!(error.contains("permanent_failure, retries_exhausted, unparseable"), "{error}");
        assert!(parse_filter("outcome=Delivered").is_err());
        assert!(parse_filter("endpoint=crm").is_ok());
        assert!(parse_filter("endpoint=").is_err());
    }

    #[test]
    fn instants_are_rfc3339_or_a_duration_ago() {
        assert!(parse_instant("2026-12-07T10:00:00Z").is_ok());
        let hour_ago = parse_instant("1h").unwrap_or_default();
        let delta = chrono::Utc::now() - hour_ago;
        assert!((delta - chrono::Duration::hours(1)).num_seconds().abs() < 5, "{delta}");
        assert_eq!(parse_ago("2d"), chrono::Duration::try_days(2));
        for bad in ["yesterday", "5", "h", "-3h", "3w"] {
            assert!(parse_instant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn never_final_windows_parse_per_provider() {
        let mut config = Cli::parse_from(["worker"]).config;
        config.never_final_windows = "twilio=60, telnyx=120".to_owned();
        let settings = config.maintenance_settings().expect("valid windows");
        assert_eq!(settings.windows.of(Provider::Twilio), Duration::from_secs(60));
        assert_eq!(settings.windows.of(Provider::Telnyx), Duration::from_secs(120));
        assert_eq!(settings.windows.of(Provider::Plivo), Duration::from_secs(172_800));
        for bad in ["twilio", "smtp=5", "twilio=0", "twilio=soon"] {
            config.never_final_windows = bad.to_owned();
            let error = config.maintenance_settings().err().map(|e| e.variable);
            assert_eq!(error, Some("WORKER_NEVER_FINAL_WINDOWS"), "{bad}");
        }
    }
}
