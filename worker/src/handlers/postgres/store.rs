//! The SQL: the statements (the precedence rule lives in the upsert's
//! `WHERE`), the rows they bind and the store that runs them within a
//! bound.

use super::classify::{failure_for_error, refused_for_its_data};
use super::*;

/// One event's columns, serialised once.
pub(super) struct EventRow {
    pub(super) event_id: String,
    pub(super) provider: &'static str,
    pub(super) message_id: String,
    pub(super) outcome: &'static str,
    pub(super) status: String,
    pub(super) error_code: Option<String>,
    pub(super) client_ref: Option<String>,
    pub(super) provider_timestamp: Option<DateTime<Utc>>,
    pub(super) received_at: DateTime<Utc>,
    pub(super) event_json: String,
    pub(super) country: Option<String>,
    pub(super) network: Option<String>,
    pub(super) synthetic: bool,
}

impl EventRow {
    pub(super) fn new(event: &ReceiptEvent) -> Result<Self, HandlerError> {
        Ok(Self {
            event_id: event.event_id.as_str().to_owned(),
            provider: event.provider.as_str(),
            message_id: event.message_id.as_str().to_owned(),
            outcome: event.outcome.as_str(),
            status: event.status.clone(),
            error_code: event.error.as_ref().map(|e| e.code.clone()),
            client_ref: event.client_ref.clone(),
            provider_timestamp: event.provider_timestamp,
            received_at: event.received_at,
            event_json: serde_json::to_string(event)
                .map_err(|e| HandlerError::permanent("serialising the event", e))?,
            country: event.destination.as_ref().and_then(|d| d.country.clone()),
            network: event
                .destination
                .as_ref()
                .and_then(|d| d.network.as_ref())
                .map(|n| format!("{}{}", n.mcc, n.mnc)),
            synthetic: event.synthetic,
        })
    }
}

/// The precedence rule, written once and used by the single-event and the
/// batch statements alike. The new event becomes the current status when:
/// - the stored status is pending and the new one is final (progress), or
/// - both are pending and the new one is further along: a higher rank in
///   its provider's lifecycle (`dlr_pending_rank`, see the migration), then
///   a later time, then the larger event id, so that the result does not
///   depend on the order in which events of the same rank and time arrive;
/// - the stored status is Vonage's ambiguous `unknown` (mapped to failed) and
///   the new one is delivered;
/// - the stored status is the never-final sweep's synthetic
///   `no_final_receipt` and the new one is a genuine final status: what the
///   provider says, however late, beats what we assumed.
///
/// Otherwise the first final status stays; the history keeps the rest.
/// `first_received_at` keeps the earliest receipt time the row has seen.
macro_rules! status_upsert {
    ($source:literal) => {
        concat!(
            "INSERT INTO message_status AS current
    (provider, message_id, outcome, status, error_code, client_ref, event_id, provider_timestamp, received_at,
     country, network, synthetic, first_received_at) ",
            $source,
            "
ON CONFLICT (provider, message_id) DO UPDATE SET
    outcome = EXCLUDED.outcome,
    status = EXCLUDED.status,
    error_code = EXCLUDED.error_code,
    client_ref = COALESCE(EXCLUDED.client_ref, current.client_ref),
    event_id = EXCLUDED.event_id,
    provider_timestamp = EXCLUDED.provider_timestamp,
    received_at = EXCLUDED.received_at,
    country = COALESCE(EXCLUDED.country, current.country),
    network = COALESCE(EXCLUDED.network, current.network),
    synthetic = EXCLUDED.synthetic,
    first_received_at = LEAST(COALESCE(current.first_received_at, current.received_at), EXCLUDED.received_at),
    updated_at = now()
WHERE current.event_id <> EXCLUDED.event_id AND (
       (current.outcome = 'pending' AND EXCLUDED.outcome <> 'pending')
    OR (current.outcome = 'pending' AND EXCLUDED.outcome = 'pending'
        AND (dlr_pending_rank(EXCLUDED.provider, EXCLUDED.status),
             COALESCE(EXCLUDED.provider_timestamp, EXCLUDED.received_at),
             EXCLUDED.event_id)
          > (dlr_pending_rank(current.provider, current.status),
             COALESCE(current.provider_timestamp, current.received_at),
             current.event_id))
    OR (current.outcome = 'failed' AND lower(current.status) = 'unknown' AND EXCLUDED.outcome = 'delivered')
    OR (current.synthetic AND NOT EXCLUDED.synthetic AND EXCLUDED.outcome <> 'pending')
)"
        )
    };
}

