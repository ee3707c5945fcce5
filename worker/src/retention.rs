//! Bounded history: `receipt_events` keeps monthly partitions (UTC) and
//! loses whole months past the retention; `message_status` loses the rows
//! whose final status is older than the retention.
//!
//! Dropping a partition is a catalogue change, not a mass `DELETE`: no
//! bloat, no vacuum debt, no WAL of every row. The SQL lives in the
//! migration (`dlr_receipt_partitions_ensure` / `_drop`), so that it can be
//! run by hand and tested with any clock. Status rows cannot be
//! partitioned by time (the upsert finds a message by its key), so they go
//! in bounded batches by the index on `received_at`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::time::Duration;

/// Months of partitions created ahead of the current one, so that a
/// maintenance round that does not run for weeks (no lock, database down)
/// never leaves receipts without their month.
pub const MONTHS_AHEAD: i32 = 2;

/// Most status rows deleted per statement.
const STATUS_BATCH: i64 = 5_000;

/// Most status batches per round, so one round stays short.
const STATUS_BATCHES_PER_ROUND: u32 = 20;

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    /// Partitions created.
    pub created: Vec<String>,
    /// Partitions dropped.
    pub dropped: Vec<String>,
    /// Final status rows deleted.
    pub status_rows_deleted: u64,
}

/// Creates the partitions of `now`'s month and [`MONTHS_AHEAD`] after,
/// drops those entirely older than `now - retention`, and deletes final
/// status rows older than that.
pub async fn run(
    connection: &mut PgConnection,
    now: DateTime<Utc>,
    retention: Duration,
) -> Result<RetentionReport, sqlx::Error> {
    let cutoff = chrono::Duration::from_std(retention)
        .ok()
        .and_then(|retention| now.checked_sub_signed(retention))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let created: Vec<String> = sqlx::query_scalar("SELECT dlr_receipt_partitions_ensure($1, $2)")
        .bind(now)
        .bind(MONTHS_AHEAD)
        .fetch_all(&mut *connection)
        .await?;
    let dropped: Vec<String> = sqlx::query_scalar("SELECT dlr_receipt_partitions_drop($1)")
        .bind(cutoff)
        .fetch_all(&mut *connection)
        .await?;
    let mut status_rows_deleted = 0;
    for _ in 0..STATUS_BATCHES_PER_ROUND {
        let deleted = sqlx::query(
            "DELETE FROM message_status WHERE ctid IN (
                 SELECT ctid FROM message_status
                  WHERE received_at < $1 AND outcome <> 'pending' LIMIT $2)",
        )
        .bind(cutoff)
        .bind(STATUS_BATCH)
        .execute(&mut *connection)
        .await?
        .rows_affected();
        status_rows_deleted += deleted;
        if deleted < STATUS_BATCH as u64 {
            break;
        }
    }
    Ok(RetentionReport { created, dropped, status_rows_deleted })
}
