//! The black-box tests of ingest and worker against the machine's RabbitMQ
//! and PostgreSQL, as modules of one test binary: linking one binary instead
//! of one per file is what a change to `src/` costs on two cores.
//!
//! The modules keep their files (`tests/<module>.rs`), so a test is still
//! found where the documentation says; run one file's tests with
//! `cargo test -p dlr-tests --test integration <module>::`.
//!
//! All tests share this process. None sets an environment variable or other
//! process-wide state: each has its own broker names and database
//! ([`dlr_tests::TestApp`]), apps on random ports, and its own metrics
//! registry per app. The `#[ignore]`d ones (a memory alarm on the broker)
//! run alone with `-- --ignored --test-threads=1`.

mod accounts;
mod alarm_worker;
mod amqp_edges;
mod broker_addresses;
mod deploy;
mod fixture;
mod forgeries;
mod intake;
mod logs;
mod method_metrics;
mod postgres;
mod postgres_tls;
mod providers;
mod quarantine_replay;
mod readiness;
mod safety_nets;
mod senders;
mod sharding;
mod signatures;
mod startup_errors;
mod topology_errors;
mod traces;
mod webhooks;
mod worker;
