//! The downstream webhook receiver: verifies signatures, counts
//! deliveries per message id, and can be switched off (503).

use super::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Deliveries of one message id.
#[derive(Debug, Default, Clone, Copy)]
pub struct Calls {
    /// Every POST, refused or not.
    pub calls: u32,
    /// POSTs answered 2xx: more than one is a duplicate the receiver absorbed.
    pub ok: u32,
}

#[derive(Default)]
struct Log {
    per_message: HashMap<String, Calls>,
    /// (ms, answered 2xx) of every call, for the outage's recovery time.
    timeline: Vec<(u64, bool)>,
}

struct Shared {
    clock: Clock,
    down: AtomicBool,
    flaky_every: u64,
    key: Vec<u8>,
    bad_signatures: AtomicU64,
    log: Mutex<Log>,
}

pub struct Sink {
    pub url: String,
    shared: Arc<Shared>,
}

impl Sink {
    pub async fn start(clock: Clock, flaky_every: u64, secret: &str) -> Result<Self> {
        let key = STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .context("the webhook secret is whsec_ + base64")?;
        let shared = Arc::new(Shared {
            clock,
            down: AtomicBool::new(false),
            flaky_every,
            key,
            bad_signatures: AtomicU64::new(0),
            log: Mutex::new(Log::default()),
        });
        let app =
            axum::Router::new().route("/hooks", axum::routing::post(receive)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the receiver")?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url: format!("http://{addr}/hooks"), shared })
    }

    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Deliveries of the message ids starting with `prefix`.
    pub fn calls(&self, prefix: &str) -> HashMap<String, Calls> {
        self.shared
            .log
            .lock()
            .map(|log| {
                log.per_message
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// First refused call at or after `from`, and first 2xx at or after `healed`.
    pub fn outage(&self, from: u64, healed: u64) -> (Option<u64>, Option<u64>) {
        let Ok(log) = self.shared.log.lock() else { return (None, None) };
        let refused = log.timeline.iter().find(|(ms, ok)| *ms >= from && !ok).map(|(ms, _)| *ms);
        let back = log.timeline.iter().find(|(ms, ok)| *ms >= healed && *ok).map(|(ms, _)| *ms);
        (refused, back)
    }

    pub fn bad_signatures(&self) -> u64 {
        self.shared.bad_signatures.load(Ordering::SeqCst)
    }
}

/// Standard Webhooks: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`.
fn signed(key: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) =
        (get("webhook-id"), get("webhook-timestamp"), get("webhook-signature"))
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return false };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    signatures.split(' ').any(|s| s == expected)
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if !signed(&shared.key, &headers, &body) {
        shared.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let message_id = event["message_id"].as_str().unwrap_or_default().to_owned();
    // "Flaky": the first delivery of about one event in N (by event id)
    // is refused, so the retry path is busy during every fault.
    let event_id = event["event_id"].as_str().unwrap_or_default();
    let flaky = shared.flaky_every > 0
        && u64::from_str_radix(event_id.get(..8).unwrap_or("1"), 16).unwrap_or(1) % shared.flaky_every == 0;
    let ms = shared.clock.ms();
    let Ok(mut log) = shared.log.lock() else { return StatusCode::INTERNAL_SERVER_ERROR };
    let calls = log.per_message.entry(message_id).or_default();
    calls.calls += 1;
    let refuse = shared.down.load(Ordering::SeqCst) || (flaky && calls.calls == 1);
    if !refuse {
        calls.ok += 1;
    }
    log.timeline.push((ms, !refuse));
    if refuse { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::NO_CONTENT }
}
