-- receipt_events becomes a table partitioned by month of received_at (UTC),
-- so that history past the retention goes by dropping a whole partition
-- (a catalogue change) instead of a mass DELETE that bloats the table and
-- the WAL. See https://www.postgresql.org/docs/15/ddl-partitioning.html.
--
-- Databases created by the earlier migrations are converted in place: the
-- existing table is renamed and attached, unchanged, as the partition of
-- everything before the first monthly partition, and goes as a whole once
-- its upper bound is older than the retention. The new primary key's index
-- is built on it and attaching checks its rows once (one scan each).
--
-- The primary key must contain the partition key: it is (event_id,
-- received_at). A replayed event (same id, same received_at) still
-- conflicts; a provider's retry of a receipt (same id, new received_at) is
-- kept out of the history by the handler's NOT EXISTS on event_id.

ALTER TABLE receipt_events RENAME TO receipt_events_before_partitioning;
-- Its key becomes the partitioned table's (a partition has one primary key).
ALTER TABLE receipt_events_before_partitioning
    DROP CONSTRAINT receipt_events_pkey,
    ADD CONSTRAINT receipt_events_before_partitioning_pkey PRIMARY KEY (event_id, received_at);
ALTER INDEX receipt_events_message_idx RENAME TO receipt_events_before_partitioning_message_idx;

CREATE TABLE receipt_events (
    event_id            TEXT NOT NULL,
    provider            TEXT NOT NULL,
    message_id          TEXT NOT NULL,
    -- Named as in the old table: attaching needs the same constraint there.
    outcome             TEXT NOT NULL
                        CONSTRAINT receipt_events_outcome_check CHECK (outcome IN ('delivered', 'failed', 'pending')),
    status              TEXT NOT NULL,
    error_code          TEXT,
    client_ref          TEXT,
    provider_timestamp  TIMESTAMPTZ,
    received_at         TIMESTAMPTZ NOT NULL,
    stored_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    event               JSONB NOT NULL,
    PRIMARY KEY (event_id, received_at)
) PARTITION BY RANGE (received_at);

CREATE INDEX receipt_events_message_idx ON receipt_events (provider, message_id);

-- Everything up to the start of the month after the newest stored event
-- (or after now) stays in the old table.
DO $$
DECLARE
    upper_bound TIMESTAMPTZ;
BEGIN
    SELECT (date_trunc('month', greatest(now(), coalesce(max(received_at), now())), 'UTC') AT TIME ZONE 'UTC'
            + INTERVAL '1 month') AT TIME ZONE 'UTC'
      INTO upper_bound
      FROM receipt_events_before_partitioning;
    EXECUTE format(
        'ALTER TABLE receipt_events ATTACH PARTITION receipt_events_before_partitioning FOR VALUES FROM (MINVALUE) TO (%L)',
        upper_bound);
END
$$;

-- A safety net, never the plan: rows whose month has no partition yet (a
-- clock far off, a replay of an old event) land here instead of failing.
-- Creating a month moves its rows out of it first.
CREATE TABLE receipt_events_default PARTITION OF receipt_events DEFAULT;

-- The range partitions with their bounds (MINVALUE as -infinity).
CREATE OR REPLACE FUNCTION dlr_receipt_partitions()
RETURNS TABLE (name TEXT, lower_bound TIMESTAMPTZ, upper_bound TIMESTAMPTZ)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::TEXT,
           CASE WHEN b LIKE 'FOR VALUES FROM (MINVALUE)%' THEN '-infinity'::TIMESTAMPTZ
                ELSE substring(b FROM 'FROM \(''([^'']+)''\)')::TIMESTAMPTZ END,
           substring(b FROM 'TO \(''([^'']+)''\)')::TIMESTAMPTZ
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
      CROSS JOIN LATERAL pg_get_expr(c.relpartbound, c.oid) AS b
     WHERE i.inhparent = 'receipt_events'::regclass
       AND b <> 'DEFAULT'
$$;

-- Creates the monthly partitions (UTC) from the month of `at` to
-- `months_ahead` months later that no existing partition overlaps; returns
-- the names created. The worker calls it with now() at start-up and every
-- maintenance round; tests call it with any `at`.
CREATE OR REPLACE FUNCTION dlr_receipt_partitions_ensure(at TIMESTAMPTZ, months_ahead INTEGER)
RETURNS SETOF TEXT
LANGUAGE plpgsql AS $$
DECLARE
    first_month TIMESTAMP := date_trunc('month', at, 'UTC') AT TIME ZONE 'UTC';
    lower_at TIMESTAMPTZ;
    upper_at TIMESTAMPTZ;
    partition TEXT;
BEGIN
    FOR i IN 0..months_ahead LOOP
        lower_at := (first_month + make_interval(months => i)) AT TIME ZONE 'UTC';
        upper_at := (first_month + make_interval(months => i + 1)) AT TIME ZONE 'UTC';
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM dlr_receipt_partitions() p
             WHERE p.lower_bound < upper_at AND p.upper_bound > lower_at);
        partition := 'receipt_events_p' || to_char(lower_at AT TIME ZONE 'UTC', 'YYYYMM');
        EXECUTE format('CREATE TABLE %I (LIKE receipt_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', partition);
        EXECUTE format(
            'WITH moved AS (DELETE FROM receipt_events_default WHERE received_at >= %L AND received_at < %L RETURNING *)
             INSERT INTO %I SELECT * FROM moved', lower_at, upper_at, partition);
        EXECUTE format('ALTER TABLE receipt_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            partition, lower_at, upper_at);
        RETURN NEXT partition;
    END LOOP;
END
$$;

-- Drops the partitions whose every row is older than `cutoff` (upper bound
-- at or before it) and deletes the default partition's rows older than it;
-- returns the names dropped.
CREATE OR REPLACE FUNCTION dlr_receipt_partitions_drop(cutoff TIMESTAMPTZ)
RETURNS SETOF TEXT
LANGUAGE plpgsql AS $$
DECLARE
    old RECORD;
BEGIN
    FOR old IN SELECT p.name FROM dlr_receipt_partitions() p WHERE p.upper_bound <= cutoff ORDER BY p.upper_bound LOOP
        EXECUTE format('DROP TABLE %I', old.name);
        RETURN NEXT old.name;
    END LOOP;
    DELETE FROM receipt_events_default WHERE received_at < cutoff;
END
$$;

SELECT dlr_receipt_partitions_ensure(now(), 2);
