-- Rank of a pending (intermediate) status word within its provider's
-- lifecycle, so that a late retry of an earlier step (Twilio sends no
-- provider timestamp: a late `queued` looks newer than `sent`) cannot move a
-- message's status backwards. The upsert in the postgres handler compares
-- ranks first and uses time only to break ties within a rank. Words we do
-- not know rank lowest: they are kept in the history, but do not displace
-- a known step.
--
-- IMMUTABLE and a single SQL expression so PostgreSQL inlines it into the
-- upsert. Existing tables need no change: the rank is computed from the
-- stored provider and status on every comparison.
CREATE OR REPLACE FUNCTION dlr_pending_rank(provider TEXT, status TEXT) RETURNS INTEGER
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE provider
        WHEN 'twilio' THEN CASE lower(status)
            WHEN 'accepted' THEN 1
            WHEN 'scheduled' THEN 2
            WHEN 'queued' THEN 3
            WHEN 'sending' THEN 4
            WHEN 'sent' THEN 5
            ELSE 0 END
        WHEN 'vonage-sms' THEN CASE lower(status)
            WHEN 'accepted' THEN 1
            WHEN 'acceptd' THEN 1
            WHEN 'buffered' THEN 2
            ELSE 0 END
        WHEN 'vonage-messages' THEN CASE lower(status)
            WHEN 'submitted' THEN 1
            ELSE 0 END
        ELSE 0 END
$$;
