//! Downstream handlers behind one trait.
//!
//! A handler gets the canonical event and either succeeds or says whether a
//! later retry may help. Adding a fifth handler is a new file here plus one
//! arm in [`HandlerKind`]; the consumer and dispatch logic do not change.
//!
//! Every handler is idempotent on the event id (AMQP `message_id`, HTTP
//! `webhook-id`, the status store's primary key), because delivery is at
//! least once: a crash between a handler's success and the ack replays it.

pub mod amqp;
pub mod http;
pub mod log;
pub mod postgres;

use async_trait::async_trait;
use dlr_shared::ReceiptEvent;
use dlr_shared::words;
use std::error::Error;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The handlers that exist, as named in `WORKER_ROUTE_*`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, strum::Display, strum::IntoStaticStr, strum::VariantArray,
)]
#[strum(serialize_all = "lowercase")]
pub enum HandlerKind {
    /// Republish to the events topic exchange.
    Amqp,
    /// Signed HTTP POST to a configured URL.
    Http,
    /// Status store in PostgreSQL.
    Postgres,
    /// One structured log line.
    Log,
}

impl HandlerKind {
    /// Every kind, for metrics pre-creation.
    pub const ALL: &[HandlerKind] = <Self as strum::VariantArray>::VARIANTS;

    /// The configuration and metrics name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl FromStr for HandlerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        words::parse(s)
            .ok_or_else(|| format!("unknown handler {s:?} (expected one of {})", words::list::<Self>()))
    }
}

/// Why a handler did not succeed, which decides retry vs parking.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later (timeouts, 5xx, 429, connection errors).
    #[error("transient: {0}")]
    Transient(Failure),
    /// Will not succeed by retrying (4xx, constraint violations).
    #[error("permanent: {0}")]
    Permanent(Failure),
}

impl HandlerError {
    /// A failure a retry may cure, caused by `cause`.
    pub fn transient(what: impl Into<String>, cause: impl Error + Send + Sync + 'static) -> Self {
        Self::Transient(Failure::because(what, cause))
    }

    /// A failure no retry can cure, caused by `cause`.
    pub fn permanent(what: impl Into<String>, cause: impl Error + Send + Sync + 'static) -> Self {
        Self::Permanent(Failure::because(what, cause))
    }

    /// What this failure counts as.
    pub fn result(&self) -> CallResult {
        match self {
            HandlerError::Transient(_) => CallResult::Transient,
            HandlerError::Permanent(_) => CallResult::Permanent,
        }
    }
}

/// What went wrong in a handler: our words, and the error that caused it
/// when there is one. Shared (`Arc`) because one failed database batch is
/// the answer of every event in it. Its text, the whole cause chain, is
/// what the message's `x-dlr-last-error` header and the logs carry.
#[derive(Debug, Clone)]
pub struct Failure {
    what: String,
    cause: Option<Arc<dyn Error + Send + Sync>>,
}

impl Failure {
    /// A failure with no underlying error (a receiver's status code).
    pub fn new(what: impl Into<String>) -> Self {
        Self { what: what.into(), cause: None }
    }

    /// A failure caused by `cause`.
    pub fn because(what: impl Into<String>, cause: impl Error + Send + Sync + 'static) -> Self {
        Self { what: what.into(), cause: Some(Arc::new(cause)) }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            None => f.write_str(&self.what),
            Some(cause) => {
                let cause: &(dyn Error + 'static) = cause.as_ref();
                write!(f, "{}: {}", self.what, dlr_shared::telemetry::describe(cause))
            }
        }
    }
}

impl Error for Failure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause.as_deref().map(|cause| cause as &(dyn Error + 'static))
    }
}

/// A handler call's result, the `result` label of
/// `dlr_worker_handler_results_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "lowercase")]
pub enum CallResult {
    /// The handler succeeded.
    Ok,
    /// It failed and a retry may help.
    Transient,
    /// It failed and retrying cannot help.
    Permanent,
}

/// One downstream destination for events.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Which handler this is.
    fn kind(&self) -> HandlerKind;
    /// Delivers `event`. Must be idempotent on `event.event_id`.
    async fn handle(&self, event: &ReceiptEvent) -> Result<(), HandlerError>;
    /// The webhook endpoints a handler fans out to, each a step of its own
    /// for the dispatcher (only the http handler has any).
    fn endpoints(&self) -> &[http::Endpoint] {
        &[]
    }
}
