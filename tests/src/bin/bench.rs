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
//!   message (`--broker-pids`, read from /proc).

use anyhow::{Context, Result, bail};
use axum::extract::State;
use base64::Engine as _;
use clap::Parser;
use dlr_shared::ReceiptEvent;
use dlr_shared::amqp::topology::RECEIPT_ROUTING_KEY;
use dlr_shared::amqp::{Topology, receipt_properties};
use dlr_tests::{TestBroker, TestDatabase, amqp_url, free_port, unique_topology, vonage_form};
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
    /// Connections of the end-to-end load. Each sends its share of the
    /// schedule one request at a time, so the load stays open-loop only while
    /// a request takes less than connections / rate: too few, and a slow
    /// ingest slows the load down instead of queueing it.
    #[arg(long, default_value_t = 256)]
    end_to_end_connections: usize,
    /// Run only the shard sweep over these `AMQP_RECEIPT_SHARDS` values,
    /// comma-separated (e.g. 1,2,3,6), `rounds` rounds each.
    #[arg(long)]
    shard_sweep: Option<String>,
    /// Broker node processes (beam.smp pids, comma-separated, in node
    /// order) whose CPU the shard sweep reports per message.
    #[arg(long, value_delimiter = ',')]
    broker_pids: Vec<u32>,
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
    if let Some(sweep) = &args.shard_sweep {
        return shard_sweep(&args, sweep).await;
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
            ingest_max = ingest_load(&args, 1).await?.rate;
            println!("ingest maximum (one run): {ingest_max:.0} receipts/s");
        }
        for order in args.end_to_end_orders.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            end_to_end(&args, ingest_max / 2.0, order, &receiver).await?;
        }
    }
    Ok(())
}

/// CPU seconds (user + system, all threads) each process has used so far.
fn cpu_seconds(pids: &[u32]) -> Vec<f64> {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command name (which may hold spaces): state is
            // the first, utime and stime the 12th and 13th, in USER_HZ ticks
            // (100 a second on Linux, whatever the kernel's own tick).
            let fields: Vec<&str> =
                stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
            (ticks(11) + ticks(12)) / 100.0
        })
        .collect()
}

/// Microseconds of CPU per message on each node between two samples.
fn per_message_us(before: &[f64], after: &[f64], messages: usize) -> Vec<f64> {
    before.iter().zip(after).map(|(b, a)| (a - b) * 1e6 / messages.max(1) as f64).collect()
}

fn show_us(per_node: &[f64]) -> String {
    if per_node.is_empty() {
        return "n/a (no --broker-pids)".to_owned();
    }
    let total: f64 = per_node.iter().sum();
    let nodes: Vec<String> = per_node.iter().map(|us| format!("{us:.0}")).collect();
    format!("{} (sum {total:.0})", nodes.join(" / "))
}

/// For each shard count: the broker's publish ceiling with ingest's
/// messages spread over the shards, and ingest under load, `rounds` times,
/// with each broker node's CPU per message; medians are printed.
async fn shard_sweep(args: &Args, sweep: &str) -> Result<()> {
    let counts: Vec<u16> = sweep
        .split(',')
        .map(|n| n.trim().parse::<u16>().context("--shard-sweep takes numbers"))
        .collect::<Result<_>>()?;
    let pids = &args.broker_pids;
    println!(
        "shard sweep: {} broker node(s) measured, {} messages per ceiling run, {} s of ingest load at {} connections",
        pids.len(),
        args.messages,
        args.seconds,
        args.concurrency
    );
    for shards in counts {
        let (mut ceilings, mut ingests, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
        let mut ceiling_cpu: Vec<Vec<f64>> = vec![Vec::new(); pids.len()];
        let mut ingest_cpu: Vec<Vec<f64>> = vec![Vec::new(); pids.len()];
        for round in 1..=args.rounds.max(1) {
            let before = cpu_seconds(pids);
            let ceiling = publish_ceiling(args.messages, 1000, 1, Shape::Receipt, shards).await?;
            let c_us = per_message_us(&before, &cpu_seconds(pids), args.messages);
            let before = cpu_seconds(pids);
            let ingest = ingest_load(args, shards).await?;
            let i_us = per_message_us(&before, &cpu_seconds(pids), ingest.accepted);
            println!(
                "round {round}, {shards} shard(s): broker ceiling {ceiling:.0} msg/s, broker CPU us/msg per node {}; \
                 ingest {:.0} receipts/s, p99 {:.1} ms, errors {}, broker CPU us/receipt per node {}",
                show_us(&c_us),
                ingest.rate,
                ingest.p99_ms,
                ingest.errors,
                show_us(&i_us)
            );
            ceilings.push(ceiling);
            ingests.push(ingest.rate);
            p99s.push(ingest.p99_ms);
            for (node, (c, i)) in c_us.iter().zip(&i_us).enumerate() {
                ceiling_cpu[node].push(*c);
                ingest_cpu[node].push(*i);
            }
        }
        let c_med: Vec<f64> = ceiling_cpu.iter_mut().map(|v| median(v)).collect();
        let i_med: Vec<f64> = ingest_cpu.iter_mut().map(|v| median(v)).collect();
        println!(
            "{shards} shard(s), median: broker ceiling {:.0} msg/s ({} us/msg per node); \
             ingest {:.0} receipts/s, p99 {:.1} ms ({} us/receipt per node)",
            median(&mut ceilings),
            show_us(&c_med),
            median(&mut ingests),
            median(&mut p99s),
            show_us(&i_med)
        );
    }
    Ok(())
}

/// A fresh durable quorum queue, like the receipts queue.
async fn declare_bench_queue(channel: &lapin::Channel) -> Result<String> {
    let queue = format!("test.bench.{}", uuid::Uuid::new_v4().simple());
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            args,
        )
        .await?;
    Ok(queue)
}

