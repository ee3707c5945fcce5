//! `ingest`: the HTTP edge that makes delivery receipts durable.
//!
//! A receipt is answered 200 only once RabbitMQ has confirmed it holds the
//! message; anything else is a 4xx (the provider must not retry) or a 503
//! (it must). The process keeps no state of its own, so it scales by copies.
//!
//! - [`config`]: settings from the environment, validated at start-up.
//! - [`startup`]: builds the app (tests use the same code on port 0).
//! - [`routes`]: the webhook routes, probes and `/metrics`.
//! - [`intake`]: decode, verify, parse, publish: every request's way through.
//! - [`providers`]: one folder per provider API (wire format, authenticity
//!   check, settings, samples) and the registry that lists them.
//! - [`signature`]: what the providers' authenticity checks share.
//! - [`error`]: every way a request can fail, and the status it gets.
//! - [`readiness`]: `/readyz` follows pod-local trouble only, never a broker-wide alarm.

pub mod accounts;
pub mod config;
pub mod error;
pub mod intake;
pub mod metrics;
pub mod providers;
pub mod readiness;
pub mod routes;
pub mod signature;
pub mod startup;
pub mod state;

pub use config::Config;
pub use startup::Application;
