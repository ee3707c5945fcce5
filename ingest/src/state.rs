//! Shared request state: one `Clone` struct of `Arc`s, no globals.

use dlr_shared::amqp::{Publisher, Topology};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::metrics::IngestMetrics;
use crate::providers::Common;
use crate::readiness::BrokerReadiness;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Confirmed publishing to the broker.
    pub publisher: Arc<Publisher>,
    /// Exchange and queue names.
    pub topology: Arc<Topology>,
    /// Settings every provider's authenticity check may use.
    pub common: Arc<Common>,
    /// Metrics (behind an `Arc`: the state is cloned for every request).
    pub metrics: Arc<IngestMetrics>,
    /// Set on SIGTERM so readiness fails while in-flight requests drain.
    pub draining: Arc<AtomicBool>,
    /// How long a client may take to send its body (INGEST_REQUEST_TIMEOUT_MS).
    pub body_timeout: Duration,
    /// Broker side of readiness: connected once, not lost for longer than the grace.
    pub broker_readiness: Arc<BrokerReadiness>,
    /// Limits on what a refused request may cost the quarantine.
    pub quarantine_limits: Arc<crate::intake::QuarantineLimits>,
    /// Seals quarantine copies and opens replays' seals (`None`: copies are
    /// not sealed and a sealed replay is refused).
    pub replay_keys: Option<Arc<crate::intake::ReplayKeys>>,
}

impl AppState {
    /// Should this pod be in the Service: not draining, and no pod-local
    /// broker trouble. A blocked connection (a cluster-wide resource alarm)
    /// keeps it ready; the receipt routes answer 503 + Retry-After meanwhile.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("draining".to_owned());
        }
        self.broker_readiness.check(std::time::Instant::now()).map_err(|reason| {
            // Not connected: say why, so that a wrong address or a broker
            // that refuses us shows in the probe, not only in the log.
            match self.publisher.broker().last_error() {
                Some(cause) => format!("{}: {cause}", reason.as_str()),
                None => reason.as_str().to_owned(),
            }
        })
    }

    /// [`AppState::readiness`] as a yes/no.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }
}
