//! Generated provider payloads shared by the tests and the batch benchmark.

use serde_json::{Value, json};

/// One Infobip delivery report (the documented shape) for `message_id`,
/// delivered to the handset, with `padding` bytes of extra member so that
/// tests can size a batch like a real one.
pub fn infobip_report(message_id: &str, padding: usize) -> Value {
    json!({
        "bulkId": "BULK-1", "messageId": message_id, "to": "41793026727", "from": "InfoSMS",
        "sentAt": "2019-04-09T16:00:00.000-0300", "doneAt": "2019-04-09T16:00:01.123-0300", "smsCount": 1,
        "mccMnc": "22801", "callbackData": format!("order-{message_id}"),
        "price": {"pricePerMessage": 0.01, "currency": "EUR"},
        "status": {"groupId": 3, "groupName": "DELIVERED", "id": 5, "name": "DELIVERED_TO_HANDSET",
            "description": "Message delivered to handset"},
        "error": {"groupId": 0, "groupName": "OK", "id": 0, "name": "NO_ERROR", "description": "No Error", "permanent": false},
        "padding": "x".repeat(padding),
    })
}
