//! The providers' sample receipts (each in its provider's
//! `ingest/src/providers/<name>/samples/`), by name for the tests that
//! send one in particular: eight samples with invented values in the
//! providers' documented wire formats (S1..S8: Vonage SMS, Vonage Messages,
//! Twilio; the signed ones signed with test secrets; sent byte for byte)
//! and the samples of the providers' own documentation. The fuzzer also
//! reads those folders at run time; `dlr_ingest::providers::REGISTRY`
//! lists every sample with what it should become.

/// S1: Vonage SMS, delivered, POST-JSON.
pub const S1: &str =
    include_str!("../../ingest/src/providers/vonage_sms/samples/s1-vonage-sms-delivered.json");
/// S2: Vonage SMS, failed, as a GET query.
pub const S2_QUERY: &str =
    include_str!("../../ingest/src/providers/vonage_sms/samples/s2-vonage-sms-failed.query");
/// S3: a concatenated Vonage SMS, part 1 (delivered), form body.
pub const S3_PART1: &str =
    include_str!("../../ingest/src/providers/vonage_sms/samples/s3-vonage-sms-part1-delivered.form");
/// S3: part 2 (accepted), form body.
pub const S3_PART2: &str =
    include_str!("../../ingest/src/providers/vonage_sms/samples/s3-vonage-sms-part2-accepted.form");
/// S4: Vonage SMS signed with SHA-256 HMAC (`sig`), POST-JSON.
pub const S4: &str =
    include_str!("../../ingest/src/providers/vonage_sms/samples/s4-vonage-sms-signed-sha256.json");
/// S5: Vonage Messages, submitted.
pub const S5: &str =
    include_str!("../../ingest/src/providers/vonage_messages/samples/s5-messages-submitted.json");
/// S6: Vonage Messages, rejected, signed with the JWT of [`S6_AUTHORIZATION`].
pub const S6: &str =
    include_str!("../../ingest/src/providers/vonage_messages/samples/s6-messages-rejected-signed.json");
/// S6's `Authorization` header (`Bearer <JWT>`).
pub const S6_AUTHORIZATION: &str =
    include_str!("../../ingest/src/providers/vonage_messages/samples/s6-messages-rejected.authorization");
/// S7: Twilio, undelivered, signed (form body).
pub const S7: &str =
    include_str!("../../ingest/src/providers/twilio/samples/s7-twilio-undelivered-signed.form");
/// S7's `X-Twilio-Signature`.
pub const S7_SIGNATURE: &str =
    include_str!("../../ingest/src/providers/twilio/samples/s7-twilio-undelivered.x-twilio-signature");
/// S8: Twilio, sent through a messaging service (form body).
pub const S8: &str =
    include_str!("../../ingest/src/providers/twilio/samples/s8-twilio-sent-messaging-service.form");
/// A Vonage Messages status in the legacy v0.1 shape (undeliverable).
pub const MESSAGES_LEGACY: &str = include_str!(
    "../../ingest/src/providers/vonage_messages/samples/messages-legacy-v0.1-undeliverable.json"
);
/// An inbound SMS (not a receipt) on the Vonage SMS route.
pub const VONAGE_INBOUND: &str =
    include_str!("../../ingest/src/providers/vonage_sms/samples/vonage-sms-inbound-sms.form");

/// Telnyx `message.finalized`, delivered.
pub const TELNYX_DELIVERED: &str =
    include_str!("../../ingest/src/providers/telnyx/samples/telnyx-message-finalized-delivered.json");
/// Telnyx `message.finalized`, failed.
pub const TELNYX_FAILED: &str =
    include_str!("../../ingest/src/providers/telnyx/samples/telnyx-message-finalized-failed.json");
/// Plivo, delivered (form body).
pub const PLIVO_DELIVERED: &str =
    include_str!("../../ingest/src/providers/plivo/samples/plivo-delivered.form");
/// Plivo, undelivered (GET query).
pub const PLIVO_UNDELIVERED: &str =
    include_str!("../../ingest/src/providers/plivo/samples/plivo-undelivered.query");
/// Sinch, one recipient delivered.
pub const SINCH_RECIPIENT: &str =
    include_str!("../../ingest/src/providers/sinch/samples/sinch-recipient-delivered.json");
/// Sinch, a full delivery report.
pub const SINCH_FULL: &str = include_str!("../../ingest/src/providers/sinch/samples/sinch-full.json");
/// Sinch, a summary delivery report.
pub const SINCH_SUMMARY: &str = include_str!("../../ingest/src/providers/sinch/samples/sinch-summary.json");
/// Infobip, a `results` batch.
pub const INFOBIP_RESULTS: &str =
    include_str!("../../ingest/src/providers/infobip/samples/infobip-results.json");
