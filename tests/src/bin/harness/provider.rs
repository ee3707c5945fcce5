//! The SMS provider: sends receipts, retries like one, records everything.
//!
//! Retries follow what Vonage documents: only 429, 5xx and no answer
//! (connection error, timeout) are retried, with capped exponential
//! backoff (250 ms doubling to 4 s, jittered); any other answer is final.

use super::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// Open-loop receipts in flight at most (a stalled service makes the
/// steady sender wait rather than pile up tasks).
const MAX_IN_FLIGHT: usize = 5_000;

/// One HTTP request and its answer (`code` 0: no answer).
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub start_ms: u64,
    pub end_ms: u64,
    pub code: u16,
    pub bad: bool,
    /// The receipt's number: its message id is the scenario's tag
    /// followed by `{n:020x}` (see [`message_id`]).
    pub n: u64,
}

/// Message id of receipt `n` of the scenario tagged `tag`: `SM` + 32 hex
/// digits with the tag of main.rs, a Twilio SID shape.
pub fn message_id(tag: &str, n: u64) -> String {
    format!("{tag}{n:020x}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    /// `200`: the provider forgets the receipt.
    Accepted,
    /// Another final answer (4xx): the provider drops the receipt.
    Refused(u16),
    /// Still failing when the retry window closed.
    GaveUp,
}

#[derive(Debug, Clone)]
pub struct Receipt {
    pub message_id: String,
    pub bad: bool,
    pub first_ms: u64,
    pub end_ms: u64,
    pub outcome: Final,
}

/// One request, rebuilt for each attempt.
struct Spec {
    path: String,
    content_type: &'static str,
    body: Option<String>,
}

struct Shared {
    client: reqwest::Client,
    base: String,
    tag: String,
    clock: Clock,
    bad_every: u64,
    next: AtomicU64,
    /// No retry may start after this (ms on the clock).
    retry_deadline: AtomicU64,
    attempts: Mutex<Vec<Attempt>>,
    receipts: Mutex<Vec<Receipt>>,
}

pub struct Load {
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop_steady: CancellationToken,
    stop_burst: CancellationToken,
}

/// Everything one scenario's load produced.
pub struct Recorded {
    pub sent: u64,
    pub attempts: Vec<Attempt>,
    pub receipts: Vec<Receipt>,
}

impl Load {
    /// Starts the steady stream at `rate` receipts per second.
    pub fn start(
        client: reqwest::Client,
        base: String,
        tag: String,
        clock: Clock,
        rate: f64,
        bad_every: u64,
    ) -> Self {
        let shared = Arc::new(Shared {
            client,
            base,
            tag,
            clock,
            bad_every,
            next: AtomicU64::new(0),
            retry_deadline: AtomicU64::new(u64::MAX),
            attempts: Mutex::new(Vec::new()),
            receipts: Mutex::new(Vec::new()),
        });
        let load = Self {
            shared,
            tracker: TaskTracker::new(),
            stop_steady: CancellationToken::new(),
            stop_burst: CancellationToken::new(),
        };
        let (shared, tracker, stop) = (load.shared.clone(), load.tracker.clone(), load.stop_steady.clone());
        load.tracker.spawn(async move {
            let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            // Catch up after a stall: the average rate is what was asked for.
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                let permit = tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticker.tick() => match in_flight.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                let shared = shared.clone();
                tracker.spawn(async move {
                    shared.deliver_next().await;
                    drop(permit);
                });
            }
        });
        load
    }

    /// Full speed: `concurrency` connections, each sending the next
    /// receipt as soon as the previous one is settled, `max` in all.
    pub fn start_burst(&self, concurrency: usize, max: u64) {
        let sent = Arc::new(AtomicU64::new(0));
        for _ in 0..concurrency {
            let (shared, stop, sent) = (self.shared.clone(), self.stop_burst.clone(), sent.clone());
            self.tracker.spawn(async move {
                while !stop.is_cancelled() && sent.fetch_add(1, Ordering::SeqCst) < max {
                    shared.deliver_next().await;
                }
            });
        }
    }

    pub fn stop_burst(&self) {
        self.stop_burst.cancel();
    }

    /// Stops sending, lets pending receipts retry for `retry_window`, and
    /// returns the record. Receipts still unsettled after that (a request
    /// that hangs) are missing from `receipts` and count as given up.
    pub async fn finish(self, retry_window: Duration) -> Recorded {
        self.stop_steady.cancel();
        self.stop_burst.cancel();
        let deadline = self.shared.clock.ms() + u64::try_from(retry_window.as_millis()).unwrap_or(u64::MAX);
        self.shared.retry_deadline.store(deadline, Ordering::SeqCst);
        self.tracker.close();
        // The last attempt may take the client's whole 15 s timeout.
        let _ = tokio::time::timeout(retry_window + Duration::from_secs(20), self.tracker.wait()).await;
        Recorded {
            sent: self.shared.next.load(Ordering::SeqCst),
            attempts: take(&self.shared.attempts),
            receipts: take(&self.shared.receipts),
        }
    }
}

