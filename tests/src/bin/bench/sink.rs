//! The webhook receiver the worker's `http` route posts to: counts events
//! and records their latency from ingest's `received_at`.

use super::*;

/// A downstream webhook receiver for the http handler: answers 200 at once,
/// counts calls and, while recording, the latency from ingest's receipt
/// (`received_at` in the event) to now, on the same machine's clock.
#[derive(Clone)]
pub(crate) struct BenchReceiver {
    pub(crate) url: String,
    pub(crate) calls: Arc<AtomicU64>,
    pub(crate) recording: Arc<AtomicBool>,
    pub(crate) latencies_ms: Arc<Mutex<Vec<f64>>>,
}

impl BenchReceiver {
    pub(crate) async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let receiver = Self {
            url: format!("http://{}/hook", listener.local_addr()?),
            calls: Arc::new(AtomicU64::new(0)),
            recording: Arc::new(AtomicBool::new(false)),
            latencies_ms: Arc::new(Mutex::new(Vec::new())),
        };
        let app =
            axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(receiver)
    }

    /// Starts recording latencies afresh, or stops (keeping what was recorded).
    pub(crate) fn record(&self, on: bool) {
        if on && let Ok(mut latencies) = self.latencies_ms.lock() {
            latencies.clear();
        }
        self.recording.store(on, Ordering::SeqCst);
    }
}

pub(crate) async fn receive(
    State(receiver): State<BenchReceiver>,
    body: bytes::Bytes,
) -> axum::http::StatusCode {
    if receiver.recording.load(Ordering::Relaxed)
        && let Ok(event) = serde_json::from_slice::<ReceiptEvent>(&body)
    {
        let ms = (chrono::Utc::now() - event.received_at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        if let Ok(mut latencies) = receiver.latencies_ms.lock() {
            latencies.push(ms);
        }
    }
    receiver.calls.fetch_add(1, Ordering::SeqCst);
    axum::http::StatusCode::OK
}
