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
use std::fmt;
use std::str::FromStr;

/// The handlers that exist, as named in `WORKER_ROUTE_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The configuration and metrics name.
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerKind::Amqp => "amqp",
            HandlerKind::Http => "http",
            HandlerKind::Postgres => "postgres",
            HandlerKind::Log => "log",
        }
    }

    /// Every kind, for metrics pre-creation.
    pub const ALL: [HandlerKind; 4] =
        [HandlerKind::Amqp, HandlerKind::Http, HandlerKind::Postgres, HandlerKind::Log];
}

impl fmt::Display for HandlerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HandlerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown handler {s:?} (expected amqp, http, postgres or log)"))
    }
}

/// Why a handler did not succeed, which decides retry vs parking.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later (timeouts, 5xx, 429, connection errors).
    #[error("transient: {0}")]
    Transient(String),
    /// Will not succeed by retrying (4xx, constraint violations).
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    /// Metrics label.
    pub fn result_label(&self) -> &'static str {
        match self {
            HandlerError::Transient(_) => "transient",
            HandlerError::Permanent(_) => "permanent",
        }
    }
}

/// One downstream destination for events.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Which handler this is.
    fn kind(&self) -> HandlerKind;
    /// Delivers `event`. Must be idempotent on `event.event_id`.
    async fn handle(&self, event: &ReceiptEvent) -> Result<(), HandlerError>;
}