/// History insert and current-status upsert of one event in one statement
/// (one round trip, one implicit transaction). The history insert is a
/// no-op for an event id already stored: a replay (same id and time, which
/// the primary key catches) or a provider's retry of the receipt (same id,
/// later time; the history is partitioned by time, so only the `NOT
/// EXISTS` across partitions catches it).
///
/// The `NOT EXISTS` looks within 7 days of the event's time only (here and
/// in [`RECORD_BATCH`]): a provider retries within hours, and either copy
/// may reach the store first (competing workers). Bounded by time, the
/// lookup is pruned at run time to the one or two monthly partitions the
/// window overlaps; unbounded, it probed every partition (all retained
/// months, the months created ahead, the default one) for every event, and
/// its cost grew with the history: measured, 55 µs of PostgreSQL CPU per
/// event on a new database rising to 77 µs at 180 000 stored events, against
/// a steady 52 µs bounded (`docs/BENCHMARKS.md`). A copy arriving more than
/// 7 days from the first is kept twice in the history; the current status
/// is not affected (the upsert ignores the event id it already holds).
pub(super) const RECORD_EVENT: &str = concat!(
    "WITH history AS (
    INSERT INTO receipt_events
        (event_id, provider, message_id, outcome, status, error_code, client_ref, provider_timestamp, received_at, event)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb
    WHERE NOT EXISTS (SELECT 1 FROM receipt_events r
                      WHERE r.event_id = $1
                        AND r.received_at BETWEEN $9 - interval '7 days' AND $9 + interval '7 days')
    ON CONFLICT (event_id, received_at) DO NOTHING
)
",
    status_upsert!("VALUES ($2, $3, $4, $5, $6, $7, $1, $8, $9, $11, $12, $13, $9)")
);

/// The history of a whole batch ($1..$10, one array per column, distinct
/// event ids; see [`RECORD_EVENT`] for the `NOT EXISTS`) and the first
/// status round ($11..$22) in one statement.
pub(super) const RECORD_BATCH: &str = concat!(
    "WITH history AS (
    INSERT INTO receipt_events
        (event_id, provider, message_id, outcome, status, error_code, client_ref, provider_timestamp, received_at, event)
    SELECT e, p, m, o, s, ec, cr, pt, ra, ev::jsonb
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::timestamptz[], $9::timestamptz[], $10::text[]) AS h(e, p, m, o, s, ec, cr, pt, ra, ev)
    WHERE NOT EXISTS (SELECT 1 FROM receipt_events r
                      WHERE r.event_id = h.e
                        AND r.received_at BETWEEN h.ra - interval '7 days' AND h.ra + interval '7 days')
    ON CONFLICT (event_id, received_at) DO NOTHING
)
",
    status_upsert!(
        "SELECT *, ra FROM UNNEST($11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],
                     $17::text[], $18::timestamptz[], $19::timestamptz[], $20::text[], $21::text[], $22::bool[])
             AS u(p, m, o, s, ec, cr, e, pt, ra, c, n, sy)"
    )
);

/// A later status round of a batch ($1..$12).
pub(super) const UPSERT_ROUND: &str = status_upsert!(
    "SELECT *, ra FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                 $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[], $12::bool[])
         AS u(p, m, o, s, ec, cr, e, pt, ra, c, n, sy)"
);

/// The pool and the statements.
pub(super) struct Store {
    pub(super) pool: PgPool,
    pub(super) statement_timeout: Duration,
}