/// Broker publish ceilings and ingest under load, in rounds; returns
/// ingest's median rate.
async fn ingest_part(args: &Args) -> Result<f64> {
    // 16 publishers on one channel show what the broker does when the
    // client side is not the limit; one at a time shows why confirms must
    // be shared between requests.
    let parallel = publish_ceiling(args.messages, 1000, 16, Shape::Plain, 1).await?;
    let one_at_a_time = publish_ceiling(2_000, 1, 1, Shape::Plain, 1).await?;
    println!("broker publish, 16 publishers sharing a window of 1000: {parallel:.0} msg/s");
    println!("broker publish one at a time: {one_at_a_time:.0} msg/s");

    // The ceiling as usually defined (one publisher keeping 1000 confirms
    // outstanding) is measured next to each ingest run, so that both see
    // the same machine: plain messages, and exactly ingest's messages.
    let (mut plain, mut receipt, mut in_flight, mut rates) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut peak_rss_mb: f64 = 0.0;
    for round in 1..=args.rounds.max(1) {
        let ceiling = publish_ceiling(args.messages, 1000, 1, Shape::Plain, 1).await?;
        let receipt_ceiling = publish_ceiling(args.messages, 1000, 1, Shape::Receipt, 1).await?;
        // The same messages with only as many confirms outstanding as the
        // load has receipts in flight: what the broker itself does at
        // ingest's batch sizes, with no HTTP in the way.
        let same_in_flight = publish_ceiling(args.messages, args.concurrency, 1, Shape::Receipt, 1).await?;
        let ingest = ingest_load(args, 1).await?;
        println!(
            "round {round}: broker ceiling {ceiling:.0} msg/s plain, {receipt_ceiling:.0} msg/s with ingest's messages, \
             {same_in_flight:.0} msg/s with ingest's messages and window {}; \
             ingest {:.0} receipts/s at {} connections, p50 {:.1} ms, p99 {:.1} ms, errors {}, peak RSS {:.1} MB",
            args.concurrency,
            ingest.rate,
            args.concurrency,
            ingest.p50_ms,
            ingest.p99_ms,
            ingest.errors,
            ingest.peak_rss_mb,
        );
        plain.push(ceiling);
        in_flight.push(same_in_flight);
        receipt.push(receipt_ceiling);
        rates.push(ingest.rate);
        peak_rss_mb = peak_rss_mb.max(ingest.peak_rss_mb);
    }
    let (plain, receipt, rate) = (median(&mut plain), median(&mut receipt), median(&mut rates));
    let in_flight = median(&mut in_flight);
    println!(
        "broker publish ceiling (1 publisher, window 1000), median: {plain:.0} msg/s plain; \
         {receipt:.0} msg/s with ingest's messages (same exchange, queue arguments, properties, mandatory)"
    );
    println!(
        "broker publish with ingest's messages and window {} (= connections), median: {in_flight:.0} msg/s",
        args.concurrency
    );
    println!("ingest, median: {rate:.0} receipts/s, peak RSS {peak_rss_mb:.1} MB (target <= 50 MB)");
    println!(
        "ingest vs broker: {:.0}% of the ceiling for ingest's messages (target >= 60%), {:.0}% of the plain ceiling, \
         {:.0}% of the broker at the same window, {:.0}% of 16 publishers",
        100.0 * rate / receipt,
        100.0 * rate / plain,
        100.0 * rate / in_flight,
        100.0 * rate / parallel
    );
    Ok(rate)
}

