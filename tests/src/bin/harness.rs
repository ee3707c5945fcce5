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
const INGEST_READINESS_GRACE_SECONDS: u64 = 30;
/// How long ingest waits for a publisher confirm before answering 503:
/// its default (`INGEST_CONFIRM_TIMEOUT_MS`), passed explicitly because the
/// report bounds every answer time by it.
const INGEST_CONFIRM_TIMEOUT_MS: u64 = 5_000;
/// Standard Webhooks test secret; the receiver verifies every signature.
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Parser, Debug)]
#[command(about = "Proves that no acknowledged receipt is lost under faults, load and bad input")]
struct Args {
    /// Small counts and short faults, for CI (under 3 minutes).
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
        let tag = format!("H{}s{index}", context.run_id);
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

mod cluster {
    //! The service under test as child processes: two ingests, two workers
    //! and nginx, each logging into the work directory.

    use super::*;
    use std::fs::File;
    use std::path::Path;
    use std::process::{Child, Command, ExitStatus, Stdio};

    /// A child process, stopped when dropped.
    pub struct Proc {
        child: Child,
        /// nginx gets SIGTERM first so its worker process goes too; the
        /// service binaries are simply killed.
        graceful: bool,
    }

    impl Proc {
        fn spawn(
            program: &Path,
            args: &[&str],
            envs: &[(String, String)],
            log: &Path,
            graceful: bool,
        ) -> Result<Self> {
            let out = File::options()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("opening {}", log.display()))?;
            let err = out.try_clone().context("duplicating the log file handle")?;
            let child = Command::new(program)
                .args(args)
                .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
                .with_context(|| format!("starting {}", program.display()))?;
            Ok(Self { child, graceful })
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        fn exited(&mut self) -> Option<ExitStatus> {
            self.child.try_wait().ok().flatten()
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            if self.exited().is_some() {
                return;
            }
            if self.graceful && signal(self.pid(), "TERM").is_ok() {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if self.exited().is_some() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Sends a signal with kill(1): the workspace forbids `unsafe`, so no libc.
    pub fn signal(pid: u32, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{name} {pid} failed");
        }
        Ok(())
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Role {
        Ingest,
        Worker,
    }

    /// One instance: a fixed port (nginx knows it) and maybe a running process.
    struct Service {
        name: String,
        role: Role,
        port: u16,
        proc: Option<Proc>,
    }

    /// What the cluster is built from.
    pub struct Settings {
        pub dir: PathBuf,
        pub bin_dir: PathBuf,
        pub nginx: PathBuf,
        pub run_id: String,
        pub topology: Topology,
        pub database_url: String,
        pub receiver_url: String,
        pub ingest_max_concurrency: usize,
    }

    pub struct Cluster {
        settings: Settings,
        pub topology: Topology,
        pub events_exchange: String,
        services: Vec<Service>,
        nginx: Option<Proc>,
        lb_port: u16,
        probe: reqwest::Client,
    }

    use dlr_tests::free_port;

    impl Cluster {
        pub fn new(settings: Settings) -> Result<Self> {
            let mut services = Vec::new();
            for (role, prefix) in [(Role::Ingest, "ingest"), (Role::Worker, "worker")] {
                for n in 1..=2 {
                    services.push(Service {
                        name: format!("{prefix}-{n}"),
                        role,
                        port: free_port()?,
                        proc: None,
                    });
                }
            }
            let probe = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .context("building the probe client")?;
            Ok(Self {
                topology: settings.topology.clone(),
                events_exchange: format!("{}.events", settings.topology.exchange),
                services,
                nginx: None,
                lb_port: free_port()?,
                probe,
                settings,
            })
        }

        /// The load balancer's base URL: what the provider calls.
        pub fn lb_url(&self) -> String {
            format!("http://127.0.0.1:{}", self.lb_port)
        }

        fn index(&self, role: Role, n: usize) -> Result<usize> {
            self.services
                .iter()
                .enumerate()
                .filter(|(_, s)| s.role == role)
                .nth(n)
                .map(|(i, _)| i)
                .ok_or_else(|| anyhow!("no {role:?} number {n}"))
        }

        pub fn name(&self, role: Role, n: usize) -> String {
            self.index(role, n).map(|i| self.services[i].name.clone()).unwrap_or_default()
        }

        fn env(&self, service: &Service) -> Vec<(String, String)> {
            let s = &self.settings;
            let t = &self.topology;
            let mut env: Vec<(&str, String)> = vec![
                ("AMQP_URL", dlr_tests::amqp_urls()),
                ("AMQP_EXCHANGE", t.exchange.clone()),
                ("AMQP_QUEUE", t.queue.clone()),
                ("AMQP_PARKED_QUEUE", t.parked_queue.clone()),
                ("AMQP_QUARANTINE_QUEUE", t.quarantine_queue.clone()),
                ("AMQP_QUARANTINE_MAX_LENGTH", t.quarantine_max_length.to_string()),
                ("AMQP_DELIVERY_LIMIT", t.delivery_limit.to_string()),
                ("LOG_FORMAT", "text".to_owned()),
                // Warnings, plus start-up and the receipt of a shutdown signal.
                (
                    "RUST_LOG",
                    "warn,ingest=info,worker=info,dlr_shared::shutdown=info,dlr_ingest::startup=info,dlr_worker::startup=info"
                        .to_owned(),
                ),
                // Connection names are `<binary>@<HOSTNAME>`: this marks the
                // broker connections as the run's own (see Rabbit::wait_exclusive).
                ("HOSTNAME", format!("harness-{}-{}", s.run_id, service.name)),
            ];
            match service.role {
                Role::Ingest => {
                    env.push(("INGEST_ADDR", format!("127.0.0.1:{}", service.port)));
                    env.push(("INGEST_MAX_CONCURRENCY", s.ingest_max_concurrency.to_string()));
                    env.push(("INGEST_CONFIRM_TIMEOUT_MS", INGEST_CONFIRM_TIMEOUT_MS.to_string()));
                    env.push((
                        "INGEST_READINESS_BROKER_GRACE_SECONDS",
                        INGEST_READINESS_GRACE_SECONDS.to_string(),
                    ));
                }
                Role::Worker => {
                    env.push(("WORKER_ADDR", format!("127.0.0.1:{}", service.port)));
                    env.push(("WORKER_EVENTS_EXCHANGE", self.events_exchange.clone()));
                    for variable in ["WORKER_ROUTE_DELIVERED", "WORKER_ROUTE_FAILED", "WORKER_ROUTE_PENDING"]
                    {
                        env.push((variable, "postgres,http".to_owned()));
                    }
                    env.push(("DATABASE_URL", s.database_url.clone()));
                    env.push(("DATABASE_MAX_CONNECTIONS", "8".to_owned()));
                    env.push(("WORKER_HTTP_URL", s.receiver_url.clone()));
                    env.push(("WORKER_HTTP_SECRET", WEBHOOK_SECRET.to_owned()));
                    env.push(("WORKER_HTTP_TIMEOUT_MS", "5000".to_owned()));
                    env.push(("WORKER_RETRY_INITIAL_DELAY_MS", WORKER_RETRY_INITIAL_DELAY_MS.to_string()));
                    env.push(("WORKER_RETRY_MAX_DELAY_MS", WORKER_RETRY_MAX_DELAY_MS.to_string()));
                    env.push(("WORKER_MAX_ATTEMPTS", WORKER_MAX_ATTEMPTS.to_string()));
                    env.push(("WORKER_PREFETCH", "50".to_owned()));
                    env.push(("WORKER_DRAIN_TIMEOUT_SECONDS", "10".to_owned()));
                }
            }
            env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
        }

        /// Starts (or starts again) one instance on its fixed port.
        pub fn start(&mut self, role: Role, n: usize) -> Result<()> {
            let i = self.index(role, n)?;
            let binary = match role {
                Role::Ingest => "ingest",
                Role::Worker => "worker",
            };
            let program = self.settings.bin_dir.join(binary);
            let env = self.env(&self.services[i]);
            let log = self.settings.dir.join(format!("{}.log", self.services[i].name));
            let proc = Proc::spawn(&program, &[], &env, &log, false)
                .with_context(|| format!("{} (build with cargo build --release)", program.display()))?;
            self.services[i].proc = Some(proc);
            Ok(())
        }

        /// Waits until the instance's `/readyz` answers 200.
        pub async fn wait_ready(&self, role: Role, n: usize, within: Duration) -> Result<()> {
            let service = &self.services[self.index(role, n)?];
            let url = format!("http://127.0.0.1:{}/readyz", service.port);
            let deadline = Instant::now() + within;
            while Instant::now() < deadline {
                if let Ok(response) = self.probe.get(&url).send().await
                    && response.status().is_success()
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bail!(
                "{} not ready within {within:?} (log: {})",
                service.name,
                self.log_path(&service.name).display()
            )
        }

        /// Waits until every instance is ready (after a broker restart).
        pub async fn wait_all_ready(&self, within: Duration) -> Result<()> {
            for role in [Role::Ingest, Role::Worker] {
                for n in 0..2 {
                    self.wait_ready(role, n, within).await?;
                }
            }
            Ok(())
        }

        fn log_path(&self, name: &str) -> PathBuf {
            self.settings.dir.join(format!("{name}.log"))
        }

        /// SIGKILL: no drain, unacked deliveries go back to the queue.
        pub fn kill(&mut self, role: Role, n: usize) -> Result<()> {
            let i = self.index(role, n)?;
            let mut proc =
                self.services[i].proc.take().ok_or_else(|| anyhow!("{role:?} {n} is not running"))?;
            proc.child.kill().context("kill -9")?;
            proc.child.wait().context("reaping the killed process")?;
            Ok(())
        }

        /// SIGTERM and wait for the process to exit by itself (its drain).
        pub async fn terminate(&mut self, role: Role, n: usize, within: Duration) -> Result<ExitStatus> {
            let i = self.index(role, n)?;
            let name = self.services[i].name.clone();
            let mut proc = self.services[i].proc.take().ok_or_else(|| anyhow!("{name} is not running"))?;
            signal(proc.pid(), "TERM")?;
            let deadline = Instant::now() + within;
            loop {
                if let Some(status) = proc.exited() {
                    return Ok(status);
                }
                if Instant::now() >= deadline {
                    bail!("{name} did not exit within {within:?} of SIGTERM");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Fails if an instance exited that nobody stopped (a crash).
        pub fn check_alive(&mut self) -> Result<()> {
            for service in &mut self.services {
                if let Some(proc) = service.proc.as_mut()
                    && let Some(status) = proc.exited()
                {
                    bail!(
                        "{} exited unexpectedly ({status}); see {}",
                        service.name,
                        self.settings.dir.join(format!("{}.log", service.name)).display()
                    );
                }
            }
            if let Some(nginx) = self.nginx.as_mut()
                && let Some(status) = nginx.exited()
            {
                bail!("nginx exited unexpectedly ({status})");
            }
            Ok(())
        }

        /// Ingests first (they declare the topology), then the workers one
        /// after the other (migrations), then nginx in front.
        pub async fn start_all(&mut self) -> Result<()> {
            let within = Duration::from_secs(60);
            for n in 0..2 {
                self.start(Role::Ingest, n)?;
            }
            for n in 0..2 {
                self.wait_ready(Role::Ingest, n, within).await?;
            }
            for n in 0..2 {
                self.start(Role::Worker, n)?;
                self.wait_ready(Role::Worker, n, within).await?;
            }
            self.start_nginx()?;
            let url = format!("{}/healthz", self.lb_url());
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(response) = self.probe.get(&url).send().await
                    && response.status().is_success()
                {
                    return Ok(());
                }
                self.check_alive()?;
                if Instant::now() >= deadline {
                    bail!("nginx does not answer on {url}; see {}", self.log_path("nginx").display());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// Round robin over the two ingests. Only requests that never reached
        /// an ingest (connection refused, connect timeout) are passed to the
        /// other one: nginx never retries a POST that was sent, and a 503 goes
        /// back to the provider as it is. A refused server rests 2 s.
        fn start_nginx(&mut self) -> Result<()> {
            let dir = self.settings.dir.display().to_string();
            let ports: Vec<u16> =
                self.services.iter().filter(|s| s.role == Role::Ingest).map(|s| s.port).collect();
            let servers: String = ports
                .iter()
                .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"))
                .collect();
            let config = format!(
                "worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    upstream ingest {{
{servers}        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{lb};
        location / {{
            proxy_pass http://ingest;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_next_upstream error timeout http_502;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 2s;
            proxy_send_timeout 15s;
            proxy_read_timeout 15s;
        }}
    }}
}}
",
                lb = self.lb_port,
            );
            let path = self.settings.dir.join("nginx.conf");
            std::fs::write(&path, config).context("writing nginx.conf")?;
            let conf = path.display().to_string();
            let error_log = format!("{dir}/nginx.log");
            let args =
                ["-p", dir.as_str(), "-e", error_log.as_str(), "-c", conf.as_str(), "-g", "daemon off;"];
            let log = self.log_path("nginx");
            self.nginx = Some(
                Proc::spawn(&self.settings.nginx, &args, &[], &log, true)
                    .context("nginx (apt-get install nginx, or pass --nginx)")?,
            );
            Ok(())
        }

        /// Stops everything: nginx first, so nothing new comes in.
        pub fn shutdown(&mut self) {
            self.nginx = None;
            for service in &mut self.services {
                service.proc = None;
            }
        }
    }
}

mod rabbit {
    //! The broker faults, through `rabbitmqctl`, and the guard that undoes
    //! them: the node is started again, the watermark and the disk limit are
    //! set back, on success, error, Ctrl-C, or (as a last resort) in `Drop`.

    use super::*;
    use std::process::Stdio;
    use std::sync::Mutex;

    #[derive(Debug, Default, Clone, Copy)]
    struct Dirty {
        stopped: bool,
        memory: bool,
        disk: bool,
    }

    pub struct Rabbit {
        /// Not root: go through `sudo -n`, as deploy/services.sh does.
        sudo: bool,
        /// `set_vm_memory_high_watermark` arguments that restore the setting found at start.
        memory_restore: Vec<String>,
        /// `set_disk_free_limit` argument that restores the limit found at start.
        disk_restore: String,
        dirty: Mutex<Dirty>,
    }

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
    }

    fn broker_port_open() -> bool {
        std::net::TcpStream::connect_timeout(&dlr_tests::proxy::broker_addr(), Duration::from_millis(500))
            .is_ok()
    }

    /// Whether process `pid` is still running. A zombie (state `Z`: exited,
    /// not yet reaped) is not: in a container without an init process nobody
    /// reaps the stopped broker's VM, and its /proc entry stays until the
    /// container ends. Scripts that ask the same question read the same field.
    fn process_running(pid: u64) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Unreadable but present (should not happen): not known to be gone.
            Ok(stat) => stat_state(&stat).is_none_or(|state| !matches!(state, 'Z' | 'X')),
            Err(_) => false,
        }
    }

    /// The state letter of a /proc/<pid>/stat line (`pid (comm) state ...`).
    /// The command name may hold spaces and parentheses, so the state is the
    /// first field after the *last* `)`.
    fn stat_state(stat: &str) -> Option<char> {
        stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
    }

    impl Rabbit {
        /// Reads the current limits (to restore them later). A watermark or
        /// limit left behind by a crashed run is not taken for the original:
        /// the Debian defaults (0.4, 50 MB) are restored instead, now.
        /// A guard with nothing to undo, for runs that leave the machine's
        /// broker alone (the cluster scenarios).
        pub fn untouched() -> Self {
            Self {
                sudo: !is_root(),
                memory_restore: vec!["0.4".to_owned()],
                disk_restore: "50MB".to_owned(),
                dirty: Mutex::new(Dirty::default()),
            }
        }

        pub async fn new() -> Result<Self> {
            let mut rabbit = Self {
                sudo: !is_root(),
                memory_restore: vec!["0.4".to_owned()],
                disk_restore: "50MB".to_owned(),
                dirty: Mutex::new(Dirty::default()),
            };
            let status = rabbit
                .ctl(&["status", "--formatter", "json"], Duration::from_secs(60))
                .await
                .context("RabbitMQ must be running on this machine, reachable by rabbitmqctl")?;
            let status: serde_json::Value =
                serde_json::from_str(&status).context("reading rabbitmqctl status")?;
            let setting = &status["vm_memory_high_watermark_setting"];
            if let Some(relative) = setting["relative"].as_f64()
                && relative >= 0.05
            {
                rabbit.memory_restore = vec![relative.to_string()];
            } else if let Some(absolute) = setting["absolute"].as_u64()
                && absolute >= 64 << 20
            {
                rabbit.memory_restore = vec!["absolute".to_owned(), absolute.to_string()];
            }
            if let Some(limit) = status["disk_free_limit"].as_u64()
                && limit < 100_000_000_000
            {
                rabbit.disk_restore = limit.to_string();
            }
            if status["alarms"].as_array().is_some_and(|a| !a.is_empty()) {
                eprintln!("the broker has alarms set ({}); resetting its limits first", status["alarms"]);
                rabbit.mark(|d| {
                    d.memory = true;
                    d.disk = true;
                });
                rabbit.restore().await?;
            }
            Ok(rabbit)
        }

        fn mark(&self, change: impl FnOnce(&mut Dirty)) {
            if let Ok(mut dirty) = self.dirty.lock() {
                change(&mut dirty);
            }
        }

        fn dirty(&self) -> Dirty {
            self.dirty.lock().map(|d| *d).unwrap_or(Dirty { stopped: true, memory: true, disk: true })
        }

        fn command(&self, tool: &str, args: &[&str]) -> (String, Vec<String>) {
            let args = args.iter().map(|a| (*a).to_owned());
            if self.sudo {
                ("sudo".to_owned(), ["-n".to_owned(), tool.to_owned()].into_iter().chain(args).collect())
            } else {
                (tool.to_owned(), args.collect())
            }
        }

        async fn ctl(&self, args: &[&str], within: Duration) -> Result<String> {
            let (program, full) = self.command("rabbitmqctl", args);
            let output = tokio::time::timeout(
                within,
                tokio::process::Command::new(&program)
                    .args(&full)
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .map_err(|_| anyhow!("rabbitmqctl {} did not finish within {within:?}", args.join(" ")))?
            .with_context(|| format!("running {program}"))?;
            if !output.status.success() {
                bail!(
                    "rabbitmqctl {} failed: {}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stdout).trim(),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        }

        /// Waits until the only broker connections are this run's (named
        /// `…harness-<run>…`). Other test runs would not survive the fault.
        pub async fn wait_exclusive(&self, clock: &Clock, run_id: &str, within: Duration) -> Result<()> {
            let deadline = Instant::now() + within;
            let mut told = false;
            loop {
                let listing = self
                    .ctl(
                        &["list_connections", "name", "client_properties", "--formatter", "json", "-q"],
                        Duration::from_secs(30),
                    )
                    .await?;
                let connections: Vec<serde_json::Value> =
                    serde_json::from_str(listing.trim()).unwrap_or_default();
                let foreign = connections.iter().filter(|c| !c.to_string().contains(run_id)).count();
                if foreign == 0 {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    bail!(
                        "{foreign} other clients stayed connected to the broker for {within:?}; not disturbing them"
                    );
                }
                if !told {
                    clock.say(format!("waiting for {foreign} other broker clients to disconnect"));
                    told = true;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }

        /// `rabbitmqctl stop`, then waits until the Erlang VM is gone and
        /// the port closed, so that the start does not meet the old node.
        pub async fn stop(&self) -> Result<()> {
            let status = self.ctl(&["status", "--formatter", "json"], Duration::from_secs(60)).await?;
            let pid = serde_json::from_str::<serde_json::Value>(&status)
                .ok()
                .and_then(|s| s["pid"].as_u64())
                .ok_or_else(|| anyhow!("rabbitmqctl status shows no pid"))?;
            self.mark(|d| d.stopped = true);
            self.ctl(&["stop"], Duration::from_secs(120)).await?;
            if !wait_until(Duration::from_secs(60), || !broker_port_open() && !process_running(pid)).await {
                bail!("RabbitMQ (pid {pid}) still running 60 s after rabbitmqctl stop");
            }
            Ok(())
        }

        /// `rabbitmq-server -detached`, then `rabbitmqctl await_startup`.
        pub async fn start(&self) -> Result<()> {
            let (program, args) = self.command("rabbitmq-server", &["-detached"]);
            // The daemon keeps whatever it inherits: give it nothing to hold.
            let status = tokio::time::timeout(
                Duration::from_secs(60),
                tokio::process::Command::new(&program)
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status(),
            )
            .await
            .map_err(|_| anyhow!("rabbitmq-server -detached did not return within 60 s"))?
            .context("running rabbitmq-server")?;
            if !status.success() {
                bail!("rabbitmq-server -detached failed ({status})");
            }
            // await_startup fails while the new node is not registered yet.
            let deadline = Instant::now() + Duration::from_secs(180);
            loop {
                match self.ctl(&["await_startup"], Duration::from_secs(180)).await {
                    Ok(_) if broker_port_open() => break,
                    Ok(_) => {}
                    Err(error) if Instant::now() >= deadline => return Err(error),
                    Err(_) => {}
                }
                if Instant::now() >= deadline {
                    bail!("RabbitMQ started but does not listen on its port");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            self.mark(|d| d.stopped = false);
            Ok(())
        }

        pub async fn memory_alarm(&self, on: bool) -> Result<()> {
            if on {
                self.mark(|d| d.memory = true);
                self.ctl(&["set_vm_memory_high_watermark", "0.0000001"], Duration::from_secs(60)).await?;
            } else {
                let args: Vec<&str> = std::iter::once("set_vm_memory_high_watermark")
                    .chain(self.memory_restore.iter().map(String::as_str))
                    .collect();
                self.ctl(&args, Duration::from_secs(60)).await?;
                self.mark(|d| d.memory = false);
            }
            Ok(())
        }

        pub async fn disk_alarm(&self, on: bool) -> Result<()> {
            if on {
                self.mark(|d| d.disk = true);
                self.ctl(&["set_disk_free_limit", "1000GB"], Duration::from_secs(60)).await?;
            } else {
                self.ctl(&["set_disk_free_limit", &self.disk_restore], Duration::from_secs(60)).await?;
                self.mark(|d| d.disk = false);
            }
            Ok(())
        }

        /// Undoes whatever fault is still in place.
        pub async fn restore(&self) -> Result<()> {
            let dirty = self.dirty();
            let mut result = Ok(());
            if dirty.stopped {
                eprintln!("restoring the broker: starting RabbitMQ");
                if broker_port_open() {
                    self.mark(|d| d.stopped = false);
                } else {
                    result = self.start().await;
                }
            }
            if dirty.memory
                && let Err(error) = self.memory_alarm(false).await
            {
                result = Err(error);
            }
            if dirty.disk
                && let Err(error) = self.disk_alarm(false).await
            {
                result = Err(error);
            }
            result
        }

        /// The last resort when `restore` never ran (a panic): same steps, blocking.
        fn restore_blocking(&self) {
            let dirty = self.dirty();
            let run = |tool: &str, args: &[&str], quiet: bool| {
                let (program, args) = self.command(tool, args);
                let mut command = std::process::Command::new(program);
                command.args(args).stdin(Stdio::null());
                if quiet {
                    command.stdout(Stdio::null()).stderr(Stdio::null());
                }
                let Ok(mut child) = command.spawn() else { return };
                let deadline = Instant::now() + Duration::from_secs(180);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
            };
            if dirty.stopped && !broker_port_open() {
                eprintln!("restoring the broker: starting RabbitMQ");
                run("rabbitmq-server", &["-detached"], true);
                run("rabbitmqctl", &["await_startup"], false);
            }
            if dirty.memory {
                let args: Vec<&str> = std::iter::once("set_vm_memory_high_watermark")
                    .chain(self.memory_restore.iter().map(String::as_str))
                    .collect();
                run("rabbitmqctl", &args, false);
            }
            if dirty.disk {
                run("rabbitmqctl", &["set_disk_free_limit", &self.disk_restore], false);
            }
        }
    }

    impl Drop for Rabbit {
        fn drop(&mut self) {
            let dirty = self.dirty();
            if dirty.stopped || dirty.memory || dirty.disk {
                self.restore_blocking();
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn stat_state_reads_the_field_after_the_command_name() {
            assert_eq!(stat_state("1234 (beam.smp) S 1 1234 1234 0 -1"), Some('S'));
            assert_eq!(stat_state("1234 (beam.smp) Z 1 1234 1234 0 -1"), Some('Z'));
            // A command name with spaces and parentheses does not shift the fields.
            assert_eq!(stat_state("77 (a) R (b) Z 1 77 77 0 -1"), Some('Z'));
            assert_eq!(stat_state("77 (x y) D 1"), Some('D'));
            assert_eq!(stat_state("77 (truncated"), None);
            assert_eq!(stat_state("77 (nothing after)"), None);
        }

        /// Waits (5 s at most) until `pid`'s /proc/<pid>/stat shows state `state`.
        fn wait_for_state(pid: u32, state: char) -> bool {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if stat_state(&stat) == Some(state) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        }

        #[test]
        fn a_zombie_is_not_running() {
            // A child that exits and is not waited for stays a zombie, as the
            // stopped broker does in a container with nobody to reap it.
            let mut child = std::process::Command::new("true").spawn().expect("spawn true");
            assert!(wait_for_state(child.id(), 'Z'), "the child did not become a zombie");
            let running = process_running(u64::from(child.id()));
            child.wait().expect("reap the child");
            assert!(!running, "a zombie counted as running");
        }

        #[test]
        fn a_live_process_is_running_and_a_reaped_one_is_not() {
            let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
            let pid = u64::from(child.id());
            let running = process_running(pid);
            child.kill().expect("kill sleep");
            child.wait().expect("reap sleep");
            assert!(running, "a sleeping process counted as stopped");
            assert!(!process_running(pid), "a reaped process counted as running");
            assert!(process_running(u64::from(std::process::id())), "this process counted as stopped");
        }
    }
}

mod sink {
    //! The downstream webhook receiver: verifies signatures, counts
    //! deliveries per message id, and can be switched off (503).

    use super::*;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// Deliveries of one message id.
    #[derive(Debug, Default, Clone, Copy)]
    pub struct Calls {
        /// Every POST, refused or not.
        pub calls: u32,
        /// POSTs answered 2xx: more than one is a duplicate the receiver absorbed.
        pub ok: u32,
    }

    #[derive(Default)]
    struct Log {
        per_message: HashMap<String, Calls>,
        /// (ms, answered 2xx) of every call, for the outage's recovery time.
        timeline: Vec<(u64, bool)>,
    }

    struct Shared {
        clock: Clock,
        down: AtomicBool,
        flaky_every: u64,
        key: Vec<u8>,
        bad_signatures: AtomicU64,
        log: Mutex<Log>,
    }

    pub struct Sink {
        pub url: String,
        shared: Arc<Shared>,
    }

    impl Sink {
        pub async fn start(clock: Clock, flaky_every: u64, secret: &str) -> Result<Self> {
            let key = STANDARD
                .decode(secret.trim_start_matches("whsec_"))
                .context("the webhook secret is whsec_ + base64")?;
            let shared = Arc::new(Shared {
                clock,
                down: AtomicBool::new(false),
                flaky_every,
                key,
                bad_signatures: AtomicU64::new(0),
                log: Mutex::new(Log::default()),
            });
            let app =
                axum::Router::new().route("/hooks", axum::routing::post(receive)).with_state(shared.clone());
            let listener =
                tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the receiver")?;
            let addr = listener.local_addr()?;
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Ok(Self { url: format!("http://{addr}/hooks"), shared })
        }

        pub fn set_down(&self, down: bool) {
            self.shared.down.store(down, Ordering::SeqCst);
        }

        /// Deliveries of the message ids starting with `prefix`.
        pub fn calls(&self, prefix: &str) -> HashMap<String, Calls> {
            self.shared
                .log
                .lock()
                .map(|log| {
                    log.per_message
                        .iter()
                        .filter(|(k, _)| k.starts_with(prefix))
                        .map(|(k, v)| (k.clone(), *v))
                        .collect()
                })
                .unwrap_or_default()
        }

        /// First refused call at or after `from`, and first 2xx at or after `healed`.
        pub fn outage(&self, from: u64, healed: u64) -> (Option<u64>, Option<u64>) {
            let Ok(log) = self.shared.log.lock() else { return (None, None) };
            let refused = log.timeline.iter().find(|(ms, ok)| *ms >= from && !ok).map(|(ms, _)| *ms);
            let back = log.timeline.iter().find(|(ms, ok)| *ms >= healed && *ok).map(|(ms, _)| *ms);
            (refused, back)
        }

        pub fn bad_signatures(&self) -> u64 {
            self.shared.bad_signatures.load(Ordering::SeqCst)
        }
    }

    /// Standard Webhooks: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`.
    fn signed(key: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(id), Some(timestamp), Some(signatures)) =
            (get("webhook-id"), get("webhook-timestamp"), get("webhook-signature"))
        else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return false };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        signatures.split(' ').any(|s| s == expected)
    }

    async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
        if !signed(&shared.key, &headers, &body) {
            shared.bad_signatures.fetch_add(1, Ordering::SeqCst);
            return StatusCode::UNAUTHORIZED;
        }
        let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let message_id = event["message_id"].as_str().unwrap_or_default().to_owned();
        // "Flaky": the first delivery of about one event in N (by event id)
        // is refused, so the retry path is busy during every fault.
        let event_id = event["event_id"].as_str().unwrap_or_default();
        let flaky = shared.flaky_every > 0
            && u64::from_str_radix(event_id.get(..8).unwrap_or("1"), 16).unwrap_or(1) % shared.flaky_every
                == 0;
        let ms = shared.clock.ms();
        let Ok(mut log) = shared.log.lock() else { return StatusCode::INTERNAL_SERVER_ERROR };
        let calls = log.per_message.entry(message_id).or_default();
        calls.calls += 1;
        let refuse = shared.down.load(Ordering::SeqCst) || (flaky && calls.calls == 1);
        if !refuse {
            calls.ok += 1;
        }
        log.timeline.push((ms, !refuse));
        if refuse { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::NO_CONTENT }
    }
}

mod provider {
    //! The SMS provider: sends receipts, retries like one, records everything.
    //!
    //! Retries follow what Vonage documents: only 429, 5xx and no answer
    //! (connection error, timeout) are retried, with capped exponential
    //! backoff (250 ms doubling to 4 s, jittered); any other answer is final.

    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::Semaphore;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    const BACKOFF_START: Duration = Duration::from_millis(250);
    const BACKOFF_MAX: Duration = Duration::from_secs(4);
    /// Open-loop receipts in flight at most (a stalled service makes the
    /// steady sender wait rather than pile up tasks).
    const MAX_IN_FLIGHT: usize = 5_000;

    /// One HTTP request and its answer (`code` 0: no answer).
    #[derive(Debug, Clone, Copy)]
    pub struct Attempt {
        pub start_ms: u64,
        pub end_ms: u64,
        pub code: u16,
        pub bad: bool,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Final {
        /// `200`: the provider forgets the receipt.
        Accepted,
        /// Another final answer (4xx): the provider drops the receipt.
        Refused(u16),
        /// Still failing when the retry window closed.
        GaveUp,
    }

    #[derive(Debug, Clone)]
    pub struct Receipt {
        pub message_id: String,
        pub bad: bool,
        pub first_ms: u64,
        pub end_ms: u64,
        pub outcome: Final,
    }

    /// One request, rebuilt for each attempt.
    struct Spec {
        path: String,
        content_type: &'static str,
        body: Option<String>,
    }

    struct Shared {
        client: reqwest::Client,
        base: String,
        tag: String,
        clock: Clock,
        bad_every: u64,
        next: AtomicU64,
        /// No retry may start after this (ms on the clock).
        retry_deadline: AtomicU64,
        attempts: Mutex<Vec<Attempt>>,
        receipts: Mutex<Vec<Receipt>>,
    }

    pub struct Load {
        shared: Arc<Shared>,
        tracker: TaskTracker,
        stop_steady: CancellationToken,
        stop_burst: CancellationToken,
    }

    /// Everything one scenario's load produced.
    pub struct Recorded {
        pub sent: u64,
        pub attempts: Vec<Attempt>,
        pub receipts: Vec<Receipt>,
    }

    impl Load {
        /// Starts the steady stream at `rate` receipts per second.
        pub fn start(
            client: reqwest::Client,
            base: String,
            tag: String,
            clock: Clock,
            rate: f64,
            bad_every: u64,
        ) -> Self {
            let shared = Arc::new(Shared {
                client,
                base,
                tag,
                clock,
                bad_every,
                next: AtomicU64::new(0),
                retry_deadline: AtomicU64::new(u64::MAX),
                attempts: Mutex::new(Vec::new()),
                receipts: Mutex::new(Vec::new()),
            });
            let load = Self {
                shared,
                tracker: TaskTracker::new(),
                stop_steady: CancellationToken::new(),
                stop_burst: CancellationToken::new(),
            };
            let (shared, tracker, stop) =
                (load.shared.clone(), load.tracker.clone(), load.stop_steady.clone());
            load.tracker.spawn(async move {
                let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
                let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                // Catch up after a stall: the average rate is what was asked for.
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                loop {
                    let permit = tokio::select! {
                        () = stop.cancelled() => return,
                        _ = ticker.tick() => match in_flight.clone().acquire_owned().await {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                    };
                    let shared = shared.clone();
                    tracker.spawn(async move {
                        shared.deliver_next().await;
                        drop(permit);
                    });
                }
            });
            load
        }

        /// Full speed: `concurrency` connections, each sending the next
        /// receipt as soon as the previous one is settled, `max` in all.
        pub fn start_burst(&self, concurrency: usize, max: u64) {
            let sent = Arc::new(AtomicU64::new(0));
            for _ in 0..concurrency {
                let (shared, stop, sent) = (self.shared.clone(), self.stop_burst.clone(), sent.clone());
                self.tracker.spawn(async move {
                    while !stop.is_cancelled() && sent.fetch_add(1, Ordering::SeqCst) < max {
                        shared.deliver_next().await;
                    }
                });
            }
        }

        pub fn stop_burst(&self) {
            self.stop_burst.cancel();
        }

        /// Stops sending, lets pending receipts retry for `retry_window`, and
        /// returns the record. Receipts still unsettled after that (a request
        /// that hangs) are missing from `receipts` and count as given up.
        pub async fn finish(self, retry_window: Duration) -> Recorded {
            self.stop_steady.cancel();
            self.stop_burst.cancel();
            let deadline =
                self.shared.clock.ms() + u64::try_from(retry_window.as_millis()).unwrap_or(u64::MAX);
            self.shared.retry_deadline.store(deadline, Ordering::SeqCst);
            self.tracker.close();
            // The last attempt may take the client's whole 15 s timeout.
            let _ = tokio::time::timeout(retry_window + Duration::from_secs(20), self.tracker.wait()).await;
            Recorded {
                sent: self.shared.next.load(Ordering::SeqCst),
                attempts: take(&self.shared.attempts),
                receipts: take(&self.shared.receipts),
            }
        }
    }

    fn take<T>(list: &Mutex<Vec<T>>) -> Vec<T> {
        list.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
    }

    /// Deterministic jitter (no RNG in this crate): 80-100 % of `delay`.
    fn jittered(delay: Duration, seed: u64) -> Duration {
        let permille = seed.wrapping_mul(2_654_435_761) % 201;
        delay.mul_f64(1.0 - permille as f64 / 1000.0)
    }

    const VONAGE_STATUSES: [&str; 3] = ["delivered", "expired", "accepted"];
    const TWILIO_STATUSES: [&str; 3] = ["delivered", "undelivered", "sent"];

    impl Shared {
        /// Receipt `n`: the four wire formats in turn, the three outcomes in
        /// turn, and every `bad_every`-th one malformed in one of three ways.
        fn spec(&self, n: u64, message_id: &str) -> (Spec, bool) {
            let form = "application/x-www-form-urlencoded";
            if self.bad_every > 0 && n % self.bad_every == self.bad_every - 1 {
                let spec = match (n / self.bad_every) % 3 {
                    // Empty status: 400, and must never be stored.
                    0 => Spec {
                        path: "/dlr/vonage".into(),
                        content_type: form,
                        body: Some(dlr_tests::vonage_form(message_id, "")),
                    },
                    // Truncated JSON: 400.
                    1 => Spec {
                        path: "/dlr/vonage".into(),
                        content_type: "application/json",
                        body: Some(format!("{{\"messageId\":\"{message_id}\",\"status\":\"deliv")),
                    },
                    // A valid receipt with a content type nobody sends: 415.
                    _ => Spec {
                        path: "/dlr/vonage".into(),
                        content_type: "text/plain",
                        body: Some(dlr_tests::vonage_form(message_id, "delivered")),
                    },
                };
                return (spec, true);
            }
            let outcome = usize::try_from((n / 4) % 3).unwrap_or(0);
            let vonage = dlr_tests::vonage_form(message_id, VONAGE_STATUSES[outcome]);
            let spec = match n % 4 {
                0 => Spec { path: format!("/dlr/vonage?{vonage}"), content_type: "", body: None },
                1 => Spec { path: "/dlr/vonage".into(), content_type: form, body: Some(vonage) },
                2 => {
                    let body = serde_json::json!({
                        "msisdn": "447700900123", "to": "AcmeShop", "network-code": "23415",
                        "messageId": message_id, "price": "0.03330000", "status": VONAGE_STATUSES[outcome],
                        "scts": "2503140926", "err-code": "0", "message-timestamp": "2025-03-14 09:26:41",
                    });
                    Spec {
                        path: "/dlr/vonage".into(),
                        content_type: "application/json",
                        body: Some(body.to_string()),
                    }
                }
                _ => {
                    let error = if outcome == 1 { "&ErrorCode=30003" } else { "" };
                    let body = format!(
                        "AccountSid=AC0123456789abcdef0123456789abcdef&MessageSid={message_id}&MessageStatus={}&To=%2B15558675310&From=%2B15017122661{error}",
                        TWILIO_STATUSES[outcome]
                    );
                    Spec { path: "/dlr/twilio".into(), content_type: form, body: Some(body) }
                }
            };
            (spec, false)
        }

        /// One request; the answer's status, or 0 when there was none.
        async fn attempt(&self, spec: &Spec) -> u16 {
            let url = format!("{}{}", self.base, spec.path);
            let request = match &spec.body {
                None => self.client.get(url),
                Some(body) => {
                    self.client.post(url).header("content-type", spec.content_type).body(body.clone())
                }
            };
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    // Read the body so the connection goes back to the pool;
                    // the status line is what the provider acts on.
                    let _ = response.bytes().await;
                    status
                }
                Err(_) => 0,
            }
        }

        /// Sends the next receipt until it is settled, like a provider.
        async fn deliver_next(&self) {
            let n = self.next.fetch_add(1, Ordering::SeqCst);
            let message_id = format!("{}-{n:06}", self.tag);
            let (spec, bad) = self.spec(n, &message_id);
            let first_ms = self.clock.ms();
            let mut backoff = BACKOFF_START;
            let mut tries = 0u64;
            let outcome = loop {
                tries += 1;
                let start_ms = self.clock.ms();
                let code = self.attempt(&spec).await;
                let end_ms = self.clock.ms();
                if let Ok(mut attempts) = self.attempts.lock() {
                    attempts.push(Attempt { start_ms, end_ms, code, bad });
                }
                match code {
                    200 => break Final::Accepted,
                    0 | 429 | 500..=599 => {
                        let wait = jittered(backoff, n ^ (tries << 32));
                        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                        if end_ms.saturating_add(wait_ms) > self.retry_deadline.load(Ordering::SeqCst) {
                            break Final::GaveUp;
                        }
                        tokio::time::sleep(wait).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                    other => break Final::Refused(other),
                }
            };
            let receipt = Receipt { message_id, bad, first_ms, end_ms: self.clock.ms(), outcome };
            if let Ok(mut receipts) = self.receipts.lock() {
                receipts.push(receipt);
            }
        }
    }
}

mod scenario {
    //! One scenario: load, fault during the load, heal, wait for the sinks.

    use super::cluster::Role;
    use super::*;

    /// A finished scenario, before reconciliation.
    pub struct Run {
        pub kind: ScenarioKind,
        pub fault: String,
        /// Message id prefix of the scenario's receipts.
        pub prefix: String,
        pub inject_ms: u64,
        pub healed_ms: u64,
        /// All receipts settled (200, final 4xx or given up).
        pub settled_ms: u64,
        /// Both sinks had every acknowledged receipt.
        pub caught_up_ms: Option<u64>,
        pub recorded: provider::Recorded,
        /// Receiver-side refusal and recovery (downstream outage).
        pub downstream: (Option<u64>, Option<u64>),
        pub findings: replicated::Findings,
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        context: &RunContext<'_>,
        cluster: &mut cluster::Cluster,
        rabbit: &rabbit::Rabbit,
        sink: &sink::Sink,
        pool: &sqlx::PgPool,
        client: &reqwest::Client,
        kind: ScenarioKind,
        tag: String,
    ) -> Result<Run> {
        let (profile, clock) = (&context.profile, context.clock);
        if kind.broker_wide() {
            let within = Duration::from_secs(context.args.exclusive_wait_secs);
            rabbit.wait_exclusive(&clock, &context.run_id, within).await?;
        }
        clock.say(format!("{}: steady load at {}/s", kind.name(), profile.rate));
        let load = provider::Load::start(
            client.clone(),
            cluster.lb_url(),
            tag.clone(),
            clock,
            profile.rate,
            profile.bad_every,
        );
        tokio::time::sleep(profile.warmup).await;
        // The full-speed burst starts with the fault and runs until just after
        // it is healed (or its count is reached).
        load.start_burst(profile.burst_concurrency, profile.burst_max);
        let inject_ms = clock.ms();
        let fault = inject(context, cluster, rabbit, sink, kind).await;
        let healed_ms = clock.ms();
        // Even when the fault could not be healed, the load is wound down
        // before the error surfaces (the broker guard does the rest).
        let fault = match fault {
            Ok(description) => description,
            Err(error) => {
                load.stop_burst();
                let _ = load.finish(Duration::ZERO).await;
                return Err(error.context(format!("scenario {}", kind.name())));
            }
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        load.stop_burst();
        tokio::time::sleep(profile.cooldown).await;
        clock.say(format!("{}: load stopped; waiting for pending retries", kind.name()));
        let recorded = load.finish(profile.retry_window).await;
        let settled_ms = clock.ms();

        let prefix = format!("{tag}-");
        let acknowledged: HashSet<String> = recorded
            .receipts
            .iter()
            .filter(|r| !r.bad && r.outcome == provider::Final::Accepted)
            .map(|r| r.message_id.clone())
            .collect();
        let caught_up_ms =
            wait_for_sinks(pool, sink, &prefix, &acknowledged, profile.settle).await?.then(|| clock.ms());
        let downstream = if kind == ScenarioKind::DownstreamOutage {
            sink.outage(inject_ms, healed_ms)
        } else {
            (None, None)
        };
        clock.say(format!(
            "{}: {} receipts sent, {} acknowledged, sinks {}",
            kind.name(),
            recorded.sent,
            acknowledged.len(),
            match caught_up_ms {
                Some(ms) => format!("complete {:.1} s after the load", (ms - settled_ms) as f64 / 1000.0),
                None => format!("still incomplete ({:?} without progress)", profile.settle),
            }
        ));
        let findings = context.findings.lock().map(|mut f| std::mem::take(&mut *f)).unwrap_or_default();
        Ok(Run {
            kind,
            fault,
            prefix,
            inject_ms,
            healed_ms,
            settled_ms,
            caught_up_ms,
            recorded,
            downstream,
            findings,
        })
    }

    /// Injects the fault, holds it, heals it; returns a one-line description.
    async fn inject(
        context: &RunContext<'_>,
        cluster: &mut cluster::Cluster,
        rabbit: &rabbit::Rabbit,
        sink: &sink::Sink,
        kind: ScenarioKind,
    ) -> Result<String> {
        let (profile, clock) = (&context.profile, context.clock);
        let ready = Duration::from_secs(120);
        let secs = |d: Duration| d.as_secs_f64();
        match kind {
            ScenarioKind::LeaderKill
            | ScenarioKind::LeaderKillStaysDown
            | ScenarioKind::ConnectedNodeKill
            | ScenarioKind::FollowerRestart
            | ScenarioKind::NodesRollingRestart
            | ScenarioKind::MajorityLoss => replicated::inject(context, cluster, sink, kind).await,
            ScenarioKind::Baseline => {
                tokio::time::sleep(profile.baseline).await;
                Ok("none".to_owned())
            }
            ScenarioKind::BrokerRestart => {
                // What clients see: how long the AMQP port does not answer.
                let watch = tokio::spawn(port_outage(dlr_tests::proxy::broker_addr()));
                clock.say("broker-restart: rabbitmqctl stop");
                rabbit.stop().await?;
                tokio::time::sleep(profile.broker_down).await;
                clock.say("broker-restart: rabbitmq-server -detached");
                let starting = Instant::now();
                rabbit.start().await?;
                cluster.wait_all_ready(ready).await?;
                clock.say(format!(
                    "broker-restart: broker back, every instance ready again after {:.1} s",
                    secs(starting.elapsed())
                ));
                let down = watch.await.ok().flatten().unwrap_or_default();
                Ok(format!(
                    "stop, pause {:.0} s, start: port closed {:.1} s",
                    secs(profile.broker_down),
                    secs(down)
                ))
            }
            ScenarioKind::WorkerKill => {
                let name = cluster.name(Role::Worker, 0);
                clock.say(format!("worker-kill: kill -9 {name}"));
                cluster.kill(Role::Worker, 0)?;
                tokio::time::sleep(profile.worker_down).await;
                cluster.start(Role::Worker, 0)?;
                cluster.wait_ready(Role::Worker, 0, ready).await?;
                clock.say(format!("worker-kill: {name} consuming again"));
                Ok(format!("kill -9 one worker, new one after {:.0} s", secs(profile.worker_down)))
            }
            ScenarioKind::IngestRollingRestart => {
                let mut drains = Vec::new();
                for n in 0..2 {
                    let name = cluster.name(Role::Ingest, n);
                    clock.say(format!("ingest-rolling-restart: SIGTERM {name}"));
                    let started = Instant::now();
                    let status = cluster.terminate(Role::Ingest, n, Duration::from_secs(60)).await?;
                    if !status.success() {
                        bail!("{name} exited with {status} after SIGTERM");
                    }
                    drains.push(format!("{:.1}", secs(started.elapsed())));
                    cluster.start(Role::Ingest, n)?;
                    cluster.wait_ready(Role::Ingest, n, ready).await?;
                    // Let nginx take it back (fail_timeout) before the next one.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                Ok(format!("SIGTERM each ingest in turn (drained in {} s)", drains.join(" / ")))
            }
            ScenarioKind::WorkerRollingRestart => {
                // A SIGTERM'd worker settles what it holds before it closes
                // its channel, so the restart should cause no redelivery:
                // the duplicates column of this scenario shows any.
                let mut drains = Vec::new();
                for n in 0..2 {
                    let name = cluster.name(Role::Worker, n);
                    clock.say(format!("worker-rolling-restart: SIGTERM {name}"));
                    let started = Instant::now();
                    let status = cluster.terminate(Role::Worker, n, Duration::from_secs(60)).await?;
                    if !status.success() {
                        bail!("{name} exited with {status} after SIGTERM");
                    }
                    drains.push(format!("{:.1}", secs(started.elapsed())));
                    cluster.start(Role::Worker, n)?;
                    cluster.wait_ready(Role::Worker, n, ready).await?;
                }
                Ok(format!("SIGTERM each worker in turn (drained in {} s)", drains.join(" / ")))
            }
            ScenarioKind::DownstreamOutage => {
                clock.say("downstream-outage: receiver answers 503");
                sink.set_down(true);
                tokio::time::sleep(profile.outage).await;
                sink.set_down(false);
                clock.say("downstream-outage: receiver back");
                Ok(format!("receiver answers 503 for {:.0} s", secs(profile.outage)))
            }
            ScenarioKind::MemoryAlarm => {
                clock.say("memory-alarm: set_vm_memory_high_watermark 0.0000001");
                rabbit.memory_alarm(true).await?;
                tokio::time::sleep(profile.alarm).await;
                rabbit.memory_alarm(false).await?;
                clock.say("memory-alarm: watermark restored");
                Ok(format!("memory alarm for {:.0} s", secs(profile.alarm)))
            }
            ScenarioKind::DiskAlarm => {
                clock.say("disk-alarm: set_disk_free_limit 1000GB");
                rabbit.disk_alarm(true).await?;
                tokio::time::sleep(profile.alarm).await;
                rabbit.disk_alarm(false).await?;
                clock.say("disk-alarm: disk limit restored");
                Ok(format!("disk alarm for {:.0} s", secs(profile.alarm)))
            }
        }
    }

    /// How long `addr` refuses connections, from the first refusal to the
    /// first accepted connection after it (`None` if it never closed or
    /// did not come back within 10 minutes).
    async fn port_outage(addr: std::net::SocketAddr) -> Option<Duration> {
        let open = || async {
            tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(addr))
                .await
                .is_ok_and(|c| c.is_ok())
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut closed_at = None;
        while Instant::now() < deadline {
            match (open().await, closed_at) {
                (false, None) => closed_at = Some(Instant::now()),
                (true, Some(closed)) => return Some(closed.elapsed()),
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Message ids in the status table starting with `prefix`.
    pub async fn stored_ids(pool: &sqlx::PgPool, prefix: &str) -> Result<HashSet<String>> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT message_id FROM message_status WHERE starts_with(message_id, $1)")
                .bind(prefix)
                .fetch_all(pool)
                .await
                .context("reading message_status")?;
        Ok(ids.into_iter().collect())
    }

    /// Polls both sinks until they hold every acknowledged receipt (true)
    /// or `within` passes (false).
    /// Upper bound of a catch-up that keeps making progress: longer than
    /// RabbitMQ's default re-send interval of an unconfirmed dead-letter hop
    /// (180 s), which is how long a retry can legitimately be held up.
    const MAX_SETTLE: Duration = Duration::from_secs(300);

    /// Waits until every acknowledged receipt is in both sinks. Gives up
    /// when nothing new has arrived for `quiet` (a stall, not a slow drain:
    /// retries after a fault come back over several delay steps) or after
    /// [`MAX_SETTLE`]; then says what is missing where, so that a late
    /// receipt can be told from a lost one.
    async fn wait_for_sinks(
        pool: &sqlx::PgPool,
        sink: &sink::Sink,
        prefix: &str,
        acknowledged: &HashSet<String>,
        quiet: Duration,
    ) -> Result<bool> {
        let started = Instant::now();
        let mut last_progress = started;
        let mut best = usize::MAX;
        loop {
            let stored = stored_ids(pool, prefix).await?;
            let received = sink.calls(prefix);
            let delivered = |id: &String| received.get(id).is_some_and(|c| c.ok > 0);
            let not_stored = acknowledged.iter().filter(|id| !stored.contains(*id)).count();
            let not_received = acknowledged.iter().filter(|id| !delivered(id)).count();
            let missing = not_stored + not_received;
            if missing == 0 {
                return Ok(true);
            }
            if missing < best {
                best = missing;
                last_progress = Instant::now();
            }
            if last_progress.elapsed() >= quiet || started.elapsed() >= MAX_SETTLE {
                let example = acknowledged.iter().find(|id| !stored.contains(*id) || !delivered(id));
                println!(
                    "sinks incomplete after {:.0} s ({:.0} s without progress): {not_stored} acknowledged receipts \
                     not in PostgreSQL, {not_received} not received over HTTP (e.g. {})",
                    started.elapsed().as_secs_f64(),
                    last_progress.elapsed().as_secs_f64(),
                    example.map(String::as_str).unwrap_or("-"),
                );
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

mod report {
    //! Reconciliation and the results table.

    use super::provider::Final;
    use super::scenario::Run;
    use super::*;

    /// One row of the table, with the reasons to fail.
    pub struct Row {
        pub name: &'static str,
        fault: String,
        sent: u64,
        accepted: usize,
        answers_429: usize,
        answers_5xx: usize,
        no_answer: usize,
        bad_sent: usize,
        bad_refused: usize,
        pub lost: Vec<String>,
        duplicates: u64,
        recovery_ms: Option<u64>,
        fault_p99_ms: u64,
        fault_max_ms: u64,
        max_to_200_ms: u64,
        catch_up_ms: Option<u64>,
        problems: Vec<String>,
    }

    fn percentile(sorted: &[u64], q: f64) -> u64 {
        if sorted.is_empty() {
            return 0;
        }
        let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    }

    /// Compares what the provider was told (200) with what the sinks hold.
    pub async fn reconcile(run: &Run, pool: &sqlx::PgPool, sink: &sink::Sink) -> Result<Row> {
        let recorded = &run.recorded;
        let stored = scenario::stored_ids(pool, &run.prefix).await?;
        let received = sink.calls(&run.prefix);
        let mut problems = run.findings.problems(&recorded.attempts);

        let valid: Vec<_> = recorded.receipts.iter().filter(|r| !r.bad).collect();
        let bad: Vec<_> = recorded.receipts.iter().filter(|r| r.bad).collect();
        let accepted: Vec<_> = valid.iter().filter(|r| r.outcome == Final::Accepted).collect();
        let mut lost: Vec<String> = accepted
            .iter()
            .filter(|r| {
                !stored.contains(&r.message_id) || received.get(&r.message_id).is_none_or(|c| c.ok == 0)
            })
            .map(|r| {
                let mut missing = Vec::new();
                if !stored.contains(&r.message_id) {
                    missing.push("message_status");
                }
                if received.get(&r.message_id).is_none_or(|c| c.ok == 0) {
                    missing.push("receiver");
                }
                format!("{} (not in {})", r.message_id, missing.join(", "))
            })
            .collect();
        lost.sort();

        let refused: Vec<_> = valid
            .iter()
            .filter_map(|r| match r.outcome {
                Final::Refused(code) => Some(format!("{} got {code}", r.message_id)),
                _ => None,
            })
            .collect();
        if !refused.is_empty() {
            problems.push(format!("{} valid receipts got a final 4xx, e.g. {}", refused.len(), refused[0]));
        }
        let settled = recorded.receipts.len() as u64;
        let gave_up = valid.iter().filter(|r| r.outcome == Final::GaveUp).count() as u64
            + recorded.sent.saturating_sub(settled);
        if gave_up > 0 {
            problems.push(format!("{gave_up} receipts never got a 200 within the provider's retry window"));
        }
        let bad_accepted = bad.iter().filter(|r| r.outcome == Final::Accepted).count();
        if bad_accepted > 0 {
            problems.push(format!("{bad_accepted} malformed receipts were answered 200"));
        }
        let bad_stored = bad
            .iter()
            .filter(|r| stored.contains(&r.message_id) || received.contains_key(&r.message_id))
            .count();
        if bad_stored > 0 {
            problems.push(format!("{bad_stored} malformed receipts reached a sink"));
        }
        if !lost.is_empty() {
            problems.push(format!(
                "{} acknowledged receipts lost, e.g. {}",
                lost.len(),
                lost[..lost.len().min(5)].join("; ")
            ));
        }

        let valid_attempts: Vec<_> = recorded.attempts.iter().filter(|a| !a.bad).collect();
        let count = |f: &dyn Fn(u16) -> bool| valid_attempts.iter().filter(|a| f(a.code)).count();
        // Recovery: first failure (5xx or no answer; 429 is load shedding,
        // not a fault) to the first 200 after the last failure.
        let failures: Vec<_> = valid_attempts.iter().filter(|a| a.code == 0 || a.code >= 500).collect();
        let recovery_ms = if run.kind == ScenarioKind::DownstreamOutage {
            match run.downstream {
                (Some(refused), Some(back)) => Some(back.saturating_sub(refused)),
                _ => None,
            }
        } else {
            let first = failures.iter().map(|a| a.end_ms).min();
            let last = failures.iter().map(|a| a.end_ms).max();
            match (first, last) {
                (Some(first), Some(last)) => valid_attempts
                    .iter()
                    .filter(|a| a.code == 200 && a.end_ms >= last)
                    .map(|a| a.end_ms)
                    .min()
                    .map(|ok| ok - first),
                _ => None,
            }
        };
        let mut in_fault: Vec<u64> = valid_attempts
            .iter()
            .filter(|a| a.start_ms >= run.inject_ms && a.start_ms <= run.healed_ms)
            .map(|a| a.end_ms - a.start_ms)
            .collect();
        in_fault.sort_unstable();
        let max_to_200_ms = accepted.iter().map(|r| r.end_ms - r.first_ms).max().unwrap_or(0);
        let duplicates = received.values().map(|c| u64::from(c.ok.saturating_sub(1))).sum();
        problems.extend(judge(run, &valid_attempts, duplicates));

        Ok(Row {
            name: run.kind.name(),
            fault: run.fault.clone(),
            sent: recorded.sent,
            accepted: accepted.len(),
            answers_429: count(&|c| c == 429),
            answers_5xx: count(&|c| c >= 500),
            no_answer: count(&|c| c == 0),
            bad_sent: bad.len(),
            bad_refused: bad.iter().filter(|r| matches!(r.outcome, Final::Refused(400..=499))).count(),
            lost,
            duplicates,
            recovery_ms,
            fault_p99_ms: percentile(&in_fault, 0.99),
            fault_max_ms: in_fault.last().copied().unwrap_or(0),
            max_to_200_ms,
            catch_up_ms: run.caught_up_ms.map(|ms| ms.saturating_sub(run.settled_ms)),
            problems,
        })
    }

    /// The slowest answer allowed: ingest answers within its confirm
    /// timeout, plus this margin for nginx, the HTTP stack and a loaded
    /// two-core machine (the slowest answers measured were 45 ms over).
    pub const ANSWER_MARGIN_MS: u64 = 2_000;
    /// The first 200 after the last failed answer must come within this of
    /// the fault being healed (downstream outage: the receiver's first
    /// accepted delivery after it).
    pub const RECOVERED_WITHIN_MS: u64 = 10_000;

    /// What the table shows that must hold, beyond the loss check: the
    /// fault reached the provider where it must, a graceful stop made no
    /// duplicate, every answer came within the confirm timeout plus
    /// [`ANSWER_MARGIN_MS`], and service was back within
    /// [`RECOVERED_WITHIN_MS`] of the heal.
    fn judge(run: &Run, attempts: &[&provider::Attempt], duplicates: u64) -> Vec<String> {
        let mut problems = Vec::new();
        let failed: Vec<_> = attempts.iter().filter(|a| a.code == 0 || a.code >= 500).collect();
        // A stopped broker, a broker-wide alarm and a lost majority leave
        // ingest nothing to store to: the provider must see 503s, or the
        // fault did not happen as described. A worker kill, a rolling
        // restart and a follower's restart are meant to go unnoticed, and
        // a leader's loss may be (publishes wait for the new leader):
        // their evidence is in the fault column (the process's exit, the
        // new leader).
        let must_refuse = matches!(
            run.kind,
            ScenarioKind::BrokerRestart
                | ScenarioKind::MemoryAlarm
                | ScenarioKind::DiskAlarm
                | ScenarioKind::MajorityLoss
        );
        if must_refuse && failed.is_empty() {
            problems.push(
                "the fault produced no 5xx and no unanswered request: it did not happen as described"
                    .to_owned(),
            );
        }
        if run.kind == ScenarioKind::DownstreamOutage && run.downstream.0.is_none() {
            problems.push("the receiver refused no delivery during its outage".to_owned());
        }
        // Nothing is redelivered by a drain that acks what it finished, and
        // nothing at all happens in the baseline.
        if matches!(run.kind, ScenarioKind::Baseline | ScenarioKind::WorkerRollingRestart) && duplicates > 0 {
            problems.push(format!("{duplicates} duplicate deliveries where there must be none"));
        }
        let bound = INGEST_CONFIRM_TIMEOUT_MS + ANSWER_MARGIN_MS;
        let slow: Vec<_> = attempts.iter().filter(|a| a.end_ms - a.start_ms > bound).collect();
        if let Some(slowest) = slow.iter().map(|a| a.end_ms - a.start_ms).max() {
            problems.push(format!(
                "{} requests took longer than the confirm timeout plus {ANSWER_MARGIN_MS} ms ({bound} ms), the slowest {slowest} ms",
                slow.len()
            ));
        }
        let recovered_ms = if run.kind == ScenarioKind::DownstreamOutage {
            run.downstream.1
        } else {
            failed.iter().map(|a| a.end_ms).max().map(|last| {
                attempts
                    .iter()
                    .filter(|a| a.code == 200 && a.end_ms >= last)
                    .map(|a| a.end_ms)
                    .min()
                    .unwrap_or(u64::MAX)
            })
        };
        if let Some(recovered) = recovered_ms
            && recovered > run.healed_ms + RECOVERED_WITHIN_MS
        {
            problems.push(if recovered == u64::MAX {
                "no 200 after the last failed answer".to_owned()
            } else {
                format!(
                    "the first 200 after the last failure came {:.1} s after the fault was healed (at most {} s)",
                    (recovered - run.healed_ms) as f64 / 1000.0,
                    RECOVERED_WITHIN_MS / 1000
                )
            });
        }
        problems
    }

    fn seconds(ms: u64) -> String {
        format!("{:.1} s", ms as f64 / 1000.0)
    }

    pub fn table(rows: &[Row]) -> String {
        let mut out = String::from(
            "| scenario | fault | sent | 200 | 429 / 5xx / no answer | malformed → 4xx | lost | duplicates absorbed | recovery | latency in fault p99 / max | max time to 200 | sinks complete after load |\n\
             |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for r in rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} / {} / {} | {}/{} | **{}** | {} | {} | {} / {} ms | {} | {} |\n",
                r.name,
                r.fault,
                r.sent,
                r.accepted,
                r.answers_429,
                r.answers_5xx,
                r.no_answer,
                r.bad_refused,
                r.bad_sent,
                r.lost.len(),
                r.duplicates,
                r.recovery_ms.map(seconds).unwrap_or_else(|| "no failure seen".to_owned()),
                r.fault_p99_ms,
                r.fault_max_ms,
                seconds(r.max_to_200_ms),
                r.catch_up_ms.map(seconds).unwrap_or_else(|| "never".to_owned()),
            ));
        }
        out
    }

    /// Every reason to fail the run.
    pub fn verdict(rows: &[Row], bad_signatures: u64, parked: &Result<super::Parked>) -> Vec<String> {
        let mut failures: Vec<String> =
            rows.iter().flat_map(|r| r.problems.iter().map(move |p| format!("{}: {p}", r.name))).collect();
        if bad_signatures > 0 {
            failures.push(format!("the receiver got {bad_signatures} deliveries with a bad signature"));
        }
        match parked {
            Ok(p) if p.parked > 0 => failures.push(format!("{} events were parked", p.parked)),
            Ok(_) => {}
            Err(error) => failures.push(format!("could not inspect the broker at the end: {error:#}")),
        }
        failures
    }
}

mod replicated {
    //! The cluster scenarios (`--cluster`): node crashes, restarts and the
    //! loss of a majority on the local 3-node cluster of `deploy/cluster.sh`,
    //! with ingests and workers given all three addresses. The service and
    //! the load are the same as in the single-broker scenarios; only the
    //! faults differ, and a few things are checked while a fault is on
    //! (readiness, answers), recorded as [`Findings`] for the report.

    use super::cluster::Role;
    use super::*;
    use std::process::Stdio;

    /// Node `n` of the cluster listens for AMQP on `AMQP_PORT_BASE + n`.
    const AMQP_PORT_BASE: u16 = 5700;
    const NODES: [usize; 3] = [1, 2, 3];
    /// How long a majority loss may take to make every ingest unready:
    /// RabbitMQ's pause_minority stops the last node's listener at once, and
    /// an ingest then stays ready for its readiness grace (so that a node
    /// restart does not empty the Service); 10 s more for sampling and probes.
    const UNREADY_WITHIN: Duration = Duration::from_secs(INGEST_READINESS_GRACE_SECONDS + 10);
    /// How soon after its leader's node is killed (and stays down) ingest
    /// must answer 200 again: the survivors elect a leader within a second
    /// or two, and a publish that failed must not make the failure last.
    pub const BACK_WITHIN: Duration = Duration::from_secs(10);
    /// After [`BACK_WITHIN`], the share of 5xx answers allowed while the
    /// node is still down: a publish caught on a channel that is being
    /// replaced, not a pod that refuses everything.
    pub const STRAY_5XX_PERCENT: usize = 1;
    /// Bound of one rabbitmqctl query through deploy/cluster.sh.
    const QUERY_TIMEOUT: Duration = Duration::from_secs(180);

    pub fn is_cluster_scenario(kind: ScenarioKind) -> bool {
        matches!(
            kind,
            ScenarioKind::LeaderKill
                | ScenarioKind::LeaderKillStaysDown
                | ScenarioKind::ConnectedNodeKill
                | ScenarioKind::FollowerRestart
                | ScenarioKind::NodesRollingRestart
                | ScenarioKind::MajorityLoss
        )
    }

    /// The scenarios of this run: `--cluster` runs only cluster scenarios
    /// (leader kill, leader kill with the node staying down, and follower
    /// restart with `--short`, for CI), a normal run only the single-broker
    /// ones.
    pub fn select(scenarios: Vec<ScenarioKind>, args: &Args) -> Result<Vec<ScenarioKind>> {
        if args.only.is_empty() {
            if args.cluster && args.short {
                return Ok(vec![
                    ScenarioKind::LeaderKill,
                    ScenarioKind::LeaderKillStaysDown,
                    ScenarioKind::FollowerRestart,
                ]);
            }
            return Ok(scenarios.into_iter().filter(|k| k.on_cluster() == args.cluster).collect());
        }
        if let Some(wrong) = scenarios.iter().find(|k| k.on_cluster() != args.cluster) {
            if args.cluster {
                bail!("{} is a single-broker scenario: run it without --cluster", wrong.name());
            }
            bail!("{} needs --cluster (deploy/reliability.sh --cluster)", wrong.name());
        }
        Ok(scenarios)
    }

    /// What a cluster scenario saw during its fault.
    #[derive(Debug, Default)]
    pub struct Findings {
        /// (from, to) in harness ms: no receipt may be answered 200 by a
        /// request made entirely within (a majority of nodes is down).
        pub no_200: Option<(u64, u64)>,
        /// (from, to): no 5xx and no unanswered request expected within (a
        /// node without clients restarts).
        pub no_5xx: Option<(u64, u64)>,
        /// (from, to): at least one request made within must be answered
        /// 200 within (ingest is back although the node is still down).
        pub some_200: Option<(u64, u64)>,
        /// (from, to): at most [`STRAY_5XX_PERCENT`] of the answers to
        /// requests made within may be 5xx or missing (ingest stays back).
        pub mostly_200: Option<(u64, u64)>,
        /// Failed checks.
        pub problems: Vec<String>,
    }

    impl Findings {
        /// The recorded problems plus the answers that broke a window's rule.
        pub fn problems(&self, attempts: &[provider::Attempt]) -> Vec<String> {
            let mut problems = self.problems.clone();
            let inside = |(from, to): (u64, u64)| {
                attempts.iter().filter(move |a| !a.bad && a.start_ms >= from && a.end_ms <= to)
            };
            if let Some(window) = self.no_200 {
                let ok = inside(window).filter(|a| a.code == 200).count();
                if ok > 0 {
                    problems
                        .push(format!("{ok} receipts were answered 200 while a majority of nodes was down"));
                }
            }
            if let Some(window) = self.no_5xx {
                let failed = inside(window).filter(|a| a.code >= 500 || a.code == 0).count();
                if failed > 0 {
                    problems.push(format!(
                        "{failed} requests got a 5xx or no answer while a node without clients restarted"
                    ));
                }
            }
            if let Some(window) = self.some_200
                && inside(window).all(|a| a.code != 200)
            {
                problems.push(format!(
                    "no receipt was answered 200 within {} s of the kill while the node stayed down",
                    (window.1 - window.0) / 1000
                ));
            }
            if let Some(window) = self.mostly_200 {
                let answers = inside(window).count();
                let failed = inside(window).filter(|a| a.code >= 500 || a.code == 0).count();
                if answers == 0 || failed * 100 > answers * STRAY_5XX_PERCENT {
                    problems.push(format!(
                        "{failed} of {answers} requests got a 5xx or no answer from {} s after the kill while the node \
                         stayed down (at most {STRAY_5XX_PERCENT} % allowed)",
                        BACK_WITHIN.as_secs()
                    ));
                }
            }
            problems
        }
    }

    fn record(context: &RunContext<'_>, change: impl FnOnce(&mut Findings)) {
        if let Ok(mut findings) = context.findings.lock() {
            change(&mut findings);
        }
    }

    /// Runs a rabbitmqctl query through `deploy/cluster.sh`. Each call boots
    /// an Erlang VM, which takes tens of seconds on a loaded two-core
    /// machine: queries get a generous bound and one retry.
    async fn query(context: &RunContext<'_>, args: &[&str]) -> Result<String> {
        match script(context, args, QUERY_TIMEOUT).await {
            Ok(output) => Ok(output),
            Err(error) => {
                context.clock.say(format!("{error:#}; trying again"));
                script(context, args, QUERY_TIMEOUT).await
            }
        }
    }

    /// Runs `deploy/cluster.sh ARGS` and returns its standard output.
    async fn script(context: &RunContext<'_>, args: &[&str], within: Duration) -> Result<String> {
        let output = tokio::time::timeout(
            within,
            tokio::process::Command::new("bash")
                .arg(&context.args.cluster_script)
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| anyhow!("cluster.sh {} did not finish within {within:?}", args.join(" ")))?
        .context("running deploy/cluster.sh")?;
        if !output.status.success() {
            bail!(
                "cluster.sh {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    async fn node(context: &RunContext<'_>, action: &str, n: usize) -> Result<()> {
        script(context, &[action, &n.to_string()], Duration::from_secs(240)).await.map(|_| ())
    }

    /// `dlr2@localhost` → 2.
    fn node_number(name: &str) -> Option<usize> {
        name.strip_prefix("dlr")?.split('@').next()?.parse().ok()
    }

    fn numbers(value: &serde_json::Value) -> Vec<usize> {
        let mut nodes: Vec<usize> =
            value.as_array().into_iter().flatten().filter_map(|n| n.as_str().and_then(node_number)).collect();
        nodes.sort_unstable();
        nodes
    }

    /// Where a quorum queue's replicas are.
    #[derive(Debug)]
    struct Placement {
        name: String,
        leader: Option<usize>,
        members: Vec<usize>,
        online: Vec<usize>,
    }

    /// The run's quorum queues as any running node sees them.
    async fn placements(context: &RunContext<'_>) -> Result<Vec<Placement>> {
        let listing = query(
            context,
            &[
                "ctl",
                "any",
                "list_queues",
                "name",
                "type",
                "leader",
                "members",
                "online",
                "--formatter",
                "json",
                "-q",
            ],
        )
        .await?;
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(listing.trim()).context("reading list_queues output")?;
        let prefix = format!("test.harness-{}", context.run_id);
        Ok(rows
            .iter()
            .filter(|r| r["type"] == "quorum" && r["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
            .map(|r| Placement {
                name: r["name"].as_str().unwrap_or_default().to_owned(),
                leader: r["leader"].as_str().and_then(node_number),
                members: numbers(&r["members"]),
                online: numbers(&r["online"]),
            })
            .collect())
    }

    async fn receipts_placement(context: &RunContext<'_>, queue: &str) -> Result<Placement> {
        placements(context)
            .await?
            .into_iter()
            .find(|p| p.name == queue)
            .ok_or_else(|| anyhow!("{queue} is not in the cluster's queue list"))
    }

    /// Waits until every quorum queue of the run has all three replicas
    /// online (the restarted node rejoined and caught up), returns how long.
    async fn wait_replicated(context: &RunContext<'_>, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let last = match placements(context).await {
                Ok(queues) if !queues.is_empty() && queues.iter().all(|q| q.online == NODES) => {
                    return Ok(started.elapsed());
                }
                Ok(queues) => format!("{queues:?}"),
                Err(error) => format!("{error:#}"),
            };
            if started.elapsed() >= within {
                bail!("queues not fully replicated within {within:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The nodes (with repetitions) that hold the run's ingest or worker connections.
    async fn client_nodes(context: &RunContext<'_>, role: &str) -> Result<Vec<usize>> {
        let listing = query(
            context,
            &["ctl", "any", "list_connections", "port", "client_properties", "--formatter", "json", "-q"],
        )
        .await?;
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(listing.trim()).context("reading list_connections output")?;
        // Connection names are `<binary>[-<purpose>]@<HOSTNAME>` and each
        // process's HOSTNAME is `harness-<run>-<role>-<n>`: the worker's
        // consuming and publishing connections both count.
        let marker = format!("@harness-{}-{role}-", context.run_id);
        Ok(rows
            .iter()
            .filter(|r| r["client_properties"].to_string().contains(&marker))
            .filter_map(|r| r["port"].as_u64())
            .filter_map(|port| usize::try_from(port.checked_sub(u64::from(AMQP_PORT_BASE))?).ok())
            .collect())
    }

    fn most_common(nodes: &[usize]) -> Option<usize> {
        NODES
            .into_iter()
            .filter(|n| nodes.contains(n))
            .max_by_key(|n| nodes.iter().filter(|m| *m == n).count())
    }

    /// Transfers `queue`'s leadership from node `from` to another node and
    /// waits until the cluster reports the new leader; returns it.
    async fn move_leader(context: &RunContext<'_>, queue: &str, from: usize) -> Result<usize> {
        let to = NODES.into_iter().find(|n| *n != from).unwrap_or(1);
        move_leader_to(context, queue, from, to).await
    }

    /// Transfers `queue`'s leadership from node `from` to node `to` and
    /// waits until the cluster reports it there.
    async fn move_leader_to(context: &RunContext<'_>, queue: &str, from: usize, to: usize) -> Result<usize> {
        // A quorum queue's Raft cluster is named after vhost and queue.
        let server = |n: usize| format!("{{'%2F_{queue}', 'dlr{n}@localhost'}}");
        let call = format!("ra:transfer_leadership({}, {}).", server(from), server(to));
        query(context, &["ctl", &from.to_string(), "eval", &call]).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(placement) = receipts_placement(context, queue).await
                && placement.leader == Some(to)
            {
                context.clock.say(format!("moved the leader of {queue} from dlr{from} to dlr{to}"));
                return Ok(to);
            }
            if Instant::now() >= deadline {
                bail!("the leader of {queue} did not move from dlr{from} to dlr{to}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn any_ingest_ready(cluster: &cluster::Cluster) -> bool {
        for n in 0..2 {
            if cluster.wait_ready(Role::Ingest, n, Duration::from_millis(300)).await.is_ok() {
                return true;
            }
        }
        false
    }

    /// Injects one cluster fault and heals it: the node(s) are back, every
    /// queue fully replicated and every instance ready before it returns.
    pub async fn inject(
        context: &RunContext<'_>,
        cluster: &mut cluster::Cluster,
        sink: &sink::Sink,
        kind: ScenarioKind,
    ) -> Result<String> {
        let (profile, clock) = (&context.profile, context.clock);
        let name = kind.name();
        let ready = Duration::from_secs(120);
        let replicated = Duration::from_secs(180);
        let down = profile.broker_down;
        let queue = cluster.topology.queue.clone();
        let before = receipts_placement(context, &queue).await?;
        if before.members != NODES {
            record(context, |f| {
                f.problems
                    .push(format!("{queue} has replicas on {:?}, not on all three nodes", before.members))
            });
        }
        let leader = before.leader.ok_or_else(|| anyhow!("{queue} has no leader before the fault"))?;
        let ingests = client_nodes(context, "ingest").await?;
        let workers = client_nodes(context, "worker").await?;
        let ingest_node = most_common(&ingests).unwrap_or(1);
        clock.say(format!("{name}: leader dlr{leader}, ingests on {ingests:?}, workers on {workers:?}"));
        match kind {
            ScenarioKind::LeaderKill | ScenarioKind::ConnectedNodeKill => {
                let victim = if kind == ScenarioKind::LeaderKill { leader } else { ingest_node };
                // The ingests' node is a different fault from the leader's
                // only when it holds no leader: move the receipts queue's away.
                let leader = if kind == ScenarioKind::ConnectedNodeKill && leader == ingest_node {
                    move_leader(context, &queue, leader).await?
                } else {
                    leader
                };
                let role = match (victim == leader, ingests.contains(&victim)) {
                    (true, true) => "the leader, with ingest connections",
                    (true, false) => "the leader, no ingest connection",
                    (false, true) => "a follower, with ingest connections",
                    (false, false) => "a follower, no ingest connection",
                };
                clock.say(format!("{name}: kill -9 dlr{victim} ({role})"));
                node(context, "kill-node", victim).await?;
                tokio::time::sleep(down).await;
                let new_leader = receipts_placement(context, &queue).await.ok().and_then(|p| p.leader);
                node(context, "start-node", victim).await?;
                let caught_up = wait_replicated(context, replicated).await?;
                cluster.wait_all_ready(ready).await?;
                clock.say(format!(
                    "{name}: dlr{victim} back, replicas caught up in {:.1} s",
                    caught_up.as_secs_f64()
                ));
                Ok(format!(
                    "kill -9 dlr{victim} ({role}), start it after {:.0} s; leader then {}; replicas complete {:.1} s after the start",
                    down.as_secs_f64(),
                    new_leader.map_or("?".to_owned(), |n| format!("dlr{n}")),
                    caught_up.as_secs_f64()
                ))
            }
            ScenarioKind::LeaderKillStaysDown => {
                // The victim holds connections of both ingest and worker (all
                // processes get all three addresses; they take the first that
                // answers) and, moved there if need be, the leader.
                let victim =
                    most_common(&ingests.iter().copied().filter(|n| workers.contains(n)).collect::<Vec<_>>())
                        .ok_or_else(|| {
                            anyhow!(
                                "no node holds both ingest and worker connections: {ingests:?} / {workers:?}"
                            )
                        })?;
                if leader != victim {
                    move_leader_to(context, &queue, leader, victim).await?;
                }
                let stays = profile.node_stays_down.max(BACK_WITHIN * 2);
                clock.say(format!("{name}: kill -9 dlr{victim} (the leader, ingest and worker connections); it stays down {:.0} s", stays.as_secs_f64()));
                node(context, "kill-node", victim).await?;
                let kill_ms = clock.ms();
                let delivered = || sink.calls("").values().filter(|c| c.ok > 0).count();
                tokio::time::sleep(BACK_WITHIN).await;
                let delivered_at_back = delivered();
                tokio::time::sleep(stays - BACK_WITHIN).await;
                let delivered_later = delivered();
                let new_leader = receipts_placement(context, &queue).await.ok().and_then(|p| p.leader);
                let judged_ms = clock.ms();
                let back_ms = kill_ms + u64::try_from(BACK_WITHIN.as_millis()).unwrap_or(u64::MAX);
                record(context, |f| {
                    f.some_200 = Some((kill_ms, back_ms));
                    f.mostly_200 = Some((back_ms, judged_ms));
                    if delivered_later <= delivered_at_back {
                        f.problems.push(format!(
                            "the workers delivered nothing over HTTP from {} s after the kill while dlr{victim} stayed down",
                            BACK_WITHIN.as_secs()
                        ));
                    }
                    if new_leader.is_none_or(|n| n == victim) {
                        f.problems.push(format!("no new leader of {queue} while dlr{victim} was down"));
                    }
                });
                // Judged; started again only so that the next scenario has
                // three nodes.
                node(context, "start-node", victim).await?;
                let caught_up = wait_replicated(context, replicated).await?;
                cluster.wait_all_ready(ready).await?;
                Ok(format!(
                    "kill -9 dlr{victim} (the leader, with ingest and worker connections), down {:.0} s; leader then {}; {} events delivered over HTTP from {} s after the kill to the restart; replicas complete {:.1} s after the start",
                    stays.as_secs_f64(),
                    new_leader.map_or("?".to_owned(), |n| format!("dlr{n}")),
                    delivered_later.saturating_sub(delivered_at_back),
                    BACK_WITHIN.as_secs(),
                    caught_up.as_secs_f64()
                ))
            }
            ScenarioKind::FollowerRestart => {
                let followers: Vec<usize> = NODES.into_iter().filter(|n| *n != leader).collect();
                // A follower without clients: its restart must go unnoticed.
                let quiet = followers.iter().copied().find(|n| !ingests.contains(n) && !workers.contains(n));
                let victim = quiet
                    .or_else(|| followers.iter().copied().find(|n| !ingests.contains(n)))
                    .unwrap_or(followers[0]);
                let from = clock.ms();
                clock.say(format!("{name}: rabbitmqctl stop dlr{victim} (follower)"));
                node(context, "stop-node", victim).await?;
                tokio::time::sleep(down).await;
                node(context, "start-node", victim).await?;
                let caught_up = wait_replicated(context, replicated).await?;
                if !ingests.contains(&victim) {
                    let to = clock.ms();
                    record(context, |f| f.no_5xx = Some((from, to)));
                }
                cluster.wait_all_ready(ready).await?;
                Ok(format!(
                    "stop follower dlr{victim} ({}), start after {:.0} s; replicas complete {:.1} s after the start",
                    if quiet.is_some() { "no clients" } else { "with clients" },
                    down.as_secs_f64(),
                    caught_up.as_secs_f64()
                ))
            }
            ScenarioKind::NodesRollingRestart => {
                let mut steps = Vec::new();
                for n in NODES {
                    clock.say(format!("{name}: rabbitmqctl stop dlr{n}"));
                    let started = Instant::now();
                    node(context, "stop-node", n).await?;
                    node(context, "start-node", n).await?;
                    let caught_up = wait_replicated(context, replicated).await?;
                    cluster.wait_all_ready(ready).await?;
                    steps.push(format!("{:.0}", started.elapsed().as_secs_f64()));
                    clock.say(format!(
                        "{name}: dlr{n} rejoined, replicas complete ({:.1} s)",
                        caught_up.as_secs_f64()
                    ));
                }
                Ok(format!(
                    "stop, start, wait for full replication: dlr1, dlr2, dlr3 in turn ({} s each)",
                    steps.join(" / ")
                ))
            }
            ScenarioKind::MajorityLoss => {
                let survivor = NODES.into_iter().find(|n| *n != leader).unwrap_or(1);
                let victims: Vec<usize> = NODES.into_iter().filter(|n| *n != survivor).collect();
                clock.say(format!(
                    "{name}: kill -9 dlr{} and dlr{} (leader among them)",
                    victims[0], victims[1]
                ));
                for n in &victims {
                    node(context, "kill-node", *n).await?;
                }
                let lost_ms = clock.ms();
                let lost = Instant::now();
                let mut unready_after = None;
                while lost.elapsed() < UNREADY_WITHIN.max(down) {
                    let ready_now = any_ingest_ready(cluster).await;
                    if !ready_now && unready_after.is_none() {
                        unready_after = Some(lost.elapsed());
                    }
                    if ready_now && unready_after.is_some() {
                        record(context, |f| {
                            f.problems
                                .push("an ingest became ready again while the majority was down".to_owned())
                        });
                        break;
                    }
                    if unready_after.is_some() && lost.elapsed() >= down {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                if unready_after.is_none() {
                    record(context, |f| {
                        f.problems
                            .push(format!("ingest stayed ready {UNREADY_WITHIN:?} after losing the majority"))
                    });
                }
                let restart_ms = clock.ms();
                record(context, |f| f.no_200 = Some((lost_ms, restart_ms)));
                clock.say(format!("{name}: starting dlr{} and dlr{}", victims[0], victims[1]));
                let (a, b) = tokio::join!(
                    node(context, "start-node", victims[0]),
                    node(context, "start-node", victims[1])
                );
                a?;
                b?;
                let caught_up = wait_replicated(context, replicated).await?;
                cluster.wait_all_ready(ready).await?;
                Ok(format!(
                    "kill -9 dlr{} and dlr{} for {:.0} s: every ingest unready after {}; replicas complete {:.1} s after the start",
                    victims[0],
                    victims[1],
                    (restart_ms - lost_ms) as f64 / 1000.0,
                    unready_after.map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
                    caught_up.as_secs_f64()
                ))
            }
            other => bail!("{} is not a cluster scenario", other.name()),
        }
    }
}
