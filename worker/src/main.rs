//! `worker` binary: parse the command line, then consume or replay.
//!
//! Every error that stops the process is printed as one line starting with
//! `worker:`, so that next to ingest's output it is clear which one failed.

use anyhow::Context;
use dlr_shared::amqp::Publisher;
use dlr_worker::Application;
use dlr_worker::config::{Cli, Command, ParkedCommand};
use dlr_worker::metrics::WorkerMetrics;
use dlr_worker::{parked, replay};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every event allocates many small, short-lived objects on several threads
/// (the delivery's frames, the parsed event, the handlers' requests and
/// futures). With glibc's allocator, malloc, free and their consolidation
/// were about a quarter of the worker's CPU on `postgres,amqp,http` (perf);
/// mimalloc's thread-local free lists cost a fraction of that, as in ingest.
/// Measured against glibc on the same hour (README, "The worker's
/// allocator"): 9 % more events/s on that route, 11-14 % fewer on `log` and
/// `postgres` alone, about twice the resident memory (84 against 37 MB).
/// The three-handler route is the one deployments run, so it stays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // Shared options are global: `worker replay-parked --amqp-url ...` works
    // as well as `worker --amqp-url ... replay-parked`.
    let cli: Cli = dlr_shared::config::parse_or_exit("worker", true);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("worker: {}", dlr_shared::telemetry::error_chain(error.chain()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let telemetry = dlr_shared::telemetry::init(&cli.config.log, &cli.config.tracing, "dlr-worker")
        .context("setting up logging and tracing")?;
    let result = command(cli).await;
    telemetry.shutdown().await;
    result
}

async fn command(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let app = Application::build(config).await.context("starting the worker")?;
            tracing::info!(addr = %app.local_addr().context("reading the probe address")?, "worker probes listening");
            app.run_until_stopped(dlr_shared::shutdown::on_signal()).await.context("running the worker")?;
        }
        Command::ReplayParked(args) => {
            let broker = OneShotBroker::start(&config)?;
            let result = async {
                let (channel, publisher) = broker.connect().await?;
                let topology = &config.broker.topology;
                replay::replay_parked_selected(&channel, &publisher, topology, args.limit, &args.selection)
                    .await
                    .context("replaying parked messages")
            }
            .await;
            broker.stop().await;
            let report = result?;
            println!("examined {}, replayed {}, kept {}", report.examined, report.replayed, report.kept);
        }
        Command::Parked(ParkedCommand::List(args)) => {
            let broker = OneShotBroker::start(&config)?;
            let result = async {
                let (channel, _publisher) = broker.connect().await?;
                parked::list(&channel, &config.broker.topology, &args.selection, args.limit, |entry| {
                    println!("{}", entry.line())
                })
                .await
                .context("listing parked messages")
            }
            .await;
            broker.stop().await;
            let report = result?;
            eprintln!("examined {}, listed {}", report.examined, report.listed);
            if report.parked_meanwhile > 0 {
                eprintln!(
                    "{} messages were parked while listing; they are now ahead of the listed ones",
                    report.parked_meanwhile
                );
            }
        }
        Command::ReplayQuarantine(args) => {
            let broker = OneShotBroker::start(&config)?;
            let result = async {
                let (channel, _publisher) = broker.connect().await?;
                replay::replay_quarantine(&channel, &config.broker.topology, &args.ingest_url, args.limit)
                    .await
                    .context("replaying quarantined requests")
            }
            .await;
            broker.stop().await;
            let report = result?;
            println!(
                "examined {}, accepted by ingest {}, kept {}",
                report.examined, report.replayed, report.kept
            );
        }
        Command::Report(args) => {
            use secrecy::ExposeSecret;
            let url = config.database_url.as_ref().context("DATABASE_URL is required for the report")?;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url.expose_secret())
                .await
                .context("connecting to the status store (DATABASE_URL)")?;
            let rows = dlr_worker::report::read(&pool, args.since, &args.by).await;
            pool.close().await;
            let rows =
                rows.context("reading the status store (has a worker with the postgres route migrated it?)")?;
            print!("{}", dlr_worker::report::render(&rows, &args.by));
        }
    }
    Ok(())
}

/// The broker connection of a one-shot subcommand. It must be stopped (and
/// its supervisor awaited) before the runtime ends, on success and on error
/// alike: a runtime dropped under a live lapin connection panics lapin's
/// I/O thread ("task was cancelled") and skips the clean close.
struct OneShotBroker {
    broker: dlr_shared::amqp::BrokerConnection,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl OneShotBroker {
    fn start(config: &dlr_worker::Config) -> anyhow::Result<Self> {
        let metrics = WorkerMetrics::new().context("metrics")?;
        let retry = config.retry_policy();
        let addresses = config.broker.addresses().context("invalid configuration")?;
        let stop = CancellationToken::new();
        let (broker, task) = dlr_worker::startup::start_broker(
            config,
            addresses,
            Arc::new(config.broker.topology.clone()),
            retry.delays(),
            dlr_worker::startup::ConnectionPurpose::Publish,
            metrics.publisher_connected,
            stop.clone(),
        );
        Ok(Self { broker, task, stop })
    }

    /// A channel and a publisher; fails after 10 s rather than wait forever
    /// for a broker that is not there.
    async fn connect(&self) -> anyhow::Result<(lapin::Channel, Arc<Publisher>)> {
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            self.broker.wait_connected(&CancellationToken::new()),
        )
        .await
        .ok()
        .flatten()
        .context("cannot reach the broker within 10 s (AMQP_URL)")?;
        let channel = conn.create_channel().await.context("opening a channel")?;
        Ok((channel, Arc::new(Publisher::new(self.broker.clone(), Duration::from_secs(10)))))
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