/// What a ceiling run publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// 700-byte bodies with only `delivery_mode` 2, through the default
    /// exchange to a bare quorum queue: the broker's raw persistent rate.
    Plain,
    /// Exactly what ingest publishes: receipt events with ingest's
    /// properties and headers, `mandatory`, through the intake exchange to a
    /// receipts queue declared by `Topology::declare_intake` (dead-letter
    /// arguments included). The broker spends more per message on these.
    Receipt,
}

/// Persistent, confirmed publishes with at most `window` confirms
/// outstanding, from `tasks` tasks sharing one channel (ingest's request
/// handlers share one channel the same way); receipts spread over `shards`
/// receipts queues as ingest spreads them.
async fn publish_ceiling(
    count: usize,
    window: usize,
    tasks: usize,
    shape: Shape,
    shards: u16,
) -> Result<f64> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let topology = Topology { receipt_shards: shards, ..unique_topology() };
    // (exchange, routing key of the plain queue, mandatory, messages to
    // cycle through with their own routing key for receipts)
    let (exchange, routing_key, mandatory, messages) = match shape {
        Shape::Plain => {
            let queue = declare_bench_queue(&channel).await?;
            let plain = (vec![b'x'; 700], BasicProperties::default().with_delivery_mode(2), queue.clone());
            (String::new(), queue, false, vec![plain])
        }
        Shape::Receipt => {
            topology.declare_intake(&channel).await?;
            let mut messages = Vec::new();
            // Built before the clock starts; distinct ids like real traffic.
            for i in 0..count.min(10_000) {
                let event = sample_event(&format!("C{i:015X}"))?;
                let key = topology.receipt_routing_key(event.message_id.as_str()).to_owned();
                messages.push((event.to_json(), receipt_properties(&event), key));
            }
            (topology.exchange.clone(), RECEIPT_ROUTING_KEY.to_owned(), true, messages)
        }
    };
    let messages = std::sync::Arc::new(messages);
    let per_task_window = (window / tasks).max(1);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let channel = channel.clone();
        let (exchange, messages) = (exchange.clone(), messages.clone());
        set.spawn(async move {
            let mut pending = std::collections::VecDeque::new();
            for i in 0..count / tasks {
                let (body, properties, routing_key) = &messages[(task + i * tasks) % messages.len()];
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions { mandatory, ..Default::default() },
                        body,
                        properties.clone(),
                    )
                    .await?;
                pending.push_back(confirm);
                if pending.len() >= per_task_window
                    && let Some(oldest) = pending.pop_front()
                {
                    expect_stored(oldest.await?)?;
                }
            }
            for confirm in pending {
                expect_stored(confirm.await?)?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined??;
    }
    let rate = (count / tasks * tasks) as f64 / started.elapsed().as_secs_f64();
    match shape {
        Shape::Plain => {
            channel.queue_delete(routing_key.as_str().into(), QueueDeleteOptions::default()).await?;
        }
        Shape::Receipt => TestBroker::connect().await.cleanup(&topology, &[], &[]).await,
    }
    Ok(rate)
}

/// A ceiling counts only messages the broker acked and did not return.
fn expect_stored(confirmation: Confirmation) -> Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        other => bail!("broker did not store a ceiling message: {other:?}"),
    }
}

/// The event ingest would publish for the sample receipt with this id.
fn sample_event(message_id: &str) -> Result<ReceiptEvent> {
    let fields =
        dlr_ingest::providers::decode_urlencoded(vonage_form(message_id, "delivered").as_bytes(), "form")?;
    Ok(dlr_ingest::providers::vonage_sms::parse(&fields, chrono::Utc::now())?)
}

/// Median of a non-empty sample (0 for an empty one).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Peak resident set size of a process, from /proc (Linux).
fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_owned(bin: PathBuf, envs: &[(String, String)]) -> Result<ChildGuard> {
    let pairs: Vec<(&str, String)> = envs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    spawn(bin, &pairs)
}

fn spawn(bin: PathBuf, envs: &[(&str, String)]) -> Result<ChildGuard> {
    let mut command = Command::new(&bin);
    command.stdout(Stdio::null()).stderr(Stdio::null()).env("AMQP_URL", dlr_tests::amqp_urls());
    for (k, v) in envs {
        command.env(k, v);
    }
    Ok(ChildGuard(
        command.spawn().with_context(|| format!("starting {} (run cargo build --release)", bin.display()))?,
    ))
}

