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
//! - worker: the release binary draining a pre-filled queue with the log
//!   handler, then with the postgres handler.

use anyhow::{Context, Result, bail};
use clap::Parser;
use dlr_shared::ReceiptEvent;
use dlr_shared::amqp::topology::RECEIPT_ROUTING_KEY;
use dlr_shared::amqp::{Topology, receipt_properties};
use dlr_tests::{TestBroker, TestDatabase, amqp_url, unique_topology, vonage_form};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(urls) = &args.amqp_url {
        dlr_tests::set_amqp_urls(urls);
    }
    if !args.worker_only {
        ingest_part(&args).await?;
    }
    if args.ingest_only {
        return Ok(());
    }

    let consume = consume_ceiling(args.messages).await?;
    println!("broker consume ceiling (prefetch 100, manual ack): {consume:.0} msg/s");
    let (log_rate, log_rss) = worker_drain(&args, args.messages, "log", None).await?;
    println!(
        "worker (log handler): {log_rate:.0} events/s, {:.0}% of the consume ceiling, peak RSS {log_rss:.1} MB",
        100.0 * log_rate / consume
    );
    let database = TestDatabase::create().await;
    let pg = worker_drain(&args, args.messages / 2, "postgres", Some(&database.url)).await;
    database.drop_database().await;
    let (pg_rate, pg_rss) = pg?;
    println!("worker (postgres handler): {pg_rate:.0} events/s, peak RSS {pg_rss:.1} MB");
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

/// Broker publish ceilings and ingest under load, in rounds.
async fn ingest_part(args: &Args) -> Result<()> {
    // 16 publishers on one channel show what the broker does when the
    // client side is not the limit; one at a time shows why confirms must
    // be shared between requests.
    let parallel = publish_ceiling(args.messages, 1000, 16, Shape::Plain).await?;
    let one_at_a_time = publish_ceiling(2_000, 1, 1, Shape::Plain).await?;
    println!("broker publish, 16 publishers sharing a window of 1000: {parallel:.0} msg/s");
    println!("broker publish one at a time: {one_at_a_time:.0} msg/s");

    // The ceiling as usually defined (one publisher keeping 1000 confirms
    // outstanding) is measured next to each ingest run, so that both see
    // the same machine: plain messages, and exactly ingest's messages.
    let (mut plain, mut receipt, mut in_flight, mut rates) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut peak_rss_mb: f64 = 0.0;
    for round in 1..=args.rounds.max(1) {
        let ceiling = publish_ceiling(args.messages, 1000, 1, Shape::Plain).await?;
        let receipt_ceiling = publish_ceiling(args.messages, 1000, 1, Shape::Receipt).await?;
        // The same messages with only as many confirms outstanding as the
        // load has receipts in flight: what the broker itself does at
        // ingest's batch sizes, with no HTTP in the way.
        let same_in_flight = publish_ceiling(args.messages, args.concurrency, 1, Shape::Receipt).await?;
        let ingest = ingest_load(args).await?;
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
    Ok(())
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
/// handlers share one channel the same way).
async fn publish_ceiling(count: usize, window: usize, tasks: usize, shape: Shape) -> Result<f64> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let topology = unique_topology();
    // (exchange, routing key, mandatory, messages to cycle through)
    let (exchange, routing_key, mandatory, messages) = match shape {
        Shape::Plain => {
            let queue = declare_bench_queue(&channel).await?;
            let plain = (vec![b'x'; 700], BasicProperties::default().with_delivery_mode(2));
            (String::new(), queue, false, vec![plain])
        }
        Shape::Receipt => {
            topology.declare_intake(&channel).await?;
            let mut messages = Vec::new();
            // Built before the clock starts; distinct ids like real traffic.
            for i in 0..count.min(10_000) {
                let event = sample_event(&format!("C{i:015X}"))?;
                messages.push((event.to_json(), receipt_properties(&event)));
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
        let (exchange, routing_key, messages) = (exchange.clone(), routing_key.clone(), messages.clone());
        set.spawn(async move {
            let mut pending = std::collections::VecDeque::new();
            for i in 0..count / tasks {
                let (body, properties) = &messages[(task + i * tasks) % messages.len()];
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
        dlr_shared::providers::decode_urlencoded(vonage_form(message_id, "delivered").as_bytes(), "form")?;
    Ok(dlr_shared::providers::vonage_sms::parse(&fields, chrono::Utc::now())?)
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
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
    peak_rss_mb: f64,
}

async fn ingest_load(args: &Args) -> Result<IngestResult> {
    let topology = unique_topology();
    let port = free_port()?;
    let mut envs = topology_env(&topology);
    envs.push(("INGEST_ADDR", format!("127.0.0.1:{port}")));
    envs.push(("RUST_LOG", "warn".to_owned()));
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
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let result = IngestResult {
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

/// Raw consume rate with manual acks at prefetch 100.
async fn consume_ceiling(count: usize) -> Result<f64> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let queue = declare_bench_queue(&channel).await?;
    fill(&queue, count).await?;
    channel.basic_qos(100, BasicQosOptions::default()).await?;
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
        while acks.len() >= 100 {
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

/// Pre-fills the receipts queue, starts the worker and times the drain.
async fn worker_drain(
    args: &Args,
    count: usize,
    handler: &str,
    database_url: Option<&str>,
) -> Result<(f64, f64)> {
    let topology = unique_topology();
    let broker = TestBroker::connect().await;
    // Let the worker's own declaration create the queue with its arguments:
    // start it once, stop it, then fill.
    let port = free_port()?;
    let mut envs = topology_env(&topology);
    envs.push(("WORKER_ADDR", format!("127.0.0.1:{port}")));
    let events_exchange = format!("{}.events", topology.exchange);
    envs.push(("WORKER_EVENTS_EXCHANGE", events_exchange.clone()));
    for outcome in ["DELIVERED", "FAILED", "PENDING"] {
        envs.push((leak(format!("WORKER_ROUTE_{outcome}")), handler.to_owned()));
    }
    if let Some(url) = database_url {
        envs.push(("DATABASE_URL", url.to_owned()));
    }
    let client = reqwest::Client::new();
    {
        let declare = spawn(args.bin_dir.join("worker"), &envs)?;
        wait_ready(&client, &format!("http://127.0.0.1:{port}/readyz")).await?;
        drop(declare);
    }
    fill(&topology.queue, count).await?;
    let worker = spawn(args.bin_dir.join("worker"), &envs)?;
    let started = Instant::now();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if Instant::now() > deadline {
            bail!("worker did not drain {count} events in 300 s");
        }
        let handled = match client.get(&metrics_url).send().await {
            Ok(r) => dlr_tests::metric_value(
                &r.text().await.unwrap_or_default(),
                "dlr_worker_handler_results_total",
                &[("handler", handler), ("result", "ok")],
            ),
            Err(_) => 0.0,
        };
        if handled as usize >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let rss = peak_rss_mb(worker.0.id());
    drop(worker);
    let retry_queues: Vec<String> =
        dlr_worker::retry::RetryPolicy::new(8, Duration::from_secs(1), Duration::from_secs(600))
            .delays()
            .into_iter()
            .map(|d| topology.retry_queue(d))
            .collect();
    broker.cleanup(&topology, &retry_queues, &[events_exchange]).await;
    Ok((rate, rss))
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
