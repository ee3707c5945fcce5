//! `worker`: turns confirmed receipts into business events.
//!
//! It consumes the receipts queue with manual acks and, for each event, runs
//! the handlers configured for its outcome. A message is acked only after
//! every handler succeeded, or after it was safely moved to a retry queue or
//! the parking lot: a receipt taken off the queue is never just dropped.
//!
//! - [`config`]: settings and the outcome -> handlers routing table.
//! - [`startup`]: builds and runs the worker (tests use the same code).
//! - [`consumer`]: the consume loop, bounded concurrency, reconnects, drain.
//! - [`dispatch`]: one event through its handlers, deciding ack/retry/park.
//! - [`handlers`]: the downstream handlers behind one trait.
//! - [`retry`]: the backoff schedule.
//! - [`parking`]: the parking lot and the replay subcommands.

pub mod config;
pub mod consumer;
pub mod dispatch;
pub mod handlers;
pub mod metrics;
pub mod parking;
pub mod retry;
pub mod routes;
pub mod startup;

pub use config::Config;
pub use startup::Application;
