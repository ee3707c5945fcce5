//! Reliability harness: no receipt answered `200` may be lost, whatever breaks.
//!
//! Runs the release binaries as a small production on loopback: RabbitMQ,
//! two `ingest` behind nginx (round robin), two `worker` writing to a fresh
//! PostgreSQL database (`postgres` handler) and POSTing to a webhook receiver
//! run here (`http` handler). The harness plays the SMS provider: receipts
//! with unique message ids at a steady rate plus a full-speed burst, a few
//! malformed ones mixed in, retrying 429/5xx and connection errors with
//! backoff (and nothing else, as Vonage does), and records every receipt that
//! got a `200`.
//!
//! Each scenario injects one fault during that load: a broker restart,
//! `kill -9` of a worker, a rolling SIGTERM restart of both ingests, a
//! downstream outage, a memory alarm, a disk alarm (plus a fault-free
//! baseline). At the end every acknowledged receipt must be in both sinks,
//! the `message_status` table and the receiver's log; the exit code is 1 if
//! one is missing (or a valid receipt got a 4xx, or a malformed one was
//! stored), 2 if the harness itself failed.
//!
//! Run it through `deploy/reliability.sh [--short|--long]`. It stops and
//! reconfigures the machine's broker, so it waits until no other client is
//! connected before doing so, and restores the broker (running, watermark,
//! disk limit) on every way out.
//!
//! One job per file: `main.rs` (arguments, profiles, the run and its
//! clean-up), `cluster.rs` (the service as child processes behind nginx),
//! `rabbit.rs` (the machine's broker: stop, start, alarms, restore),
//! `sink.rs` (the webhook receiver), `provider.rs` (the load and the
//! provider's retries), `scenario.rs` (one fault under load), `report.rs`
//! (reconciliation, the table and the rules that judge it),
//! `replicated.rs` (the 3-node cluster's faults).

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use dlr_shared::amqp::Topology;
use dlr_tests::{TestDatabase, unique_topology};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Worker retry schedule: 14 retries growing from 0.5 s to 10 s, at least
/// 37 s in all even with the full 20 % jitter, so a 30 s downstream outage is
/// ridden out in the delay queues without parking anything.
const WORKER_RETRY_INITIAL_DELAY_MS: u64 = 500;
const WORKER_RETRY_MAX_DELAY_MS: u64 = 10_000;
const WORKER_MAX_ATTEMPTS: u32 = 15;
/// How long an ingest stays ready after losing its broker connection: its
/// default (`INGEST_READINESS_BROKER_GRACE_SECONDS`), passed explicitly
/// because the majority-loss scenario waits for the readiness it implies.
/// The short cluster run (CI) uses [`SHORT_CLUSTER_READINESS_GRACE_SECONDS`].
const INGEST_READINESS_GRACE_SECONDS: u64 = 30;
/// The readiness grace of the short cluster run: majority-loss holds the
/// majority down until every ingest is unready, so the grace is most of its
/// length; 5 s still outlasts the reconnect to a surviving node (under a
/// second in the leader-kill runs), which is what the grace is for.
const SHORT_CLUSTER_READINESS_GRACE_SECONDS: u64 = 5;
/// How long ingest waits for a publisher confirm before answering 503:
/// its default (`INGEST_CONFIRM_TIMEOUT_MS`), passed explicitly because the
/// report bounds every answer time by it.
const INGEST_CONFIRM_TIMEOUT_MS: u64 = 5_000;
/// Standard Webhooks test secret; the receiver verifies every signature.
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Parser, Debug)]
#[command(about = "Proves that no acknowledged receipt is lost under faults, load and bad input")]
struct Args {
    /// Small counts and short faults, for CI.
    #[arg(long, conflicts_with = "long")]
    short: bool,
    /// Full-length faults and more load (the default): the results table of deploy/RELIABILITY.md.
    #[arg(long)]
    long: bool,
    /// Directory holding the release `ingest` and `worker` binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    /// Run only these scenarios (comma-separated), in the given order.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<ScenarioKind>,
    /// The receiver refuses (503) the first delivery of about one event in N
    /// (0: never), so that retry queues are in use during every fault.
    #[arg(long, default_value_t = 10)]
    flaky_every: u64,
    /// INGEST_MAX_CONCURRENCY of each ingest, deliberately low (default 1024):
    /// the burst exceeds it, so load shedding (429) is exercised too.
    #[arg(long, default_value_t = 16)]
    ingest_max_concurrency: usize,
    /// Before a broker-wide fault, wait this long for other broker clients
    /// (other test runs) to disconnect; refuse the fault after that.
    #[arg(long, default_value_t = 600)]
    exclusive_wait_secs: u64,
    /// Keep the work directory (logs, nginx config), the database and the
    /// queues even when everything passed.
    #[arg(long)]
    keep: bool,
    /// Run the node-loss scenarios on the 3-node cluster of deploy/cluster.sh
    /// instead of the single-broker ones; AMQP_URL must list its nodes
    /// (deploy/reliability.sh --cluster does both). The machine's broker on
    /// 5672 is not used.
    #[arg(long)]
    cluster: bool,
    /// The script that starts, stops and inspects the cluster's nodes.
    #[arg(long, default_value = "deploy/cluster.sh")]
    cluster_script: PathBuf,
}