impl Store {
    /// A client-side bound on top of the server's `statement_timeout`: a
    /// database that stopped answering (network black hole) cannot cancel
    /// anything itself.
    pub(super) async fn bounded<T>(
        &self,
        operation: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        let limit = self.statement_timeout + Duration::from_secs(1);
        tokio::time::timeout(limit, operation).await.unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from PostgreSQL within {} ms", limit.as_millis()),
            )))
        })
    }

    pub(super) async fn record_one(&self, row: &EventRow) -> Result<(), HandlerError> {
        let query = sqlx::query(RECORD_EVENT)
            .bind(&row.event_id)
            .bind(row.provider)
            .bind(&row.message_id)
            .bind(row.outcome)
            .bind(&row.status)
            .bind(row.error_code.as_deref())
            .bind(row.client_ref.as_deref())
            .bind(row.provider_timestamp)
            .bind(row.received_at)
            .bind(&row.event_json)
            .bind(row.country.as_deref())
            .bind(row.network.as_deref())
            .bind(row.synthetic);
        self.bounded(query.execute(&self.pool)).await.map(|_| ()).map_err(failure_for_error)
    }

    /// Writes the batch in one transaction, each event applied as if alone
    /// and in batch order. If the database refuses the batch for its data
    /// (or a deadlock with another worker), the events are written one at a
    /// time, so one bad event fails alone; if the database is unreachable,
    /// stuck or timing out, every event gets the transient error at once
    /// rather than one timeout after another.
    pub(super) async fn record_batch(&self, rows: &[EventRow]) -> Vec<Result<(), HandlerError>> {
        match rows {
            [] => return Vec::new(),
            [row] => return vec![self.record_one(row).await],
            _ => {}
        }
        match self.write_batch(rows).await {
            Ok(()) => rows.iter().map(|_| Ok(())).collect(),
            Err(error) if refused_for_its_data(&error) => {
                tracing::debug!(%error, events = rows.len(), "batch refused; writing its events one at a time");
                let mut results = Vec::with_capacity(rows.len());
                for row in rows {
                    results.push(self.record_one(row).await);
                }
                results
            }
            Err(error) => {
                let error = failure_for_error(error);
                rows.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }

    pub(super) async fn write_batch(&self, rows: &[EventRow]) -> Result<(), sqlx::Error> {
        let history = history_rows(rows);
        let rounds = status_rounds(rows);
        let first = sqlx::query(RECORD_BATCH)
            .bind(history.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>())
            .bind(history.iter().map(|r| r.provider).collect::<Vec<_>>())
            .bind(history.iter().map(|r| r.message_id.as_str()).collect::<Vec<_>>())
            .bind(history.iter().map(|r| r.outcome).collect::<Vec<_>>())
            .bind(history.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
            .bind(history.iter().map(|r| r.error_code.as_deref()).collect::<Vec<_>>())
            .bind(history.iter().map(|r| r.client_ref.as_deref()).collect::<Vec<_>>())
            .bind(history.iter().map(|r| r.provider_timestamp).collect::<Vec<_>>())
            .bind(history.iter().map(|r| r.received_at).collect::<Vec<_>>())
            .bind(history.iter().map(|r| r.event_json.as_str()).collect::<Vec<_>>());
        let first = bind_status(first, &rounds[0]);
        if rounds.len() == 1 {
            // One statement is its own transaction: no BEGIN/COMMIT round trips.
            return self.bounded(first.execute(&self.pool)).await.map(|_| ());
        }
        let mut transaction = self.bounded(self.pool.begin()).await?;
        self.bounded(first.execute(&mut *transaction)).await?;
        for round in &rounds[1..] {
            self.bounded(bind_status(sqlx::query(UPSERT_ROUND), round).execute(&mut *transaction)).await?;
        }
        self.bounded(transaction.commit()).await
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds one status round's twelve arrays, in the upsert's column order.
pub(super) fn bind_status<'q>(query: PgQuery<'q>, round: &[&'q EventRow]) -> PgQuery<'q> {
    query
        .bind(round.iter().map(|r| r.provider).collect::<Vec<_>>())
        .bind(round.iter().map(|r| r.message_id.as_str()).collect::<Vec<_>>())
        .bind(round.iter().map(|r| r.outcome).collect::<Vec<_>>())
        .bind(round.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(round.iter().map(|r| r.error_code.as_deref()).collect::<Vec<_>>())
        .bind(round.iter().map(|r| r.client_ref.as_deref()).collect::<Vec<_>>())
        .bind(round.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>())
        .bind(round.iter().map(|r| r.provider_timestamp).collect::<Vec<_>>())
        .bind(round.iter().map(|r| r.received_at).collect::<Vec<_>>())
        .bind(round.iter().map(|r| r.country.as_deref()).collect::<Vec<_>>())
        .bind(round.iter().map(|r| r.network.as_deref()).collect::<Vec<_>>())
        .bind(round.iter().map(|r| r.synthetic).collect::<Vec<_>>())
}

/// The history rows of a batch: the first of each event id (what inserting
/// them one at a time with `DO NOTHING` keeps), sorted by event id so that
/// concurrent batches take the unique-index locks in the same order.
pub(super) fn history_rows(rows: &[EventRow]) -> Vec<&EventRow> {
    let mut seen = HashMap::with_capacity(rows.len());
    let mut history: Vec<&EventRow> =
        rows.iter().filter(|r| seen.insert(r.event_id.as_str(), ()).is_none()).collect();
    history.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    history
}

/// Splits a batch into status rounds: round k holds the k-th event of each
/// message, so no round touches a row twice (which `ON CONFLICT DO UPDATE`
/// refuses) and applying the rounds in order applies each message's events
/// in batch order, exactly as one at a time would. Each round is sorted by
/// row key so that concurrent batches lock rows in the same order.
pub(super) fn status_rounds(rows: &[EventRow]) -> Vec<Vec<&EventRow>> {
    let mut seen: HashMap<(&str, &str), usize> = HashMap::with_capacity(rows.len());
    let mut rounds: Vec<Vec<&EventRow>> = Vec::new();
    for row in rows {
        let k = seen.entry((row.provider, row.message_id.as_str())).or_insert(0);
        if rounds.len() == *k {
            rounds.push(Vec::new());
        }
        rounds[*k].push(row);
        *k += 1;
    }
    for round in &mut rounds {
        round.sort_by(|a, b| (a.provider, &a.message_id).cmp(&(b.provider, &b.message_id)));
    }
    rounds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(event_id: &str, provider: &'static str, message_id: &str) -> EventRow {
        EventRow {
            event_id: event_id.to_owned(),
            provider,
            message_id: message_id.to_owned(),
            outcome: "pending",
            status: "sent".to_owned(),
            error_code: None,
            client_ref: None,
            provider_timestamp: None,
            received_at: DateTime::<Utc>::UNIX_EPOCH,
            event_json: "{}".to_owned(),
            country: None,
            network: None,
            synthetic: false,
        }
    }

    #[test]
    fn rounds_hold_each_message_once_in_batch_order() {
        let rows = [
            row("e1", "twilio", "B"),
            row("e2", "twilio", "A"),
            row("e3", "twilio", "B"),
            row("e4", "vonage-sms", "B"),
            row("e1", "twilio", "B"),
        ];
        let rounds = status_rounds(&rows);
        let ids: Vec<Vec<&str>> =
            rounds.iter().map(|r| r.iter().map(|row| row.event_id.as_str()).collect()).collect();
        assert_eq!(ids, vec![vec!["e2", "e1", "e4"], vec!["e3"], vec!["e1"]]);
    }

    #[test]
    fn history_keeps_the_first_of_each_event_id() {
        let mut later = row("e1", "twilio", "B");
        later.status = "queued".to_owned();
        let rows = [row("e2", "twilio", "A"), row("e1", "twilio", "B"), later];
        let history = history_rows(&rows);
        let kept: Vec<(&str, &str)> =
            history.iter().map(|r| (r.event_id.as_str(), r.status.as_str())).collect();
        assert_eq!(kept, vec![("e1", "sent"), ("e2", "sent")]);
    }
}
