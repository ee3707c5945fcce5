//! The status store's background jobs: the never-final sweep
//! ([`crate::never_final`]) and the history retention ([`crate::retention`]).
//!
//! Every worker runs this task, but a round only does anything while it
//! holds a PostgreSQL advisory lock
//! (https://www.postgresql.org/docs/15/explicit-locking.html#ADVISORY-LOCKS),
//! taken without waiting: with N workers one sweeps, the others skip the
//! round. The lock is held by the session, so a worker that dies mid-round
//! releases it with its connection.

use chrono::Utc;
use dlr_shared::amqp::{Publisher, Topology};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::analytics::ReceiptAnalytics;
use crate::never_final::{self, NeverFinalWindows};
use crate::retention;

/// The advisory lock's key: any constant the application owns; this one is
/// "dlr-swp" in ASCII.
pub const SWEEP_LOCK_KEY: i64 = 0x0064_6c72_2d73_7770;

/// What the maintenance task is told.
#[derive(Debug, Clone)]
pub struct MaintenanceSettings {
    /// Time between rounds (the first one runs at start-up).
    pub interval: Duration,
    /// Pending rows per sweep batch.
    pub batch_size: u32,
    /// Most sweep batches per round.
    pub max_batches: u32,
    /// How long a message may stay pending, per provider.
    pub windows: NeverFinalWindows,
    /// How long history and final statuses are kept.
    pub retention: Duration,
}

/// What the task needs to publish synthetic receipts.
pub struct Intake {
    /// Confirmed, mandatory publishes.
    pub publisher: Arc<Publisher>,
    /// The intake exchange.
    pub topology: Arc<Topology>,
}

/// Starts the task when the worker has a status store (a `postgres`
/// route), and says at start-up when it does not.
pub fn start_if_stored(
    pool: Option<PgPool>,
    intake: Intake,
    settings: MaintenanceSettings,
    analytics: ReceiptAnalytics,
    shutdown: CancellationToken,
) {
    match pool {
        Some(pool) => {
            tracing::info!(
                interval = ?settings.interval,
                retention_days = settings.retention.as_secs() / 86_400,
                "status store maintenance on: never-final sweep and history retention"
            );
            spawn(pool, intake, settings, analytics, shutdown);
        }
        None => {
            tracing::info!("no postgres route: no never-final sweep and no history retention in this worker")
        }
    }
}

/// Starts the task; it ends when `shutdown` is cancelled.
pub fn spawn(
    pool: PgPool,
    intake: Intake,
    settings: MaintenanceSettings,
    analytics: ReceiptAnalytics,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = round(&pool, &intake, &settings, &analytics) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(settings.interval) => {}
            }
        }
    })
}

/// One round, if this worker gets the lock.
pub async fn round(
    pool: &PgPool,
    intake: &Intake,
    settings: &MaintenanceSettings,
    analytics: &ReceiptAnalytics,
) {
    let mut connection = match pool.acquire().await {
        Ok(connection) => connection,
        Err(error) => {
            tracing::warn!(%error, "maintenance: no database connection; next round later");
            return;
        }
    };
    match try_lock(&mut connection).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!("maintenance: another worker holds the sweep lock");
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "maintenance: taking the sweep lock failed");
            return;
        }
    }
    match retention::run(&mut connection, Utc::now(), settings.retention).await {
        Ok(report) if report != retention::RetentionReport::default() => {
            tracing::info!(created = ?report.created, dropped = ?report.dropped, status_rows_deleted = report.status_rows_deleted, "history retention");
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "history retention failed; next round later"),
    }
    let swept = never_final::sweep(
        &mut connection,
        &intake.publisher,
        &intake.topology,
        &settings.windows,
        settings.batch_size,
        settings.max_batches,
        analytics,
    )
    .await;
    match swept {
        Ok(0) => {}
        Ok(published) => tracing::info!(published, "never-final sweep published synthetic receipts"),
        Err(error) => tracing::warn!(%error, "never-final sweep stopped; it resumes next round"),
    }
    unlock(connection).await;
}

async fn try_lock(connection: &mut PoolConnection<Postgres>) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(SWEEP_LOCK_KEY)
        .fetch_one(&mut **connection)
        .await
}

/// Releases the lock; a connection where that fails is closed instead of
/// going back to the pool, which releases it as well.
async fn unlock(mut connection: PoolConnection<Postgres>) {
    let released: Result<bool, _> = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(SWEEP_LOCK_KEY)
        .fetch_one(&mut *connection)
        .await;
    if !matches!(released, Ok(true)) {
        let _ = connection.close().await;
    }
}
