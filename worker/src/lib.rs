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
//! - [`envelope`]: the bookkeeping headers a message carries between queues.
//! - [`retry`]: the backoff schedule and the publish into a delay queue.
//! - [`parking`]: the parking lot, for events retrying cannot help.
//! - [`replay`]: the operator's `replay-parked` and `replay-quarantine`.
//! - [`parked`]: the operator's `parked list`, which leaves the parking lot as it was.
//! - [`analytics`]: destination country/network of receipts and their metrics.
//! - [`maintenance`], [`never_final`], [`retention`]: the status store's
//!   background jobs (synthetic receipts for never-final messages, bounded history).
//! - [`report`]: `worker report`, delivery numbers from the status store.
//! - [`probes`]: `/healthz`, `/readyz` and `/metrics`.

pub mod acks;
pub mod analytics;
pub mod config;
pub mod consumer;
pub mod dispatch;
pub mod envelope;
pub mod handlers;
pub mod maintenance;
pub mod metrics;
pub mod never_final;
pub mod parked;
pub mod parking;
pub mod probes;
pub mod replay;
pub mod report;
pub mod requeued;
pub mod retention;
pub mod retry;
pub mod startup;

pub use config::Config;
pub use startup::Application;
