//! `ingest` binary: parse config, start logging, run until SIGTERM.
//!
//! Every error that stops the process is printed as one line starting with
//! `ingest:`, so that under `deploy/run.sh` (or any supervisor mixing the
//! output of both binaries) it is clear which one failed.

use anyhow::Context;
use dlr_ingest::{Application, Config};
use std::process::ExitCode;

/// Every request allocates a few dozen small, short-lived objects (fields,
/// the event, frames, futures) across threads; mimalloc's thread-local free
/// lists cost a fraction of glibc's arenas for that pattern.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = dlr_shared::config::parse_or_exit("ingest", false);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ingest: {}", dlr_shared::telemetry::error_chain(error.chain()));
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let telemetry = dlr_shared::telemetry::init(&config.log, &config.tracing, "dlr-ingest")
        .context("setting up logging and tracing")?;
    let result = serve(config).await;
    telemetry.shutdown().await;
    result
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await.context("starting ingest")?;
    tracing::info!(addr = %app.local_addr().context("reading the bound address")?, "ingest listening");
    let shutdown = dlr_shared::shutdown::on_signal();
    app.run_until_stopped(shutdown).await.context("serving")?;
    Ok(())
}
