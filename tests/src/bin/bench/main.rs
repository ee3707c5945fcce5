//! Benchmark of ingest and worker against the local broker, with the
//! broker's own ceilings measured in the same run for comparison.
//!
//! Run through `deploy/bench.sh` (release build). Prints one line per
//! measurement; nothing here asserts: the numbers are for people.
//!
//! - broker publish ceilings: persistent messages to a quorum queue, with
//!   publisher confirms and a window of outstanding confirms, both as plain
//!   700-byte messages and exactly as ingest publishes receipts;
//! - ingest: form POSTs of the sample receipt at fixed concurrency against
//!   the release binary (a child process, so its peak RSS can be read);
//! - broker consume ceiling: manual acks at the worker's prefetch;
//! - worker: the release binary draining a pre-filled queue on each route
//!   (`log`, `postgres`, `amqp`, `http` to a local receiver, and the
//!   README's `postgres,amqp,http`), in rounds, with the CPU each process
//!   spent and PostgreSQL's commits per event;
//! - end to end: ingest under an open-loop load at half its measured
//!   maximum, the worker on `postgres,amqp,http`; latency from ingest's
//!   receipt (`received_at`) to the receiver's clock, and the queue depth;
//! - shard sweep (`--shard-sweep 1,2,3,6`, instead of the rest): for each
//!   `AMQP_RECEIPT_SHARDS`, the broker ceiling with ingest's messages spread
//!   over the shards and ingest under load, with each broker node's CPU per
//!   message (sweep.rs).

use anyhow::{Context, Result, bail};
use axum::extract::State;
use base64::Engine as _;
use clap::Parser;
use dlr_shared::ReceiptEvent;
use dlr_shared::amqp::topology::RECEIPT_ROUTING_KEY;
use dlr_shared::amqp::{Topology, receipt_properties};
use dlr_tests::{
    TestBroker, TestDatabase, amqp_url, free_port, metric_value, percentile, unique_topology, vonage_form,
};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod broker;
mod end_to_end;
mod ingest;
mod processes;
mod sink;
mod sweep;
mod worker;

use broker::*;
use end_to_end::*;
use ingest::*;
use processes::*;
use sink::*;
use sweep::*;
use worker::*;

#[derive(Parser)]
#[command(about = "Benchmarks ingest and worker against the local RabbitMQ")]
struct Args {
    /// Directory holding the release `ingest` and `worker` binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Seconds of load against ingest in each round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds of (broker ceilings, ingest load); medians are reported, since
    /// one short run on a shared two-core machine varies by 10-20 %.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent HTTP connections against ingest.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Messages for each broker ceiling run and for the worker runs.
    #[arg(long, default_value_t = 60_000)]
    messages: usize,
    /// Skip the worker part.
    #[arg(long)]
    ingest_only: bool,
    /// Skip the ingest part (broker consume ceiling and worker runs only).
    #[arg(long, conflicts_with = "ingest_only")]
    worker_only: bool,
    /// Broker address(es) instead of AMQP_URL: a comma-separated list of a
    /// cluster's nodes is given to ingest and worker whole; the ceilings are
    /// measured through the first, where ingest connects too.
    #[arg(long)]
    amqp_url: Option<String>,
    /// Events in the pre-filled queue of each worker drain.
    #[arg(long, default_value_t = 20_000)]
    drain_messages: usize,
    /// Rounds of worker drains (every route once per round); medians are reported.
    #[arg(long, default_value_t = 3)]
    drain_rounds: usize,
    /// Routes to drain, comma-separated lists joined by `;`; a route ending
    /// in `@concurrent` runs its handlers at once (WORKER_HANDLER_ORDER).
    #[arg(long, default_value = "log;postgres;amqp;http;postgres,amqp,http;postgres,amqp,http@concurrent")]
    routes: String,
    /// Handler orders of the end-to-end runs (one run each), comma-separated.
    #[arg(long, default_value = "sequential,concurrent")]
    end_to_end_orders: String,
    /// Extra worker environment, KEY=VALUE (repeatable), e.g.
    /// WORKER_POSTGRES_LINGER_MS=0 to compare without group commit.
    #[arg(long = "worker-env", value_parser = parse_env)]
    worker_env: Vec<(String, String)>,
    /// Ingest's maximum rate to take half of for the end-to-end run, when
    /// the ingest part is skipped (measured when 0).
    #[arg(long, default_value_t = 0.0)]
    ingest_max: f64,
    /// Skip the end-to-end run.
    #[arg(long)]
    no_end_to_end: bool,
    /// Trace export of the ingest runs, comma-separated, each round runs
    /// every one in turn: `off`, or `on` (OTLP to a local sink, every
    /// request traced). A route ending in `+otel` runs the worker with
    /// export on the same way.
    #[arg(long, default_value = "off")]
    ingest_tracing: String,
    /// Connections of the end-to-end load. Each sends its share of the
    /// schedule one request at a time, so the load stays open-loop only while
    /// a request takes less than connections / rate: too few, and a slow
    /// ingest slows the load down instead of queueing it.
    #[arg(long, default_value_t = 256)]
    end_to_end_connections: usize,
    /// Run only the shard sweep over these `AMQP_RECEIPT_SHARDS` values,
    /// comma-separated (e.g. 1,2,3,6), `rounds` rounds each.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..=64))]
    shard_sweep: Vec<u16>,
    /// Broker node processes (beam.smp pids, comma-separated, in the order
    /// of the AMQP URLs) whose CPU the shard sweep reports per message;
    /// by default the processes listening on the URLs' ports (needs root).
    #[arg(long, value_delimiter = ',')]
    broker_pids: Vec<u32>,
    /// The local cluster's script (deploy/cluster.sh): the shard sweep then
    /// spreads each run's shard leaders over the nodes
    /// (`rabbitmq-queues rebalance quorum`) before measuring.
    #[arg(long)]
    cluster_script: Option<PathBuf>,
}

