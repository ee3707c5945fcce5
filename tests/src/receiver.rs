//! A scriptable HTTP receiver standing in for a downstream webhook consumer.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Bytes,
    /// When it arrived.
    pub at: std::time::Instant,
}

/// How the receiver answers, call by call.
#[derive(Debug, Clone, Copy)]
pub enum Script {
    /// Always 200.
    Ok,
    /// 500 for the first `n` calls, then 200.
    FailFirst(usize),
    /// Always this status.
    Always(u16),
    /// 200 after holding each request this many milliseconds (a slow consumer).
    SlowOk(u64),
    /// 200 after holding the first request this many milliseconds; 200 at
    /// once for the others (one stuck call among fast ones).
    SlowFirst(u64),
    /// This redirect status (3xx) to `/moved`, which itself answers 200.
    Redirect(u16),
    /// This status with `Retry-After: <seconds>` for the first call, then 200.
    RetryAfterFirst(u16, u64),
}

#[derive(Clone)]
struct Shared {
    script: Arc<Mutex<Script>>,
    calls: Arc<Mutex<Vec<Received>>>,
    /// Requests being answered now, and the most there ever were.
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

/// Counts a request as in flight until dropped (also when the client
/// gives up and the handler future is dropped).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(shared: &Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared.in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Shared,
}

impl Receiver {
    /// Starts a receiver on a random port.
    pub async fn start(script: Script) -> Self {
        let shared = Shared {
            script: Arc::new(Mutex::new(script)),
            calls: Arc::new(Mutex::new(Vec::new())),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new().route("/{*path}", post(record).get(landing_page)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared }
    }

    /// URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Changes how later calls are answered.
    pub fn set_script(&self, script: Script) {
        if let Ok(mut s) = self.shared.script.lock() {
            *s = script;
        }
    }

    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Every call so far (answered with any status).
    pub fn calls(&self) -> Vec<Received> {
        self.shared.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

async fn record(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let _in_flight = InFlight::enter(&shared);
    let index = {
        let mut calls = match shared.calls.lock() {
            Ok(c) => c,
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        };
        calls.push(Received { headers, body, at: std::time::Instant::now() });
        calls.len()
    };
    let script = shared.script.lock().map(|s| *s).unwrap_or(Script::Ok);
    match script {
        Script::Ok => StatusCode::OK.into_response(),
        Script::FailFirst(n) if index <= n => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Script::FailFirst(_) => StatusCode::OK.into_response(),
        Script::Always(code) => {
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR).into_response()
        }
        Script::SlowOk(millis) => {
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
            StatusCode::OK.into_response()
        }
        Script::SlowFirst(millis) if index == 1 => {
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
            StatusCode::OK.into_response()
        }
        Script::SlowFirst(_) => StatusCode::OK.into_response(),
        Script::RetryAfterFirst(code, seconds) if index == 1 => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            (status, [(header::RETRY_AFTER, seconds.to_string())]).into_response()
        }
        Script::RetryAfterFirst(..) => StatusCode::OK.into_response(),
        Script::Redirect(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::FOUND);
            (status, [(header::LOCATION, "/moved")]).into_response()
        }
    }
}

/// What a redirect lands on: a 200 page, like an SSO or maintenance page.
async fn landing_page() -> &'static str {
    "maintenance"
}

/// A webhook endpoints file (`WORKER_WEBHOOKS_FILE`) with a given body,
/// removed on drop.
pub struct EndpointsFile(pub std::path::PathBuf);

impl EndpointsFile {
    /// Writes `body` to a fresh file in the temporary directory.
    pub fn write(body: &str) -> Self {
        let path = std::env::temp_dir().join(format!("dlr-webhooks-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, body).expect("write the endpoints file");
        Self(path)
    }
}

impl Drop for EndpointsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
