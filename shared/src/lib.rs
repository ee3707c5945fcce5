//! Code shared by the `ingest` and `worker` binaries.
//!
//! Both binaries must agree on three things, so they live here once:
//! - what a delivery receipt *is* ([`domain`], [`event`]) and how each provider's
//!   wire format becomes one ([`providers`], [`signature`]);
//! - where receipts travel on the broker ([`amqp`]): exchange and queue names,
//!   queue arguments (declared from one place because RabbitMQ refuses a
//!   re-declaration with different arguments), and a supervised connection;
//! - how the processes are run: [`config`], [`metrics`], [`telemetry`], [`shutdown`].

pub mod amqp;
pub mod config;
pub mod domain;
pub mod event;
pub mod metrics;
pub mod providers;
pub mod shutdown;
pub mod signature;
pub mod telemetry;

pub use domain::{EventId, MessageId, Msisdn, Outcome, Provider};
pub use event::ReceiptEvent;