fn topology_env(topology: &Topology) -> Vec<(&'static str, String)> {
    vec![
        ("AMQP_EXCHANGE", topology.exchange.clone()),
        ("AMQP_QUEUE", topology.queue.clone()),
        ("AMQP_PARKED_QUEUE", topology.parked_queue.clone()),
        ("AMQP_QUARANTINE_QUEUE", topology.quarantine_queue.clone()),
    ]
}

struct IngestResult {
    accepted: usize,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
    peak_rss_mb: f64,
}

async fn ingest_load(args: &Args, shards: u16) -> Result<IngestResult> {
    let topology = Topology { receipt_shards: shards, ..unique_topology() };
    let port = free_port()?;
    let mut envs = topology_env(&topology);
    envs.push(("AMQP_RECEIPT_SHARDS", shards.to_string()));
    envs.push(("INGEST_ADDR", format!("127.0.0.1:{port}")));
    envs.push(("RUST_LOG", "warn".to_owned()));
    // The load is unsigned Vonage receipts.
    envs.push(("VONAGE_SIGNATURE_MODE", "off".to_owned()));
    let child = spawn(args.bin_dir.join("ingest"), &envs)?;
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&reqwest::Client::new(), &format!("{base}/readyz")).await?;

    // One plain HTTP/1.1 keep-alive connection per lane (hyper, no pool):
    // the generator shares the two cores with ingest and the broker, so it
    // should cost as little as possible.
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..args.concurrency {
        let addr = format!("127.0.0.1:{port}");
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let body = vonage_form(&format!("{lane:04X}{i:012X}"), "delivered");
                let request = hyper::Request::post("/dlr/vonage")
                    .header("host", &addr)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
                let sent = Instant::now();
                let ok = match sender.send_request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        // Read the body so the connection can be reused.
                        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                        ok
                    }
                    Err(_) => break,
                };
                if ok {
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                } else {
                    errors += 1;
                }
                i += 1;
            }
            Ok::<_, anyhow::Error>((latencies, errors))
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        let (l, e) = joined??;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let peak_rss_mb = peak_rss_mb(child.0.id());
    drop(child);
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| percentile(&latencies, q);
    let result = IngestResult {
        accepted: latencies.len(),
        rate: latencies.len() as f64 / elapsed,
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        errors,
        peak_rss_mb,
    };
    TestBroker::connect().await.cleanup(&topology, &[], &[]).await;
    Ok(result)
}

/// Fills `queue` with `count` receipt events through a confirm channel.
async fn fill(queue: &str, count: usize) -> Result<()> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut pending = std::collections::VecDeque::new();
    for i in 0..count {
        let event = sample_event(&format!("F{i:015X}"))?;
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &event.to_json(),
                receipt_properties(&event),
            )
            .await?;
        pending.push_back(confirm);
        if pending.len() >= 1000
            && let Some(oldest) = pending.pop_front()
        {
            oldest.await?;
        }
    }
    for confirm in pending {
        confirm.await?;
    }
    Ok(())
}

/// The worker's prefetch in these runs: `--worker-env WORKER_PREFETCH=` or
/// the worker's default.
fn worker_prefetch(args: &Args) -> Result<u16> {
    match args.worker_env.iter().rev().find(|(key, _)| key == "WORKER_PREFETCH") {
        Some((_, value)) => {
            value.parse().with_context(|| format!("WORKER_PREFETCH={value} is not a prefetch count"))
        }
        None => Ok(dlr_worker::config::DEFAULT_PREFETCH),
    }
}

/// Raw consume rate with manual acks at the worker's prefetch.
async fn consume_ceiling(count: usize, prefetch: u16) -> Result<f64> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let queue = declare_bench_queue(&channel).await?;
    fill(&queue, count).await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Acks run concurrently, up to the prefetch, as the worker's tasks do.
    let started = Instant::now();
    let mut acks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let Some(delivery) = consumer.next().await else { bail!("consumer ended") };
        let acker = delivery?.acker;
        acks.spawn(async move { acker.ack(BasicAckOptions::default()).await });
        while acks.len() >= usize::from(prefetch) {
            if let Some(joined) = acks.join_next().await {
                joined??;
            }
        }
    }
    while let Some(joined) = acks.join_next().await {
        joined??;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    Ok(rate)
}

/// One drain of a pre-filled queue.
struct Drain {
    rate: f64,
    rss_mb: f64,
    cpu: String,
    /// PostgreSQL transactions committed per event (postgres routes).
    commits_per_event: Option<f64>,
    /// Frames the worker sent to settle deliveries, per event: how well
    /// its acks were coalesced (1.0 = one ack per delivery).
    settle_frames_per_event: Option<f64>,
}

