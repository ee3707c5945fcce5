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
//! One job per file: `main.rs` (the run and its clean-up), `args.rs`
//! (the command line and the scenario kinds), `profile.rs` (load and
//! fault sizes, the clock), `leftovers.rs` (what the run leaves in the
//! broker, deleting it), `cluster.rs` (the service as child processes behind nginx),
//! `rabbit.rs` (the machine's broker: stop, start, alarms, restore),
//! `sink.rs` (the webhook receiver), `provider.rs` (the load and the
//! provider's retries), `scenario.rs` (one fault under load), `report.rs`
//! (reconciliation, the table and the rules that judge it),
//! `replicated.rs` (the 3-node cluster's faults), `nodes.rs` (the
//! cluster's nodes, queue leaders and connections via deploy/cluster.sh),
//! `shard_kill.rs` (the sharded cluster's leader loss, judged per shard).

use anyhow::{Context, Result, anyhow, bail};
use args::{Args, ScenarioKind};
use clap::{Parser, ValueEnum};
use dlr_shared::amqp::Topology;
use dlr_tests::{TestDatabase, unique_topology};
use leftovers::{cleanup_broker, parked_summary};
use profile::{Clock, Profile};
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
    let cleaned = cleanup_broker(&run_id, &cluster.topology, &cluster.events_exchange, args.keep).await;
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

mod args;

mod profile;

mod cluster;

mod rabbit;

mod sink;

mod provider;

mod scenario;

mod report;

mod replicated;

mod nodes;

mod shard_kill;

mod leftovers;
