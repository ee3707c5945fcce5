//! Whether this pod should be in the Service: only pod-local trouble counts.
//!
//! A broker resource alarm blocks every publishing connection in the cluster
//! at once. If readiness followed it, every ingest pod would leave the Service
//! together, the ingress would answer its own 503 without `Retry-After`, and
//! the 5xx alerts would go quiet because no request reached ingest. So a
//! blocked connection keeps the pod ready (the receipt routes answer 503 +
//! Retry-After themselves), and a lost connection turns readiness false only
//! after a grace period: a broker node restart or a network blip should not
//! empty the Service either, while a pod that stays cut off should leave it.

use dlr_shared::amqp::BrokerConnection;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the watcher samples the connection. The grace period is
/// measured from the first sample that found it down, so this bounds the error.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// The broker link as readiness sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not connected yet since start: a new pod must not take traffic it can only refuse.
    NeverConnected,
    /// Connected (blocked or not).
    Up,
    /// Lost at this instant, after having been up.
    DownSince(Instant),
}

/// Broker side of readiness, fed by [`watch`].
#[derive(Debug)]
pub struct BrokerReadiness {
    grace: Duration,
    link: Mutex<Link>,
}

/// Why the pod is not ready (the `/readyz` body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// The broker connection has not been established since start.
    NotConnectedYet,
    /// The connection has been down for longer than the grace period.
    BrokerDownTooLong,
}

impl NotReady {
    /// Short text for the probe's body.
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::NotConnectedYet => "broker not connected yet",
            NotReady::BrokerDownTooLong => "broker connection down longer than the readiness grace",
        }
    }
}

impl BrokerReadiness {
    /// Starts as never connected; `grace` is how long a lost connection is tolerated.
    pub fn new(grace: Duration) -> Self {
        Self { grace, link: Mutex::new(Link::NeverConnected) }
    }

    /// Records one sample of the connection state, taken at `now`.
    pub fn observe(&self, connected: bool, now: Instant) {
        let mut link = self.link.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *link = match (*link, connected) {
            (_, true) => Link::Up,
            (Link::Up, false) => Link::DownSince(now),
            (unchanged, false) => unchanged,
        };
    }

    /// `Ok` while the broker side allows serving at `now`.
    pub fn check(&self, now: Instant) -> Result<(), NotReady> {
        let link = *self.link.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match link {
            Link::Up => Ok(()),
            Link::NeverConnected => Err(NotReady::NotConnectedYet),
            Link::DownSince(since) if now.saturating_duration_since(since) < self.grace => Ok(()),
            Link::DownSince(_) => Err(NotReady::BrokerDownTooLong),
        }
    }
}

/// Samples `broker` into `readiness` until `cancel` fires. A blocked
/// connection is still connected: it keeps the pod ready.
pub async fn watch(
    readiness: std::sync::Arc<BrokerReadiness>,
    broker: BrokerConnection,
    cancel: CancellationToken,
) {
    loop {
        readiness.observe(broker.current().is_some(), Instant::now());
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(SAMPLE_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn not_ready_before_the_first_connection_however_long_it_takes() {
        let r = BrokerReadiness::new(GRACE);
        let t0 = Instant::now();
        r.observe(false, t0);
        assert_eq!(r.check(t0), Err(NotReady::NotConnectedYet));
        assert_eq!(r.check(t0 + GRACE * 2), Err(NotReady::NotConnectedYet));
        r.observe(true, t0 + GRACE * 2);
        assert_eq!(r.check(t0 + GRACE * 2), Ok(()));
    }

    #[test]
    fn a_lost_connection_is_tolerated_for_the_grace_only() {
        let r = BrokerReadiness::new(GRACE);
        let t0 = Instant::now();
        r.observe(true, t0);
        r.observe(false, t0 + Duration::from_secs(1));
        // Later samples while still down must not restart the clock.
        r.observe(false, t0 + Duration::from_secs(20));
        assert_eq!(r.check(t0 + Duration::from_secs(30)), Ok(()));
        assert_eq!(r.check(t0 + Duration::from_secs(31)), Err(NotReady::BrokerDownTooLong));
        r.observe(true, t0 + Duration::from_secs(40));
        assert_eq!(r.check(t0 + Duration::from_secs(40)), Ok(()));
        // A new outage starts a new grace period.
        r.observe(false, t0 + Duration::from_secs(50));
        assert_eq!(r.check(t0 + Duration::from_secs(79)), Ok(()));
        assert_eq!(r.check(t0 + Duration::from_secs(80)), Err(NotReady::BrokerDownTooLong));
    }
}
