//! `ingest` binary: parse config, start logging, run until SIGTERM.

use anyhow::Context;
use clap::Parser;
use dlr_ingest::{Application, Config};

/// Every request allocates a few dozen small, short-lived objects (fields,
/// the event, frames, futures) across threads; mimalloc's thread-local free
/// lists cost a fraction of glibc's arenas for that pattern.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    dlr_shared::telemetry::init(&config.log).map_err(anyhow::Error::msg).context("setting up logging")?;
    let app = Application::build(config).await.context("starting ingest")?;
    tracing::info!(addr = %app.local_addr().context("reading the bound address")?, "ingest listening");
    let shutdown = dlr_shared::shutdown::on_signal();
    app.run_until_stopped(shutdown).await.context("serving")?;
    Ok(())
}
