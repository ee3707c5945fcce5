//! Shared request state: one `Clone` struct of `Arc`s, no globals.

use dlr_shared::amqp::{Publisher, Topology};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::SignaturePolicy;
use crate::metrics::IngestMetrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Confirmed publishing to the broker.
    pub publisher: Arc<Publisher>,
    /// Exchange and queue names.
    pub topology: Arc<Topology>,
    /// Signature checks to apply.
    pub signatures: Arc<SignaturePolicy>,
    /// Metrics (behind an `Arc`: the state is cloned for every request).
    pub metrics: Arc<IngestMetrics>,
    /// Set on SIGTERM so readiness fails while in-flight requests drain.
    pub draining: Arc<AtomicBool>,
    /// How long a client may take to send its body (INGEST_REQUEST_TIMEOUT_MS).
    pub body_timeout: Duration,
}

impl AppState {
    /// Ready to take receipts: broker usable and not shutting down.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst) && self.publisher.is_ready()
    }
}
