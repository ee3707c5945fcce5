//! `worker` binary: parse the command line, then consume or replay.

use anyhow::Context;
use clap::Parser;
use dlr_shared::amqp::Publisher;
use dlr_worker::Application;
use dlr_worker::config::{Cli, Command};
use dlr_worker::metrics::WorkerMetrics;
use dlr_worker::parking;
use dlr_worker::retry::RetryPolicy;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.config;
    dlr_shared::telemetry::init(&config.log).map_err(anyhow::Error::msg).context("setting up logging")?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let app = Application::build(config).await.context("starting the worker")?;
            tracing::info!(addr = %app.local_addr().context("reading the probe address")?, "worker probes listening");
            app.run_until_stopped(dlr_shared::shutdown::on_signal()).await.context("running the worker")?;
        }
        Command::ReplayParked(args) => {
            let (channel, publisher, stop) = connect(&config).await?;
            let topology = &config.broker.topology;
            let report = parking::replay_parked(&channel, &publisher, topology, args.limit, &args.filters)
                .await
                .context("replaying parked messages")?;
            println!("examined {}, replayed {}, kept {}", report.examined, report.replayed, report.kept);
            stop.cancel();
        }
        Command::ReplayQuarantine(args) => {
            let (channel, _publisher, stop) = connect(&config).await?;
            let report =
                parking::replay_quarantine(&channel, &config.broker.topology, &args.ingest_url, args.limit)
                    .await
                    .context("replaying quarantined requests")?;
            println!(
                "examined {}, accepted by ingest {}, kept {}",
                report.examined, report.replayed, report.kept
            );
            stop.cancel();
        }
    }
    Ok(())
}

/// A connection for the one-shot subcommands: fail after 10 s rather than
/// wait forever for a broker that is not there.
async fn connect(
    config: &dlr_worker::Config,
) -> anyhow::Result<(lapin::Channel, Arc<Publisher>, CancellationToken)> {
    let metrics = WorkerMetrics::new().context("metrics")?;
    let retry = RetryPolicy::new(config.max_attempts, config.retry_initial_delay, config.retry_max_delay);
    let addresses = config.broker.addresses().context("invalid configuration")?;
    let (broker, _task, stop) = dlr_worker::startup::start_broker(
        config,
        addresses,
        Arc::new(config.broker.topology.clone()),
        retry.delays(),
        metrics,
    );
    let conn =
        tokio::time::timeout(Duration::from_secs(10), broker.wait_connected(&CancellationToken::new()))
            .await
            .ok()
            .flatten()
            .context("cannot reach the broker (AMQP_URL)")?;
    let channel = conn.create_channel().await.context("opening a channel")?;
    Ok((channel, Arc::new(Publisher::new(broker, Duration::from_secs(10))), stop))
}
