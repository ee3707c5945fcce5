-- Status store for the postgres handler.
-- receipt_events: every event once (idempotent on event_id), the history.
-- message_status: one row per provider message with its current status.

CREATE TABLE IF NOT EXISTS receipt_events (
    event_id            TEXT PRIMARY KEY,
    provider            TEXT NOT NULL,
    message_id          TEXT NOT NULL,
    outcome             TEXT NOT NULL CHECK (outcome IN ('delivered', 'failed', 'pending')),
    status              TEXT NOT NULL,
    error_code          TEXT,
    client_ref          TEXT,
    provider_timestamp  TIMESTAMPTZ,
    received_at         TIMESTAMPTZ NOT NULL,
    stored_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    event               JSONB NOT NULL
);

CREATE INDEX IF NOT EXISTS receipt_events_message_idx ON receipt_events (provider, message_id);

CREATE TABLE IF NOT EXISTS message_status (
    provider            TEXT NOT NULL,
    message_id          TEXT NOT NULL,
    outcome             TEXT NOT NULL CHECK (outcome IN ('delivered', 'failed', 'pending')),
    status              TEXT NOT NULL,
    error_code          TEXT,
    client_ref          TEXT,
    event_id            TEXT NOT NULL,
    provider_timestamp  TIMESTAMPTZ,
    received_at         TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, message_id)
);
