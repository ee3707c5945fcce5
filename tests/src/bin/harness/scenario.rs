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
    if kind == ScenarioKind::ShardLeaderKill {
        shard_kill::prepare(context, cluster).await?;
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
    let long_fault = matches!(
        kind,
        ScenarioKind::ConnectedNodeKill | ScenarioKind::NodesRollingRestart | ScenarioKind::MajorityLoss
    );
    let burst_max = if long_fault { profile.long_fault_burst_max } else { profile.burst_max };
    load.start_burst(profile.burst_concurrency, burst_max);
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

    // Every message id of the scenario is the tag followed by its number.
    let prefix = tag.clone();
    let acknowledged: HashSet<String> = recorded
        .receipts
        .iter()
        .filter(|r| !r.bad && r.outcome == provider::Final::Accepted)
        .map(|r| r.message_id.clone())
        .collect();
    let caught_up_ms =
        wait_for_sinks(pool, sink, &prefix, &acknowledged, profile.settle).await?.then(|| clock.ms());
    let downstream =
        if kind == ScenarioKind::DownstreamOutage { sink.outage(inject_ms, healed_ms) } else { (None, None) };
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
        ScenarioKind::ShardLeaderKill => shard_kill::inject(context, cluster, sink).await,
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
