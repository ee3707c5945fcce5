//! The worker draining a pre-filled queue on one route, in rounds, with the
//! CPU each process spent and PostgreSQL's commits per event.

use super::*;

/// The worker's prefetch in these runs: `--worker-env WORKER_PREFETCH=` or
/// the worker's default.
pub(crate) fn worker_prefetch(args: &Args) -> Result<u16> {
    match args.worker_env.iter().rev().find(|(key, _)| key == "WORKER_PREFETCH") {
        Some((_, value)) => {
            value.parse().with_context(|| format!("WORKER_PREFETCH={value} is not a prefetch count"))
        }
        None => Ok(dlr_worker::config::DEFAULT_PREFETCH),
    }
}

/// One drain of a pre-filled queue.
pub(crate) struct Drain {
    pub(crate) rate: f64,
    pub(crate) rss_mb: f64,
    pub(crate) cpu: String,
    /// PostgreSQL transactions committed per event (postgres routes).
    pub(crate) commits_per_event: Option<f64>,
    /// Frames the worker sent to settle deliveries, per event: how well
    /// its acks were coalesced (1.0 = one ack per delivery).
    pub(crate) settle_frames_per_event: Option<f64>,
    /// `dlr_trace_spans_dropped_total` at the end (routes with `+otel`).
    pub(crate) spans_dropped: f64,
}

impl Drain {
    pub(crate) fn describe(&self) -> String {
        let commits = self.commits_per_event.map(|c| format!(", {c:.3} commits/event")).unwrap_or_default();
        let frames =
            self.settle_frames_per_event.map(|f| format!(", {f:.3} ack frames/event")).unwrap_or_default();
        let dropped = if self.spans_dropped > 0.0 {
            format!(", {:.0} spans dropped", self.spans_dropped)
        } else {
            String::new()
        };
        format!(
            "{:.0} events/s, peak RSS {:.1} MB, {}{commits}{frames}{dropped}",
            self.rate, self.rss_mb, self.cpu
        )
    }
}

/// Transactions committed in the database of `url` so far.
pub(crate) async fn commits(url: Option<&str>) -> Option<i64> {
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
pub(crate) fn worker_envs(
    args: &Args,
    topology: &Topology,
    port: u16,
    route: &str,
    database_url: Option<&str>,
    receiver: &BenchReceiver,
) -> Vec<(String, String)> {
    let (route, tracing) = match route.strip_suffix("+otel") {
        Some(route) => (route, tracing_env()),
        None => (route, Vec::new()),
    };
    let (route, order) = route.split_once('@').unwrap_or((route, "sequential"));
    let mut envs: Vec<(String, String)> =
        topology_env(topology).into_iter().chain(tracing).map(|(k, v)| (k.to_owned(), v)).collect();
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
pub(crate) async fn bind_capture(events_exchange: &str) -> Result<(Connection, String)> {
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
pub(crate) fn retry_queues(topology: &Topology) -> Vec<String> {
    dlr_worker::retry::RetryPolicy::new(8, Duration::from_secs(1), Duration::from_secs(600))
        .delays()
        .into_iter()
        .map(|d| topology.retry_queue(d))
        .collect()
}

/// Events whose handlers have all succeeded (the count of the worker's
/// end-to-end histogram, observed once per finished event whatever the
/// handler order).
pub(crate) async fn handled(client: &reqwest::Client, metrics_url: &str) -> f64 {
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
pub(crate) async fn settle_frames(client: &reqwest::Client, metrics_url: &str) -> Option<f64> {
    tokio::time::sleep(dlr_worker::acks::HOLD * 2).await;
    let metrics = client.get(metrics_url).send().await.ok()?.text().await.ok()?;
    metrics
        .contains("dlr_worker_settle_frames_total")
        .then(|| dlr_tests::metric_value(&metrics, "dlr_worker_settle_frames_total", &[]))
}

/// The share of finished events whose end-to-end latency (ingest's receipt
/// to the last handler, the worker's own histogram) was at most `seconds`,
/// which must be a bucket bound.
pub(crate) fn share_within(metrics: &str, seconds: &str) -> f64 {
    let name = "dlr_worker_end_to_end_latency_seconds";
    let within = dlr_tests::metric_value(metrics, &format!("{name}_bucket"), &[("le", seconds)]);
    let all = dlr_tests::metric_value(metrics, &format!("{name}_count"), &[]);
    if all > 0.0 { within / all } else { 0.0 }
}

/// Drains a pre-filled queue on `route`, with a fresh database when the
/// route writes to PostgreSQL.
pub(crate) async fn drain_route(args: &Args, route: &str, receiver: &BenchReceiver) -> Result<Drain> {
    let database = if route.contains("postgres") { Some(TestDatabase::create().await) } else { None };
    let result = worker_drain(args, route, database.as_ref().map(|d| d.url.as_str()), receiver).await;
    if let Some(database) = database {
        database.drop_database().await;
    }
    result
}

/// Pre-fills the receipts queue, starts the worker and times the drain from
/// the first handled event to the last (start-up and migrations excluded).
pub(crate) async fn worker_drain(
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
        let spans_dropped = match client.get(&metrics_url).send().await {
            Ok(response) => {
                metric_value(&response.text().await.unwrap_or_default(), "dlr_trace_spans_dropped_total", &[])
            }
            Err(_) => 0.0,
        };
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
        Ok(Drain { rate, rss_mb, cpu, commits_per_event, settle_frames_per_event, spans_dropped })
    }
    .await;
    let mut extra_queues = retry_queues(&topology);
    extra_queues.push(capture);
    broker.cleanup(&topology, &extra_queues, &[events_exchange]).await;
    let _ = capture_conn.close(200, "bench done".into()).await;
    outcome
}