impl Drain {
    fn describe(&self) -> String {
        let commits = self.commits_per_event.map(|c| format!(", {c:.3} commits/event")).unwrap_or_default();
        let frames =
            self.settle_frames_per_event.map(|f| format!(", {f:.3} ack frames/event")).unwrap_or_default();
        format!("{:.0} events/s, peak RSS {:.1} MB, {}{commits}{frames}", self.rate, self.rss_mb, self.cpu)
    }
}

/// A downstream webhook receiver for the http handler: answers 200 at once,
/// counts calls and, while recording, the latency from ingest's receipt
/// (`received_at` in the event) to now, on the same machine's clock.
#[derive(Clone)]
struct BenchReceiver {
    url: String,
    calls: Arc<AtomicU64>,
    recording: Arc<AtomicBool>,
    latencies_ms: Arc<Mutex<Vec<f64>>>,
}

impl BenchReceiver {
    async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let receiver = Self {
            url: format!("http://{}/hook", listener.local_addr()?),
            calls: Arc::new(AtomicU64::new(0)),
            recording: Arc::new(AtomicBool::new(false)),
            latencies_ms: Arc::new(Mutex::new(Vec::new())),
        };
        let app =
            axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(receiver)
    }

    /// Starts recording latencies afresh, or stops (keeping what was recorded).
    fn record(&self, on: bool) {
        if on && let Ok(mut latencies) = self.latencies_ms.lock() {
            latencies.clear();
        }
        self.recording.store(on, Ordering::SeqCst);
    }
}

async fn receive(State(receiver): State<BenchReceiver>, body: bytes::Bytes) -> axum::http::StatusCode {
    if receiver.recording.load(Ordering::Relaxed)
        && let Ok(event) = serde_json::from_slice::<ReceiptEvent>(&body)
    {
        let ms = (chrono::Utc::now() - event.received_at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        if let Ok(mut latencies) = receiver.latencies_ms.lock() {
            latencies.push(ms);
        }
    }
    receiver.calls.fetch_add(1, Ordering::SeqCst);
    axum::http::StatusCode::OK
}

/// CPU clock ticks (utime + stime) of a process; Linux counts them in
/// 1/100 s (USER_HZ). A process that is gone reads as 0.
fn process_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // The command name may contain spaces: fields are counted after its ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    field(11) + field(12)
}

/// Summed ticks of every process whose name is `name` (`beam.smp` for
/// RabbitMQ, `postgres` for PostgreSQL's backends). The machine's broker and
/// database are shared, so other users' work is counted too.
fn ticks_named(name: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name))
        .map(process_ticks)
        .sum()
}

/// CPU of the processes in a run, for "where does the time go".
#[derive(Clone, Copy)]
struct CpuSample {
    worker: u64,
    ingest: u64,
    broker: u64,
    postgres: u64,
}

impl CpuSample {
    fn now(worker: Option<u32>, ingest: Option<u32>) -> Self {
        Self {
            worker: worker.map(process_ticks).unwrap_or(0),
            ingest: ingest.map(process_ticks).unwrap_or(0),
            broker: ticks_named("beam.smp"),
            postgres: ticks_named("postgres"),
        }
    }

    /// Percent of one core each used between `self` and `later`.
    fn describe(&self, later: &Self, seconds: f64, with_ingest: bool) -> String {
        let pct = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds.max(1e-3);
        let ingest = if with_ingest {
            format!("ingest {:.0}%, ", pct(self.ingest, later.ingest))
        } else {
            String::new()
        };
        format!(
            "CPU: {ingest}worker {:.0}%, broker {:.0}%, postgres {:.0}% (of one core)",
            pct(self.worker, later.worker),
            pct(self.broker, later.broker),
            pct(self.postgres, later.postgres)
        )
    }
}

/// Transactions committed in the database of `url` so far.
async fn commits(url: Option<&str>) -> Option<i64> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url?).await.ok()?;
    let commits =
        sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(&mut conn)
            .await
            .ok();
    let _ = conn.close().await;
    commits
}

/// The worker's environment for `route`.
fn worker_envs(
    args: &Args,
    topology: &Topology,
    port: u16,
    route: &str,
    database_url: Option<&str>,
    receiver: &BenchReceiver,
) -> Vec<(String, String)> {
    let (route, order) = route.split_once('@').unwrap_or((route, "sequential"));
    let mut envs: Vec<(String, String)> =
        topology_env(topology).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    envs.push(("WORKER_HANDLER_ORDER".into(), order.to_owned()));
    envs.push(("WORKER_ADDR".into(), format!("127.0.0.1:{port}")));
    envs.push(("WORKER_EVENTS_EXCHANGE".into(), format!("{}.events", topology.exchange)));
    envs.push(("RUST_LOG".into(), "warn".into()));
    for outcome in ["DELIVERED", "FAILED", "PENDING"] {
        envs.push((format!("WORKER_ROUTE_{outcome}"), route.to_owned()));
    }
    if let Some(url) = database_url {
        envs.push(("DATABASE_URL".into(), url.to_owned()));
    }
    if route.contains("http") {
        envs.push(("WORKER_HTTP_URL".into(), receiver.url.clone()));
        let secret = base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes());
        envs.push(("WORKER_HTTP_SECRET".into(), format!("whsec_{secret}")));
    }
    envs.extend(args.worker_env.iter().cloned());
    envs
}

