//! End to end: ingest under an open-loop load, the worker on
//! `postgres,amqp,http`, latency from ingest's receipt to the receiver.

use super::*;

/// Ingest and worker (`postgres,amqp,http`) under an open-loop load of
/// `rate` receipts/s: requests leave on schedule whether or not earlier
/// ones were answered, as providers send them.
pub(crate) async fn end_to_end(args: &Args, rate: f64, order: &str, receiver: &BenchReceiver) -> Result<()> {
    let database = TestDatabase::create().await;
    let result = end_to_end_run(args, rate, order, receiver, &database.url).await;
    database.drop_database().await;
    result
}

pub(crate) async fn end_to_end_run(
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