/// The fault a scenario injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioKind {
    /// No fault: the reference for the others.
    Baseline,
    /// `rabbitmqctl stop`, a pause, `rabbitmq-server -detached`.
    BrokerRestart,
    /// SIGKILL of one worker, started again after a pause.
    WorkerKill,
    /// SIGTERM of each ingest in turn behind nginx, started again after it exits.
    IngestRollingRestart,
    /// SIGTERM of each worker in turn (a rolling update or scale-down),
    /// started again after it has drained and exited.
    WorkerRollingRestart,
    /// The webhook receiver answers 503 to everything for a while.
    DownstreamOutage,
    /// Memory watermark near zero: the broker blocks publishers.
    MemoryAlarm,
    /// Disk free limit above the free space: the broker blocks publishers.
    DiskAlarm,
    /// Cluster: `kill -9` of the node hosting the receipts queue's leader.
    LeaderKill,
    /// Cluster: `kill -9` of the receipts queue leader's node, with ingest
    /// and worker connections on it, and the node stays down: ingest must
    /// answer 200 again within 10 s of the kill and the workers keep
    /// delivering, all while it is down.
    LeaderKillStaysDown,
    /// Cluster: `kill -9` of the node the ingests are connected to.
    ConnectedNodeKill,
    /// Cluster: clean stop and start of a follower node.
    FollowerRestart,
    /// Cluster: each node stopped and started in turn, waiting for full replication.
    NodesRollingRestart,
    /// Cluster: two of three nodes killed, then started again.
    MajorityLoss,
}

impl ScenarioKind {
    fn name(self) -> &'static str {
        match self {
            ScenarioKind::Baseline => "baseline",
            ScenarioKind::BrokerRestart => "broker-restart",
            ScenarioKind::WorkerKill => "worker-kill",
            ScenarioKind::IngestRollingRestart => "ingest-rolling-restart",
            ScenarioKind::WorkerRollingRestart => "worker-rolling-restart",
            ScenarioKind::DownstreamOutage => "downstream-outage",
            ScenarioKind::MemoryAlarm => "memory-alarm",
            ScenarioKind::DiskAlarm => "disk-alarm",
            ScenarioKind::LeaderKill => "leader-kill",
            ScenarioKind::LeaderKillStaysDown => "leader-kill-stays-down",
            ScenarioKind::ConnectedNodeKill => "connected-node-kill",
            ScenarioKind::FollowerRestart => "follower-restart",
            ScenarioKind::NodesRollingRestart => "nodes-rolling-restart",
            ScenarioKind::MajorityLoss => "majority-loss",
        }
    }

    /// Faults that affect every client of the broker.
    fn on_cluster(self) -> bool {
        replicated::is_cluster_scenario(self)
    }

    fn broker_wide(self) -> bool {
        matches!(self, ScenarioKind::BrokerRestart | ScenarioKind::MemoryAlarm | ScenarioKind::DiskAlarm)
    }
}