fn take<T>(list: &Mutex<Vec<T>>) -> Vec<T> {
    list.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
}

/// Deterministic jitter (no RNG in this crate): 80-100 % of `delay`.
fn jittered(delay: Duration, seed: u64) -> Duration {
    let permille = seed.wrapping_mul(2_654_435_761) % 201;
    delay.mul_f64(1.0 - permille as f64 / 1000.0)
}

const VONAGE_STATUSES: [&str; 3] = ["delivered", "expired", "accepted"];
const TWILIO_STATUSES: [&str; 3] = ["delivered", "undelivered", "sent"];

impl Shared {
    /// Receipt `n`: the four wire formats in turn, the three outcomes in
    /// turn, and every `bad_every`-th one malformed in one of three ways.
    fn spec(&self, n: u64, message_id: &str) -> (Spec, bool) {
        let form = "application/x-www-form-urlencoded";
        if self.bad_every > 0 && n % self.bad_every == self.bad_every - 1 {
            let spec = match (n / self.bad_every) % 3 {
                // Empty status: 400, and must never be stored.
                0 => Spec {
                    path: "/dlr/vonage".into(),
                    content_type: form,
                    body: Some(dlr_tests::vonage_form(message_id, "")),
                },
                // Truncated JSON: 400.
                1 => Spec {
                    path: "/dlr/vonage".into(),
                    content_type: "application/json",
                    body: Some(format!("{{\"messageId\":\"{message_id}\",\"status\":\"deliv")),
                },
                // A valid receipt with a content type nobody sends: 415.
                _ => Spec {
                    path: "/dlr/vonage".into(),
                    content_type: "text/plain",
                    body: Some(dlr_tests::vonage_form(message_id, "delivered")),
                },
            };
            return (spec, true);
        }
        let outcome = usize::try_from((n / 4) % 3).unwrap_or(0);
        let vonage = dlr_tests::vonage_form(message_id, VONAGE_STATUSES[outcome]);
        let spec = match n % 4 {
            0 => Spec { path: format!("/dlr/vonage?{vonage}"), content_type: "", body: None },
            1 => Spec { path: "/dlr/vonage".into(), content_type: form, body: Some(vonage) },
            2 => {
                let body = serde_json::json!({
                    "msisdn": "447700900123", "to": "AcmeShop", "network-code": "23415",
                    "messageId": message_id, "price": "0.03330000", "status": VONAGE_STATUSES[outcome],
                    "scts": "2503140926", "err-code": "0", "message-timestamp": "2025-03-14 09:26:41",
                });
                Spec {
                    path: "/dlr/vonage".into(),
                    content_type: "application/json",
                    body: Some(body.to_string()),
                }
            }
            _ => {
                let error = if outcome == 1 { "&ErrorCode=30003" } else { "" };
                let body = format!(
                    "AccountSid=AC0123456789abcdef0123456789abcdef&MessageSid={message_id}&MessageStatus={}&To=%2B15558675310&From=%2B15017122661{error}",
                    TWILIO_STATUSES[outcome]
                );
                Spec { path: "/dlr/twilio".into(), content_type: form, body: Some(body) }
            }
        };
        (spec, false)
    }

    /// One request; the answer's status, or 0 when there was none.
    async fn attempt(&self, spec: &Spec) -> u16 {
        let url = format!("{}{}", self.base, spec.path);
        let request = match &spec.body {
            None => self.client.get(url),
            Some(body) => self.client.post(url).header("content-type", spec.content_type).body(body.clone()),
        };
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the body so the connection goes back to the pool;
                // the status line is what the provider acts on.
                let _ = response.bytes().await;
                status
            }
            Err(_) => 0,
        }
    }

    /// Sends the next receipt until it is settled, like a provider.
    async fn deliver_next(&self) {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let message_id = message_id(&self.tag, n);
        let (spec, bad) = self.spec(n, &message_id);
        let first_ms = self.clock.ms();
        let mut backoff = BACKOFF_START;
        let mut tries = 0u64;
        let outcome = loop {
            tries += 1;
            let start_ms = self.clock.ms();
            let code = self.attempt(&spec).await;
            let end_ms = self.clock.ms();
            if let Ok(mut attempts) = self.attempts.lock() {
                attempts.push(Attempt { start_ms, end_ms, code, bad, n });
            }
            match code {
                200 => break Final::Accepted,
                0 | 429 | 500..=599 => {
                    let wait = jittered(backoff, n ^ (tries << 32));
                    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                    if end_ms.saturating_add(wait_ms) > self.retry_deadline.load(Ordering::SeqCst) {
                        break Final::GaveUp;
                    }
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                other => break Final::Refused(other),
            }
        };
        let receipt = Receipt { message_id, bad, first_ms, end_ms: self.clock.ms(), outcome };
        if let Ok(mut receipts) = self.receipts.lock() {
            receipts.push(receipt);
        }
    }
}
