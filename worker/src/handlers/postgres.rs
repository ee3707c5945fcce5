//! The postgres handler: a status table and an event history.
//!
//! The precedence rule lives in the upsert's `WHERE`, not in Rust: two
//! workers racing on the same message are serialised by the row lock, and
//! whichever commits second is checked against what the first wrote, so a
//! late intermediate status can never regress a final one.

use async_trait::async_trait;
use dlr_shared::ReceiptEvent;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

use super::{Handler, HandlerError, HandlerKind};

/// Writes events to PostgreSQL.
pub struct PostgresHandler {
    pool: PgPool,
}

/// Embedded migrations under `worker/migrations`, applied at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl PostgresHandler {
    /// Connects and applies the migrations. Called at start-up, so a wrong
    /// `DATABASE_URL` or a failing migration stops the worker with a clear
    /// error instead of parking every event.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

/// History insert and current-status upsert in one statement (one round
/// trip, one implicit transaction). The history insert is a no-op for a
/// replayed event (same id). The new event becomes the current status when:
/// - the stored status is pending and the new one is final (progress), or
/// - both are pending and the new one is not older (a later intermediate step), or
/// - the stored status is Vonage's ambiguous `unknown` (mapped to failed) and
///   the new one is delivered (reference J1).
///
/// Otherwise the first final status stays (J6); the history keeps the rest.
const RECORD_EVENT: &str = "
WITH history AS (
    INSERT INTO receipt_events
        (event_id, provider, message_id, outcome, status, error_code, client_ref, provider_timestamp, received_at, event)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (event_id) DO NOTHING
)
INSERT INTO message_status AS current
    (provider, message_id, outcome, status, error_code, client_ref, event_id, provider_timestamp, received_at)
VALUES ($2, $3, $4, $5, $6, $7, $1, $8, $9)
ON CONFLICT (provider, message_id) DO UPDATE SET
    outcome = EXCLUDED.outcome,
    status = EXCLUDED.status,
    error_code = EXCLUDED.error_code,
    client_ref = COALESCE(EXCLUDED.client_ref, current.client_ref),
    event_id = EXCLUDED.event_id,
    provider_timestamp = EXCLUDED.provider_timestamp,
    received_at = EXCLUDED.received_at,
    updated_at = now()
WHERE current.event_id <> EXCLUDED.event_id AND (
       (current.outcome = 'pending' AND EXCLUDED.outcome <> 'pending')
    OR (current.outcome = 'pending' AND EXCLUDED.outcome = 'pending'
        AND COALESCE(EXCLUDED.provider_timestamp, EXCLUDED.received_at)
            >= COALESCE(current.provider_timestamp, current.received_at))
    OR (current.outcome = 'failed' AND lower(current.status) = 'unknown' AND EXCLUDED.outcome = 'delivered')
)";

/// Connection problems and timeouts may pass; anything the database
/// refuses about the data itself will not.
fn classify(error: sqlx::Error) -> HandlerError {
    match &error {
        sqlx::Error::Database(db) if db.is_check_violation() || db.is_foreign_key_violation() => {
            HandlerError::Permanent(error.to_string())
        }
        sqlx::Error::Encode(_) | sqlx::Error::TypeNotFound { .. } | sqlx::Error::ColumnNotFound(_) => {
            HandlerError::Permanent(error.to_string())
        }
        _ => HandlerError::Transient(error.to_string()),
    }
}

#[async_trait]
impl Handler for PostgresHandler {
    fn kind(&self) -> HandlerKind {
        HandlerKind::Postgres
    }

    async fn handle(&self, event: &ReceiptEvent) -> Result<(), HandlerError> {
        let error_code = event.error.as_ref().map(|e| e.code.as_str());
        let event_json = serde_json::to_value(event).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        sqlx::query(RECORD_EVENT)
            .bind(event.event_id.as_str())
            .bind(event.provider.as_str())
            .bind(event.message_id.as_str())
            .bind(event.outcome.as_str())
            .bind(&event.status)
            .bind(error_code)
            .bind(event.client_ref.as_deref())
            .bind(event.provider_timestamp)
            .bind(event.received_at)
            .bind(&event_json)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(classify)
    }
}