/// Load and fault sizes of one run.
#[derive(Debug, Clone)]
struct Profile {
    name: &'static str,
    /// Receipts per second of the steady stream (open loop).
    rate: f64,
    /// Upper bound of the full-speed burst, which runs from the start of the
    /// fault until just after it is healed.
    burst_max: u64,
    /// The burst's bound in the cluster scenarios whose fault lasts longest
    /// (connected-node-kill, nodes-rolling-restart, majority-loss: node
    /// starts and replication waits, each a rabbitmqctl call that boots an
    /// Erlang VM). A smaller burst leaves those calls the CPU, which is
    /// what keeps the short cluster run within CI's time.
    long_fault_burst_max: u64,
    /// Connections of the burst (closed loop).
    burst_concurrency: usize,
    /// Steady load before the burst and the fault.
    warmup: Duration,
    /// Steady load after the fault is healed.
    cooldown: Duration,
    /// The baseline's "fault" window (nothing happens).
    baseline: Duration,
    /// How long the broker stays stopped.
    broker_down: Duration,
    /// How long a killed node stays down in leader-kill-stays-down: past
    /// the 10 s ingest has to answer 200 again, with time left to see it
    /// keep doing so.
    node_stays_down: Duration,
    /// How long the killed worker stays dead.
    worker_down: Duration,
    /// Length of the downstream outage.
    outage: Duration,
    /// How long a resource alarm lasts.
    alarm: Duration,
    /// How long the provider keeps retrying after the load stops.
    retry_window: Duration,
    /// How long the sinks may go without progress while catching up after
    /// the load (the catch-up itself may take longer while it progresses).
    settle: Duration,
    /// Every Nth receipt is malformed.
    bad_every: u64,
}

impl Profile {
    fn short() -> Self {
        Self {
            name: "short",
            rate: 40.0,
            burst_max: 10_000,
            long_fault_burst_max: 2_000,
            burst_concurrency: 48,
            warmup: Duration::from_secs(2),
            cooldown: Duration::from_secs(2),
            baseline: Duration::from_secs(3),
            broker_down: Duration::from_secs(2),
            node_stays_down: Duration::from_secs(20),
            worker_down: Duration::from_secs(1),
            outage: Duration::from_secs(6),
            alarm: Duration::from_secs(4),
            retry_window: Duration::from_secs(60),
            settle: Duration::from_secs(30),
            bad_every: 25,
        }
    }

    fn long() -> Self {
        Self {
            name: "long",
            rate: 150.0,
            burst_max: 100_000,
            long_fault_burst_max: 100_000,
            burst_concurrency: 96,
            warmup: Duration::from_secs(10),
            cooldown: Duration::from_secs(20),
            baseline: Duration::from_secs(15),
            broker_down: Duration::from_secs(10),
            node_stays_down: Duration::from_secs(40),
            worker_down: Duration::from_secs(5),
            outage: Duration::from_secs(30),
            alarm: Duration::from_secs(20),
            retry_window: Duration::from_secs(120),
            settle: Duration::from_secs(180),
            bad_every: 25,
        }
    }
}

