//! Latency of a 100-receipt Infobip batch through ingest, against the
//! tightest provider timeout (Telnyx: 2 s).
//!
//! Runs ingest in-process (the same `Application` as the binary) against
//! the local RabbitMQ on a throw-away topology, sends `--requests` batches
//! one after another (a provider delivers a bucket at a time) and prints
//! p50/p99/max of the whole HTTP request, plus a single Telnyx-sized
//! receipt for comparison. Build it in release: timings of a debug build
//! say nothing about production.

use anyhow::{Context, Result};
use clap::Parser;
use dlr_ingest::signature::basic;
use dlr_tests::{TestBroker, amqp_url, ingest_config, percentile, spawn_ingest, unique_topology};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "p50/p99 latency of 100-receipt batches through ingest")]
struct Args {
    /// Batches to send (one at a time).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Reports per batch (Infobip's default maxBucketSize is 100).
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

fn report(i: usize) -> Value {
    dlr_tests::samples::infobip_report(&format!("bench-{i:08}"), 0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let topology = unique_topology();
    let mut config = ingest_config(&topology, &amqp_url());
    config.providers.infobip.basic_auth = Some("bench:bench".into());
    let ingest = spawn_ingest(config).await;
    anyhow::ensure!(ingest.wait_ready(Duration::from_secs(10)).await, "ingest not ready (RabbitMQ running?)");
    let auth = basic::header_value("bench:bench");
    let url = format!("{}/dlr/infobip", ingest.base_url);

    let measure = async |batch: usize, rounds: usize| -> Result<Vec<f64>> {
        let mut times = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let reports: Vec<Value> = (0..batch).map(|i| report(round * batch + i)).collect();
            let body = serde_json::to_vec(&json!({ "results": reports }))?;
            let started = Instant::now();
            let response = ingest
                .client
                .post(&url)
                .header("content-type", "application/json")
                .header("authorization", &auth)
                .body(body)
                .send()
                .await?;
            let status = response.status();
            response.bytes().await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(status.is_success(), "batch {round} answered {status}");
        }
        times.sort_by(f64::total_cmp);
        Ok(times)
    };

    // Warm-up: connections, channel, allocator.
    measure(args.batch, 10).await.context("warm-up")?;
    let batches = measure(args.batch, args.requests).await?;
    let singles = measure(1, args.requests).await?;
    let line = |name: &str, t: &[f64]| {
        println!(
            "{name}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} requests ({:.1}% of Telnyx's 2 s at p99)",
            percentile(t, 0.5),
            percentile(t, 0.99),
            percentile(t, 1.0),
            t.len(),
            percentile(t, 0.99) / 20.0
        )
    };
    line(&format!("{}-receipt batch", args.batch), &batches);
    line("1-receipt request", &singles);

    ingest.stop().await;
    TestBroker::connect().await.cleanup(&topology, &[], &[]).await;
    Ok(())
}