/// The local OTLP sink of the runs with trace export.
static OTLP_SINK: std::sync::OnceLock<dlr_tests::otlp::Sink> = std::sync::OnceLock::new();

/// The settings that turn trace export on: every trace sampled (no caller
/// sends a traceparent, so each receipt starts one), to the local sink.
fn tracing_env() -> Vec<(&'static str, String)> {
    let Some(sink) = OTLP_SINK.get() else { return Vec::new() };
    vec![("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()), ("OTEL_TRACES_SAMPLER", "always_on".to_owned())]
}

fn parse_env(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{value:?}: expected KEY=VALUE"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(urls) = &args.amqp_url {
        dlr_tests::set_amqp_urls(urls);
    }
    if !args.shard_sweep.is_empty() {
        return shard_sweep(&args, &args.shard_sweep).await;
    }
    let exporting = args.ingest_tracing.split(',').any(|v| v.trim() == "on") || args.routes.contains("+otel");
    if exporting {
        let sink = dlr_tests::otlp::Sink::start().await?;
        println!("trace export to a local OTLP sink at {}", sink.endpoint());
        let _ = OTLP_SINK.set(sink);
    }
    let mut ingest_max = args.ingest_max;
    if !args.worker_only {
        ingest_max = ingest_part(&args).await?;
    }
    if args.ingest_only {
        return Ok(());
    }

    let prefetch = worker_prefetch(&args)?;
    let consume = consume_ceiling(args.messages, prefetch).await?;
    println!("broker consume ceiling (prefetch {prefetch} as the worker's, manual ack): {consume:.0} msg/s");
    let receiver = BenchReceiver::start().await?;
    let routes: Vec<&str> = args.routes.split(';').map(str::trim).filter(|r| !r.is_empty()).collect();
    let mut results: Vec<Vec<Drain>> = routes.iter().map(|_| Vec::new()).collect();
    for round in 1..=args.drain_rounds.max(1) {
        for (route, results) in routes.iter().zip(&mut results) {
            let drain = drain_route(&args, route, &receiver).await?;
            println!("round {round}: worker on {route}: {}", drain.describe());
            results.push(drain);
        }
    }
    let mut medians = Vec::new();
    for (route, results) in routes.iter().zip(&results) {
        let rate = median(&mut results.iter().map(|d| d.rate).collect::<Vec<_>>());
        let rss = results.iter().map(|d| d.rss_mb).fold(0.0, f64::max);
        println!("worker on {route}, median: {rate:.0} events/s, peak RSS {rss:.1} MB");
        medians.push((*route, rate));
    }
    let rate_of = |name: &str| medians.iter().find(|(r, _)| *r == name).map(|(_, rate)| *rate);
    if let (Some(log), Some(pg)) = (rate_of("log"), rate_of("postgres")) {
        println!(
            "postgres vs log: {pg:.0} / {log:.0} events/s = {:.2} (targets: >= 15000 events/s, >= 0.4), \
             {:.0}% of the consume ceiling",
            pg / log,
            100.0 * pg / consume
        );
    }
    for route in ["postgres,amqp,http", "postgres,amqp,http@concurrent"] {
        if let Some(all) = rate_of(route) {
            println!("{route}: {all:.0} events/s with one worker (target >= 8000)");
        }
    }

    if !args.no_end_to_end {
        if ingest_max <= 0.0 {
            ingest_max = ingest_load(&args, false, 1).await?.rate;
            println!("ingest maximum (one run): {ingest_max:.0} receipts/s");
        }
        for order in args.end_to_end_orders.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            end_to_end(&args, ingest_max / 2.0, order, &receiver).await?;
        }
    }
    Ok(())
}