/// Binds a queue to the events exchange so that the amqp handler's
/// publishes are routed (as in a deployment with consumers), bounded so
/// that it does not grow. Returns the connection that keeps it and its name.
async fn bind_capture(events_exchange: &str) -> Result<(Connection, String)> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let queue = format!("{events_exchange}.capture");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(1000));
    channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), arguments).await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            events_exchange.into(),
            "#".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((conn, queue))
}

/// The worker's retry queues, for clean-up.
fn retry_queues(topology: &Topology) -> Vec<String> {
    dlr_worker::retry::RetryPolicy::new(8, Duration::from_secs(1), Duration::from_secs(600))
        .delays()
        .into_iter()
        .map(|d| topology.retry_queue(d))
        .collect()
}

/// Events whose handlers have all succeeded (the count of the worker's
/// end-to-end histogram, observed once per finished event whatever the
/// handler order).
async fn handled(client: &reqwest::Client, metrics_url: &str) -> f64 {
    match client.get(metrics_url).send().await {
        Ok(r) => dlr_tests::metric_value(
            &r.text().await.unwrap_or_default(),
            "dlr_worker_end_to_end_latency_seconds_count",
            &[],
        ),
        Err(_) => 0.0,
    }
}

/// Frames the worker has sent to settle deliveries; `None` for a worker
/// that does not count them. Read after the last event finished, so the
/// last frames may still be held back for up to the settler's hold.
async fn settle_frames(client: &reqwest::Client, metrics_url: &str) -> Option<f64> {
    tokio::time::sleep(dlr_worker::acks::HOLD * 2).await;
    let metrics = client.get(metrics_url).send().await.ok()?.text().await.ok()?;
    metrics
        .contains("dlr_worker_settle_frames_total")
        .then(|| dlr_tests::metric_value(&metrics, "dlr_worker_settle_frames_total", &[]))
}

/// The share of finished events whose end-to-end latency (ingest's receipt
/// to the last handler, the worker's own histogram) was at most `seconds`,
/// which must be a bucket bound.
fn share_within(metrics: &str, seconds: &str) -> f64 {
    let name = "dlr_worker_end_to_end_latency_seconds";
    let within = dlr_tests::metric_value(metrics, &format!("{name}_bucket"), &[("le", seconds)]);
    let all = dlr_tests::metric_value(metrics, &format!("{name}_count"), &[]);
    if all > 0.0 { within / all } else { 0.0 }
}

/// Drains a pre-filled queue on `route`, with a fresh database when the
/// route writes to PostgreSQL.
async fn drain_route(args: &Args, route: &str, receiver: &BenchReceiver) -> Result<Drain> {
    let database = if route.contains("postgres") { Some(TestDatabase::create().await) } else { None };
    let result = worker_drain(args, route, database.as_ref().map(|d| d.url.as_str()), receiver).await;
    if let Some(database) = database {
        database.drop_database().await;
    }
    result
}

