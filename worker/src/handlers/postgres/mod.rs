//! The postgres handler: a status table and an event history.
//!
//! The precedence rule lives in the upsert's `WHERE`, not in Rust: two
//! workers racing on the same message are serialised by the row lock, and
//! whichever commits second is checked against what the first wrote, so a
//! late intermediate status can never regress a final one.
//!
//! Group commit: one statement and one commit per event costs a round trip
//! and a WAL flush each, which capped the handler at a few thousand events
//! per second. Events in flight at the same time (up to the prefetch) are
//! therefore handed to a batcher task that writes them together with
//! set-based statements (`UNNEST` arrays) in one transaction and answers
//! each delivery only after that transaction committed.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dlr_shared::ReceiptEvent;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Failure, Handler, HandlerError, HandlerKind};

mod batcher;
mod classify;
mod store;

use batcher::{Pending, run_batcher};
use store::{EventRow, Store};

/// How the handler talks to PostgreSQL; see the worker configuration table
/// in the README for what each setting costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// Connections in the pool; also how many batches may be written at once.
    pub max_connections: u32,
    /// Most events per transaction.
    pub batch_size: usize,
    /// How long a batch waits for more events after its first one. Zero
    /// writes every event on its own, as before group commit.
    pub linger: Duration,
    /// Server-side limit per statement (`statement_timeout`), so that a
    /// stuck lock or a black-holed database fails a write as transient
    /// instead of holding the delivery until the broker's consumer timeout.
    pub statement_timeout: Duration,
}

impl From<&crate::Config> for PostgresSettings {
    fn from(config: &crate::Config) -> Self {
        Self {
            max_connections: config.database_max_connections,
            batch_size: usize::from(config.postgres_batch_size),
            linger: Duration::from_millis(config.postgres_linger_ms),
            statement_timeout: config.postgres_statement_timeout,
        }
    }
}

/// Writes events to PostgreSQL.
pub struct PostgresHandler {
    store: Arc<Store>,
    /// Present when group commit is on (batch size above 1 and a linger).
    batcher: Option<mpsc::Sender<Pending>>,
}

/// Embedded migrations under `worker/migrations`, applied at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl PostgresHandler {
    /// Connects and applies the migrations. Called at start-up, so a wrong
    /// `DATABASE_URL` or a failing migration stops the worker with a clear
    /// error instead of parking every event. Starts the batcher task when
    /// group commit is on, so it must be called inside a Tokio runtime.
    pub async fn connect(url: &str, settings: &PostgresSettings) -> Result<Self, sqlx::Error> {
        let statement_timeout_ms = settings.statement_timeout.as_millis().max(1).to_string();
        let options =
            PgConnectOptions::from_str(url)?.options([("statement_timeout", statement_timeout_ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let store = Arc::new(Store { pool, statement_timeout: settings.statement_timeout });
        let batcher = (settings.batch_size > 1 && !settings.linger.is_zero()).then(|| {
            // Room for a whole prefetch window of every batch in flight; a
            // full channel only delays senders, it never drops an event.
            let (sender, receiver) = mpsc::channel(settings.batch_size * 4);
            let flushes = Arc::new(Semaphore::new(settings.max_connections.max(1) as usize));
            tokio::spawn(run_batcher(store.clone(), receiver, settings.batch_size, settings.linger, flushes));
            sender
        });
        Ok(Self { store, batcher })
    }

    /// The handler's pool, shared with the status store's maintenance
    /// ([`crate::maintenance`]).
    pub fn pool(&self) -> PgPool {
        self.store.pool.clone()
    }

    /// Writes `events` as one batch, in this order, exactly as the batcher
    /// writes what it collected, and returns each event's result. Public so
    /// that tests and benchmarks can drive batches deterministically.
    pub async fn record_batch(&self, events: &[ReceiptEvent]) -> Vec<Result<(), HandlerError>> {
        let rows: Result<Vec<EventRow>, HandlerError> = events.iter().map(EventRow::new).collect();
        match rows {
            Ok(rows) => self.store.record_batch(&rows).await,
            // Only serialisation can fail here, which is never expected:
            // write them one at a time so each gets its own answer.
            Err(_) => {
                let mut results = Vec::with_capacity(events.len());
                for event in events {
                    results.push(match EventRow::new(event) {
                        Ok(row) => self.store.record_one(&row).await,
                        Err(error) => Err(error),
                    });
                }
                results
            }
        }
    }
}

#[async_trait]
impl Handler for PostgresHandler {
    fn kind(&self) -> HandlerKind {
        HandlerKind::Postgres
    }

    async fn handle(&self, event: &ReceiptEvent) -> Result<(), HandlerError> {
        // Serialising here runs on the delivery's task, in parallel, and
        // keeps the batcher's single task for the database work.
        let row = EventRow::new(event)?;
        let Some(batcher) = &self.batcher else {
            return self.store.record_one(&row).await;
        };
        let (reply, answer) = oneshot::channel();
        if batcher.send(Pending { row, reply }).await.is_err() {
            return Err(HandlerError::Transient(Failure::new("the postgres batcher has stopped")));
        }
        answer.await.unwrap_or_else(|_| {
            Err(HandlerError::Transient(Failure::new("the postgres batch was abandoned before it committed")))
        })
    }
}
