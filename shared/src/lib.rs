//! Code shared by the `ingest` and `worker` binaries.
//!
//! This crate is the contract between the two binaries: what one writes,
//! the other reads. Provider wire formats and signature checks are not part
//! of it: only ingest sees a provider's request, so they live in ingest.
//! What both sides must agree on lives here once:
//! - what a delivery receipt *is* ([`domain`], [`event`], whose JSON Schema is
//!   [`event::SCHEMA`]), and the copy of a refused request ([`quarantine`]);
//! - where receipts travel on the broker ([`amqp`]): exchange and queue names,
//!   queue arguments (declared from one place because RabbitMQ refuses a
//!   re-declaration with different arguments), and a supervised connection;
//! - how the processes are run: [`config`], [`metrics`], [`telemetry`], [`shutdown`].

pub mod amqp;
pub mod config;
pub mod domain;
pub mod event;
pub mod metrics;
pub mod quarantine;
pub mod shutdown;
pub mod telemetry;
pub mod words;

pub use domain::{EventId, MessageId, Msisdn, Outcome, Provider};
pub use event::{Destination, Network, ReceiptEvent};
