//! Ingest under load: form POSTs of the sample receipt at fixed concurrency
//! against the release binary, with its peak RSS and CPU.

use super::*;

/// Broker publish ceilings and ingest under load, in rounds; returns
/// ingest's median rate.
pub(crate) async fn ingest_part(args: &Args) -> Result<f64> {
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
    let variants: Vec<bool> = args.ingest_tracing.split(',').map(|v| v.trim() == "on").collect();
    let mut traced: Vec<IngestResult> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let ceiling = publish_ceiling(args.messages, 1000, 1, Shape::Plain, 1).await?;
        let receipt_ceiling = publish_ceiling(args.messages, 1000, 1, Shape::Receipt, 1).await?;
        // The same messages with only as many confirms outstanding as the
        // load has receipts in flight: what the broker itself does at
        // ingest's batch sizes, with no HTTP in the way.
        let same_in_flight = publish_ceiling(args.messages, args.concurrency, 1, Shape::Receipt, 1).await?;
        // Export on, alternated with the plain run within the round.
        for _ in variants.iter().filter(|on| **on) {
            let ingest = ingest_load(args, true, 1).await?;
            println!("round {round}: ingest with trace export {}", ingest.describe(args.concurrency));
            traced.push(ingest);
        }
        if !variants.contains(&false) {
            continue;
        }
        let ingest = ingest_load(args, false, 1).await?;
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
    if !traced.is_empty() {
        let traced_rate = median(&mut traced.iter().map(|r| r.rate).collect::<Vec<_>>());
        let p50 = median(&mut traced.iter().map(|r| r.p50_ms).collect::<Vec<_>>());
        let p99 = median(&mut traced.iter().map(|r| r.p99_ms).collect::<Vec<_>>());
        let dropped: f64 = traced.iter().map(|r| r.spans_dropped).sum();
        let rss = traced.iter().map(|r| r.peak_rss_mb).fold(0.0, f64::max);
        println!(
            "ingest with trace export, median: {traced_rate:.0} receipts/s, p50 {p50:.1} ms, p99 {p99:.1} ms, \
             peak RSS {rss:.1} MB, spans dropped {dropped:.0}"
        );
        if rates.is_empty() {
            return Ok(traced_rate);
        }
        let plain_rate = median(&mut rates.clone());
        println!(
            "trace export costs ingest {:.1}% of its receipts/s (medians of the same rounds)",
            100.0 * (1.0 - traced_rate / plain_rate)
        );
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

pub(crate) struct IngestResult {
    /// Receipts answered 200.
    pub(crate) accepted: usize,
    pub(crate) rate: f64,
    p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: usize,
    pub(crate) peak_rss_mb: f64,
    /// `dlr_trace_spans_dropped_total` at the end of the run.
    spans_dropped: f64,
}

impl IngestResult {
    fn describe(&self, connections: usize) -> String {
        format!(
            "{:.0} receipts/s at {connections} connections, p50 {:.1} ms, p99 {:.1} ms, errors {}, peak RSS {:.1} MB, spans dropped {:.0}",
            self.rate, self.p50_ms, self.p99_ms, self.errors, self.peak_rss_mb, self.spans_dropped
        )
    }
}

/// `shards`: ingest's `AMQP_RECEIPT_SHARDS`.
pub(crate) async fn ingest_load(args: &Args, tracing: bool, shards: u16) -> Result<IngestResult> {
    ingest_load_prepared(args, tracing, shards, async |_: &Topology| Ok(())).await
}

/// [`ingest_load`], with `ready` run once ingest is ready (it has declared
/// its topology) and before the load starts (the shard sweep moves the
/// shards' leaders there and samples the broker's CPU).
pub(crate) async fn ingest_load_prepared(
    args: &Args,
    tracing: bool,
    shards: u16,
    ready: impl AsyncFnOnce(&Topology) -> Result<()>,
) -> Result<IngestResult> {
    let topology = Topology { receipt_shards: shards, ..unique_topology() };
    let port = free_port()?;
    let mut envs = topology_env(&topology);
    envs.push(("AMQP_RECEIPT_SHARDS", shards.to_string()));
    envs.push(("INGEST_ADDR", format!("127.0.0.1:{port}")));
    envs.push(("RUST_LOG", "warn".to_owned()));
    // The load is unsigned Vonage receipts.
    envs.push(("VONAGE_SIGNATURE_MODE", "off".to_owned()));
    if tracing {
        envs.extend(tracing_env());
    }
    let child = spawn(args.bin_dir.join("ingest"), &envs)?;
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&reqwest::Client::new(), &format!("{base}/readyz")).await?;
    ready(&topology).await?;

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
    let metrics = reqwest::get(format!("{base}/metrics")).await?.text().await?;
    let spans_dropped = metric_value(&metrics, "dlr_trace_spans_dropped_total", &[]);
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
        spans_dropped,
    };
    TestBroker::connect().await.cleanup(&topology, &[], &[]).await;
    Ok(result)
}
