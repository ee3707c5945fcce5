-- What the never-final sweep, the report and the retention need from the
-- status table. Every column is nullable or has a constant default, so
-- adding them rewrites nothing (PostgreSQL 11+), on any table size.
--
-- country/network: the destination the worker derived (event.destination),
--   for `worker report --by country`.
-- first_received_at: when this service first heard of the message (its
--   first receipt), for the report's time-to-final-receipt. NULL on rows
--   written before this migration.
-- synthetic: the current status is the sweep's `no_final_receipt`, which a
--   genuine final receipt replaces.
-- swept_at: when the sweep published that synthetic receipt, so that it
--   publishes one per message, and resumes where it stopped.
ALTER TABLE message_status
    ADD COLUMN IF NOT EXISTS country TEXT,
    ADD COLUMN IF NOT EXISTS network TEXT,
    ADD COLUMN IF NOT EXISTS first_received_at TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS synthetic BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS swept_at TIMESTAMPTZ;

-- The sweep's work list: pending, not swept yet, oldest first.
CREATE INDEX IF NOT EXISTS message_status_unswept_pending_idx
    ON message_status (received_at) WHERE outcome = 'pending' AND swept_at IS NULL;

-- The report's time range and the retention of final rows.
CREATE INDEX IF NOT EXISTS message_status_received_idx ON message_status (received_at);