/// Milliseconds since the harness started: one time base for the provider,
/// the receiver and the fault timeline.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn say(&self, message: impl AsRef<str>) {
        eprintln!("[{:>7.1}s] {}", self.0.elapsed().as_secs_f64(), message.as_ref());
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("harness error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Sets everything up, runs the scenarios, and tears down on every path.
async fn run(args: Args) -> Result<bool> {
    let profile = if args.short { Profile::short() } else { Profile::long() };
    let scenarios: Vec<ScenarioKind> =
        if args.only.is_empty() { ScenarioKind::value_variants().to_vec() } else { args.only.clone() };
    let scenarios = replicated::select(scenarios, &args)?;
    let clock = Clock(Instant::now());
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    clock.say(format!(
        "run {run_id}: {} profile, scenarios {}",
        profile.name,
        scenarios.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
    ));

    // First the guard that puts the broker back, then everything that needs it.
    // The cluster scenarios never touch the machine's broker.
    let rabbit = if args.cluster { rabbit::Rabbit::untouched() } else { rabbit::Rabbit::new().await? };
    let database = TestDatabase::create().await;
    let sink = sink::Sink::start(clock, args.flaky_every, WEBHOOK_SECRET).await?;
    // unique_topology's names, with the run id in them to find leftovers by.
    let base = format!("test.harness-{run_id}");
    let topology = Topology {
        exchange: base.clone(),
        queue: format!("{base}.receipts"),
        parked_queue: format!("{base}.parked"),
        quarantine_queue: format!("{base}.quarantine"),
        ..unique_topology()
    };
    let dir = std::env::temp_dir().join(format!("dlr-harness-{run_id}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cluster = cluster::Cluster::new(cluster::Settings {
        dir: dir.clone(),
        bin_dir: args.bin_dir.clone(),
        nginx: args.nginx.clone(),
        run_id: run_id.clone(),
        topology: topology.clone(),
        database_url: database.url.clone(),
        receiver_url: sink.url.clone(),
        ingest_max_concurrency: args.ingest_max_concurrency,
        readiness_grace: readiness_grace(&args),
    })?;

    let context = RunContext {
        profile,
        clock,
        run_id: run_id.clone(),
        args: &args,
        dir: dir.clone(),
        findings: Default::default(),
    };
    let outcome = tokio::select! {
        result = drive(&context, &mut cluster, &rabbit, &sink, &database, &scenarios) => result,
        () = interrupted() => Err(anyhow!("interrupted")),
    };

    // Whatever happened: the broker back to normal, the processes gone.
    let restored = rabbit.restore().await;
    cluster.shutdown();
    let passed = matches!(outcome, Ok(true));
    let keep = args.keep || !passed;
    // The queues go even after a failure (the broker is shared); the logs and
    // the database stay for inspection.
    let cleaned = cleanup_broker(&run_id, &topology, &cluster.events_exchange, args.keep).await;
    if keep {
        eprintln!("kept for inspection: logs in {}, database {}", dir.display(), database.url);
    } else {
        database.drop_database().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    restored.context("restoring the broker")?;
    if let Err(error) = cleaned {
        eprintln!("warning: broker clean-up failed: {error:#}");
    }
    outcome
}

/// The `INGEST_READINESS_BROKER_GRACE_SECONDS` the ingests get: the
/// default, but shorter in the short cluster run (CI's time budget).
fn readiness_grace(args: &Args) -> Duration {
    let seconds = if args.cluster && args.short {
        SHORT_CLUSTER_READINESS_GRACE_SECONDS
    } else {
        INGEST_READINESS_GRACE_SECONDS
    };
    Duration::from_secs(seconds)
}

async fn interrupted() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// What every scenario needs to know about the run.
struct RunContext<'a> {
    profile: Profile,
    /// Work directory: logs, nginx.conf, lost.txt.
    dir: PathBuf,
    clock: Clock,
    run_id: String,
    args: &'a Args,
    /// What a cluster scenario observed during its fault, for the report.
    findings: std::sync::Mutex<replicated::Findings>,
}

/// Starts the cluster, runs each scenario, reconciles, prints the table.
async fn drive(
    context: &RunContext<'_>,
    cluster: &mut cluster::Cluster,
    rabbit: &rabbit::Rabbit,
    sink: &sink::Sink,
    database: &TestDatabase,
    scenarios: &[ScenarioKind],
) -> Result<bool> {
    let clock = context.clock;
    cluster.start_all().await?;
    let pool = database.pool().await;
    clock.say(format!("cluster up: nginx on {} in front of two ingests, two workers", cluster.lb_url()));

    let client = reqwest::Client::builder()
        // Providers give up on a webhook after about 15 s and retry later.
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(512)
        .build()
        .context("building the HTTP client")?;
    let mut runs = Vec::new();
    let mut stopped_early = None;
    for (index, kind) in scenarios.iter().enumerate() {
        // "SM" and hex only: with the scenario's receipt number appended
        // (provider.rs) it is a valid Twilio message SID, which ingest checks.
        let tag = format!("SM{}{index:04x}", context.run_id);
        let run = scenario::run(context, cluster, rabbit, sink, &pool, &client, *kind, tag).await?;
        runs.push(run);
        // A process that died by itself ends the run, but the receipts
        // acknowledged so far are still reconciled.
        if let Err(error) = cluster.check_alive() {
            clock.say(format!("{error:#}"));
            stopped_early = Some(format!("{error:#}"));
            break;
        }
    }

    // The final reconciliation, after every scenario: late duplicates count too.
    let mut rows = Vec::new();
    for run in &runs {
        rows.push(report::reconcile(run, &pool, sink).await?);
    }
    let parked = parked_summary(&context.run_id, &cluster.topology).await;
    println!();
    println!("{}", report::table(&rows));
    let mut failures = report::verdict(&rows, sink.bad_signatures(), &parked);
    failures.extend(stopped_early.map(|e| format!("run stopped early: {e}")));
    let lost: Vec<String> =
        rows.iter().flat_map(|r| r.lost.iter().map(move |l| format!("{}: {l}", r.name))).collect();
    if !lost.is_empty() {
        let path = context.dir.join("lost.txt");
        std::fs::write(&path, lost.join("\n") + "\n").context("writing lost.txt")?;
        println!("{} acknowledged receipts missing from a sink, listed in {}", lost.len(), path.display());
    }
    if let Ok(parked) = &parked {
        println!("{}", parked.line());
    }
    if failures.is_empty() {
        println!("RESULT: PASS: every acknowledged receipt reached both sinks");
        Ok(true)
    } else {
        for failure in &failures {
            println!("FAIL: {failure}");
        }
        println!("RESULT: FAIL");
        Ok(false)
    }
}

/// What is left in the broker once the sinks have everything.
struct Parked {
    parked: u32,
    receipts_left: u32,
    reasons: Vec<String>,
}

impl Parked {
    fn line(&self) -> String {
        let mut line = format!(
            "broker at the end: {} parked, {} left in the receipts queue",
            self.parked, self.receipts_left
        );
        if !self.reasons.is_empty() {
            line.push_str(&format!(" (parked: {})", self.reasons.join("; ")));
        }
        line
    }
}

async fn broker_channel(run_id: &str) -> Result<(lapin::Connection, lapin::Channel)> {
    let properties =
        lapin::ConnectionProperties::default().with_connection_name(format!("harness-{run_id}").into());
    // AMQP_URL may list a cluster's nodes: the first that answers will do.
    let mut failure = None;
    for url in dlr_tests::amqp_urls().split(',') {
        match lapin::Connection::connect(url.trim(), properties.clone()).await {
            Ok(connection) => {
                let channel = connection.create_channel().await.context("opening a channel")?;
                return Ok((connection, channel));
            }
            Err(error) => failure = Some(error),
        }
    }
    Err(failure.map_or_else(|| anyhow!("AMQP_URL is empty"), anyhow::Error::from))
        .context("connecting to RabbitMQ")
}

async fn message_count(channel: &lapin::Channel, queue: &str) -> Result<u32> {
    let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let queue = channel
        .queue_declare(queue.into(), options, lapin::types::FieldTable::default())
        .await
        .with_context(|| format!("inspecting {queue}"))?;
    Ok(queue.message_count())
}

/// Counts parked and unconsumed messages and reads why the first few were parked.
async fn parked_summary(run_id: &str, topology: &Topology) -> Result<Parked> {
    let (connection, channel) = broker_channel(run_id).await?;
    let parked = message_count(&channel, &topology.parked_queue).await?;
    let receipts_left = message_count(&channel, &topology.queue).await?;
    let mut reasons = Vec::new();
    for _ in 0..parked.min(5) {
        let options = lapin::options::BasicGetOptions { no_ack: false };
        let Some(message) = channel.basic_get(topology.parked_queue.as_str().into(), options).await? else {
            break;
        };
        let headers = message.delivery.properties.headers().as_ref();
        let field = |name| dlr_shared::amqp::header_str(headers, name).unwrap_or("?").to_owned();
        let body: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap_or_default();
        reasons.push(format!(
            "{} {} handler={} error={}",
            body["message_id"].as_str().unwrap_or("?"),
            field("x-dlr-park-reason"),
            field("x-dlr-handler"),
            field("x-dlr-last-error"),
        ));
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(Parked { parked, receipts_left, reasons })
}

/// Deletes the run's queues and exchanges (unless kept for inspection).
async fn cleanup_broker(run_id: &str, topology: &Topology, events_exchange: &str, keep: bool) -> Result<()> {
    if keep {
        return Ok(());
    }
    let (connection, channel) = broker_channel(run_id).await?;
    let retry = dlr_worker::retry::RetryPolicy::new(
        WORKER_MAX_ATTEMPTS,
        Duration::from_millis(WORKER_RETRY_INITIAL_DELAY_MS),
        Duration::from_millis(WORKER_RETRY_MAX_DELAY_MS),
    );
    let queues = [topology.queue.clone(), topology.parked_queue.clone(), topology.quarantine_queue.clone()]
        .into_iter()
        .chain(retry.delays().into_iter().map(|d| topology.retry_queue(d)));
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), lapin::options::QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting {queue}"))?;
    }
    for exchange in [topology.exchange.as_str(), events_exchange] {
        channel
            .exchange_delete(exchange.into(), lapin::options::ExchangeDeleteOptions::default())
            .await
            .with_context(|| format!("deleting {exchange}"))?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Waits until `condition` holds, polling every 100 ms, for at most `within`.
async fn wait_until(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

mod cluster;

mod rabbit;

mod sink;

mod provider;

mod scenario;

mod report;

mod replicated;