/// Pre-fills the receipts queue, starts the worker and times the drain from
/// the first handled event to the last (start-up and migrations excluded).
async fn worker_drain(
    args: &Args,
    route: &str,
    database_url: Option<&str>,
    receiver: &BenchReceiver,
) -> Result<Drain> {
    let count = args.drain_messages;
    let topology = unique_topology();
    let broker = TestBroker::connect().await;
    let port = free_port()?;
    let envs = worker_envs(args, &topology, port, route, database_url, receiver);
    let events_exchange = format!("{}.events", topology.exchange);
    let client = reqwest::Client::new();
    // Let the worker's own declaration create the queues and the events
    // exchange with their arguments: start it once, stop it, then fill.
    {
        let declare = spawn_owned(args.bin_dir.join("worker"), &envs)?;
        wait_ready(&client, &format!("http://127.0.0.1:{port}/readyz")).await?;
        drop(declare);
    }
    let (capture_conn, capture) = bind_capture(&events_exchange).await?;
    let outcome = async {
        fill(&topology.queue, count).await?;
        let commits_before = commits(database_url).await;
        let worker = spawn_owned(args.bin_dir.join("worker"), &envs)?;
        let metrics_url = format!("http://127.0.0.1:{port}/metrics");
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut first: Option<(Instant, f64, CpuSample)> = None;
        loop {
            if Instant::now() > deadline {
                bail!("worker on {route} did not drain {count} events in 300 s");
            }
            let done = handled(&client, &metrics_url).await;
            if first.is_none() && done > 0.0 {
                first = Some((Instant::now(), done, CpuSample::now(Some(worker.0.id()), None)));
            }
            if done as usize >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ended = Instant::now();
        let cpu_after = CpuSample::now(Some(worker.0.id()), None);
        let rss_mb = peak_rss_mb(worker.0.id());
        let settle_frames_per_event = settle_frames(&client, &metrics_url).await.map(|f| f / count as f64);
        drop(worker);
        let (started, done_at_start, cpu_before) = first.unwrap_or((ended, 0.0, cpu_after));
        let seconds = ended.duration_since(started).as_secs_f64().max(1e-3);
        let rate = (count as f64 - done_at_start) / seconds;
        // Backends flush their statistics when they exit.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let commits_per_event = match (commits_before, commits(database_url).await) {
            (Some(before), Some(after)) => Some((after - before) as f64 / count as f64),
            _ => None,
        };
        let cpu = cpu_before.describe(&cpu_after, seconds, false);
        Ok(Drain { rate, rss_mb, cpu, commits_per_event, settle_frames_per_event })
    }
    .await;
    let mut extra_queues = retry_queues(&topology);
    extra_queues.push(capture);
    broker.cleanup(&topology, &extra_queues, &[events_exchange]).await;
    let _ = capture_conn.close(200, "bench done".into()).await;
    outcome
}

/// Ingest and worker (`postgres,amqp,http`) under an open-loop load of
/// `rate` receipts/s: requests leave on schedule whether or not earlier
/// ones were answered, as providers send them.
async fn end_to_end(args: &Args, rate: f64, order: &str, receiver: &BenchReceiver) -> Result<()> {
    let database = TestDatabase::create().await;
    let result = end_to_end_run(args, rate, order, receiver, &database.url).await;
    database.drop_database().await;
    result
}

