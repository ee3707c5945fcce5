-- Pending ranks for every provider, so that no provider's intermediate
-- statuses are ordered by time alone (a late retry of `queued` must not
-- displace `sent`). Unchanged for Twilio and the two Vonage APIs; the words
-- of the others follow each provider's documented lifecycle:
-- - Telnyx: queued -> sending -> sent, then a final status; ingest keeps
--   delivery_unconfirmed pending, ranked after sent because it is reported
--   only once sending is over
--   (https://developers.telnyx.com/docs/messaging/messages/receiving-webhooks).
-- - Plivo: queued -> sent, then delivered/undelivered/failed
--   (https://www.plivo.com/docs/messaging/api/message/message-status-callbacks).
-- - Sinch: Queued -> Dispatched, then a final status; Unknown (kept
--   pending) comes after Dispatched, when the operator gave no answer
--   (https://developers.sinch.com/docs/sms/api-reference/sms/tag/Delivery-reports/).
-- - Infobip: PENDING_ACCEPTED (accepted by Infobip) -> PENDING_ENROUTE
--   (sent to the operator) -> PENDING_WAITING_DELIVERY (acknowledged by the
--   operator, report awaited) -> DELIVERED_TO_OPERATOR
--   (https://www.infobip.com/docs/essentials/api-essentials/response-status-and-error-codes).
-- A word not listed ranks 0, below every known step, as before.
--
-- Existing databases take this at start-up; the rank is computed on every
-- comparison, so no stored row changes.
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
        WHEN 'telnyx' THEN CASE lower(status)
            WHEN 'queued' THEN 1
            WHEN 'sending' THEN 2
            WHEN 'sent' THEN 3
            WHEN 'delivery_unconfirmed' THEN 4
            ELSE 0 END
        WHEN 'plivo' THEN CASE lower(status)
            WHEN 'queued' THEN 1
            WHEN 'sent' THEN 2
            ELSE 0 END
        WHEN 'sinch' THEN CASE lower(status)
            WHEN 'queued' THEN 1
            WHEN 'dispatched' THEN 2
            WHEN 'unknown' THEN 3
            ELSE 0 END
        WHEN 'infobip' THEN CASE lower(status)
            WHEN 'pending_accepted' THEN 1
            WHEN 'pending_enroute' THEN 2
            WHEN 'pending_waiting_delivery' THEN 3
            WHEN 'delivered_to_operator' THEN 4
            ELSE 0 END
        ELSE 0 END
$$;