async fn end_to_end_run(
    args: &Args,
    rate: f64,
    order: &str,
    receiver: &BenchReceiver,
    database_url: &str,
) -> Result<()> {
    const ROUTE: &str = "postgres,amqp,http";
    let spec = format!("{ROUTE}@{order}");
    let topology = unique_topology();
    let broker = TestBroker::connect().await;
    let client = reqwest::Client::new();
    let worker_port = free_port()?;
    let envs = worker_envs(args, &topology, worker_port, &spec, Some(database_url), receiver);
    let events_exchange = format!("{}.events", topology.exchange);
    let worker = spawn_owned(args.bin_dir.join("worker"), &envs)?;
    wait_ready(&client, &format!("http://127.0.0.1:{worker_port}/readyz")).await?;
    let (capture_conn, capture) = bind_capture(&events_exchange).await?;
    let ingest_port = free_port()?;
    let mut ingest_envs = topology_env(&topology);
    ingest_envs.push(("INGEST_ADDR", format!("127.0.0.1:{ingest_port}")));
    ingest_envs.push(("RUST_LOG", "warn".to_owned()));
    ingest_envs.push(("VONAGE_SIGNATURE_MODE", "off".to_owned()));
    let outcome = async {
        let ingest = spawn(args.bin_dir.join("ingest"), &ingest_envs)?;
        wait_ready(&client, &format!("http://127.0.0.1:{ingest_port}/readyz")).await?;
        receiver.record(true);
        let calls_before = receiver.calls.load(Ordering::SeqCst);

        // Ready messages in the receipts queue (unacked ones are the
        // worker's prefetch window, not backlog), sampled every 250 ms.
        let sampling = Arc::new(AtomicBool::new(true));
        let depth_conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let depth_channel = depth_conn.create_channel().await?;
        let (queue, flag) = (topology.queue.clone(), sampling.clone());
        let sampler = tokio::spawn(async move {
            let mut depths = Vec::new();
            while flag.load(Ordering::SeqCst) {
                let passive = QueueDeclareOptions { passive: true, ..Default::default() };
                if let Ok(q) = depth_channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await {
                    depths.push(q.message_count());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            depths
        });

        let cpu_before = CpuSample::now(Some(worker.0.id()), Some(ingest.0.id()));
        let total = (rate * args.seconds as f64) as usize;
        let lanes = args.end_to_end_connections.max(1);
        let start = tokio::time::Instant::now() + Duration::from_millis(100);
        let mut tasks = tokio::task::JoinSet::new();
        for lane in 0..lanes {
            let addr = format!("127.0.0.1:{ingest_port}");
            tasks.spawn(async move {
                let (mut accepted, mut errors, mut late) = (0usize, 0usize, 0usize);
                let stream = tokio::net::TcpStream::connect(&addr).await?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                for index in (lane..total).step_by(lanes) {
                    let due = start + Duration::from_secs_f64(index as f64 / rate);
                    if tokio::time::Instant::now() > due + Duration::from_millis(10) {
                        late += 1;
                    }
                    tokio::time::sleep_until(due).await;
                    let body = vonage_form(&format!("E{index:015X}"), "delivered");
                    let request = hyper::Request::post("/dlr/vonage")
                        .header("host", &addr)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
                    match sender.send_request(request).await {
                        Ok(response) => {
                            if response.status().is_success() {
                                accepted += 1;
                            } else {
                                errors += 1;
                            }
                            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                        }
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
                Ok::<_, anyhow::Error>((accepted, errors, late))
            });
        }
        let (mut accepted, mut errors, mut late) = (0, 0, 0);
        while let Some(joined) = tasks.join_next().await {
            let (a, e, l) = joined??;
            accepted += a;
            errors += e;
            late += l;
        }
        let load_seconds = start.elapsed().as_secs_f64();
        let cpu_after = CpuSample::now(Some(worker.0.id()), Some(ingest.0.id()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while receiver.calls.load(Ordering::SeqCst) - calls_before < accepted as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delivered = receiver.calls.load(Ordering::SeqCst) - calls_before;
        // With concurrent handlers the receiver is not necessarily the
        // last: wait for the worker to finish every event too.
        let metrics_url = format!("http://127.0.0.1:{worker_port}/metrics");
        while handled(&client, &metrics_url).await < accepted as f64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let metrics = match client.get(&metrics_url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let finished = dlr_tests::metric_value(&metrics, "dlr_worker_end_to_end_latency_seconds_count", &[]);
        let within_50ms = share_within(&metrics, "0.05");
        sampling.store(false, Ordering::SeqCst);
        let depths = sampler.await.unwrap_or_default();
        let _ = depth_conn.close(200, "bench done".into()).await;
        receiver.record(false);
        drop(ingest);
        let mut latencies = receiver.latencies_ms.lock().map(|l| l.clone()).unwrap_or_default();
        latencies.sort_by(f64::total_cmp);
        let pick = |q: f64| percentile(&latencies, q);
        let max_depth = depths.iter().copied().max().unwrap_or(0);
        let tail = &depths[depths.len() * 3 / 4..];
        let tail_max = tail.iter().copied().max().unwrap_or(0);
        // Flat: the last quarter of the load stays within the range of its
        // first half (a backlog that the worker keeps up with comes and goes;
        // one it cannot keep up with ends at its highest).
        let first_half_max = depths[..depths.len() / 2].iter().copied().max().unwrap_or(0);
        let flat = tail_max <= first_half_max.max(100);
        println!(
            "end to end at {rate:.0} receipts/s (half of ingest's {:.0}), open loop on {lanes} connections for \
             {:.1} s ({:.0} receipts/s achieved), worker on {spec}: {accepted} accepted, {errors} errors, {late} sent >10 ms late, {delivered} reached the receiver, \
             {finished:.0} finished every handler; receipt-to-http-handler p50 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms; finished within 50 ms of ingest's receipt (worker's histogram): {:.2} % \
             (target p99 <= 50 ms: >= 99 %); ready messages in the queue: max {max_depth}, max in the last \
             quarter {tail_max} ({}); {}",
            rate * 2.0,
            load_seconds,
            (accepted + errors) as f64 / load_seconds,
            pick(0.50),
            pick(0.99),
            latencies.last().copied().unwrap_or(0.0),
            100.0 * within_50ms,
            if flat { "flat: the last quarter within the first half's range" } else { "growing" },
            cpu_before.describe(&cpu_after, load_seconds, true),
        );
        Ok(())
    }
    .await;
    drop(worker);
    let mut extra_queues = retry_queues(&topology);
    extra_queues.push(capture);
    broker.cleanup(&topology, &extra_queues, &[events_exchange]).await;
    let _ = capture_conn.close(200, "bench done".into()).await;
    outcome
}

async fn wait_ready(client: &reqwest::Client, url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if client.get(url).send().await.map(|r| r.status().is_success()).unwrap_or(false) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} never became ready")
}

/// The `q` quantile (0..=1) of ascending `sorted` values; 0 when empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}
