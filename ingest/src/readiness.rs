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
//!
//! A live connection is not enough, though: a pod can be connected and still
//! unable to store anything (its node cut off from the queue's quorum, a
//! channel the broker keeps refusing). So publishes count too: when every
//! publish has failed for longer than the grace (alarms and unroutable
//! returns excepted), the pod is unready. Unready, it gets no traffic to
//! learn from, so the watcher then publishes a probe message once a second
//! (the worker drops probes, see [`dlr_shared::amqp::PROBE_MESSAGE_TYPE`]);
//! the first one stored makes the pod ready again. Long before the grace,
//! publishes failing while connected make the connection supervisor move to
//! the next broker address, which is what heals a pod on a cut-off node.

use dlr_shared::amqp::{Publisher, Topology};
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
    /// How long publishes had been failing at the last sample.
    failing_for: Mutex<Option<Duration>>,
}

/// Why the pod is not ready (the `/readyz` body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// The broker connection has not been established since start.
    NotConnectedYet,
    /// The connection has been down for longer than the grace period.
    BrokerDownTooLong,
    /// Connected, but every publish has failed for longer than the grace.
    PublishesFailing,
}

impl NotReady {
    /// Short text for the probe's body.
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::NotConnectedYet => "broker not connected yet",
            NotReady::BrokerDownTooLong => "broker connection down longer than the readiness grace",
            NotReady::PublishesFailing => "every publish has failed for longer than the readiness grace",
        }
    }
}

impl BrokerReadiness {
    /// Starts as never connected; `grace` is how long a lost connection is tolerated.
    pub fn new(grace: Duration) -> Self {
        Self { grace, link: Mutex::new(Link::NeverConnected), failing_for: Mutex::new(None) }
    }

    /// Records how long publishes have been failing (`None`: the last one succeeded).
    pub fn observe_publishes(&self, failing_for: Option<Duration>) {
        *self.failing_for.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = failing_for;
    }

    /// True when publishes have failed for longer than the grace.
    fn publishes_failing(&self) -> bool {
        self.failing_for
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some_and(|failing| failing > self.grace)
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
            Link::Up if self.publishes_failing() => Err(NotReady::PublishesFailing),
            Link::Up => Ok(()),
            Link::NeverConnected => Err(NotReady::NotConnectedYet),
            Link::DownSince(since) if now.saturating_duration_since(since) < self.grace => Ok(()),
            Link::DownSince(_) => Err(NotReady::BrokerDownTooLong),
        }
    }
}

/// Publishes failing this long while connected make the supervisor move to
/// the next broker address (bounded below by the confirm timeout, so that
/// one stalled confirm is not enough).
const RECONNECT_AFTER_FAILING: Duration = Duration::from_secs(5);

/// Samples the broker connection and the publisher into `readiness` until
/// `cancel` fires. A blocked connection is still connected: it keeps the
/// pod ready. See the module documentation for the probe and the reconnect.
pub async fn watch(
    readiness: std::sync::Arc<BrokerReadiness>,
    publisher: std::sync::Arc<Publisher>,
    topology: std::sync::Arc<Topology>,
    confirm_timeout: Duration,
    cancel: CancellationToken,
) {
    let broker = publisher.broker().clone();
    let reconnect_after = RECONNECT_AFTER_FAILING.max(confirm_timeout * 2);
    let mut last_reconnect: Option<Instant> = None;
    let mut last_probe: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let connected = broker.current().is_some();
        readiness.observe(connected, now);
        let failing_for = publisher.failing_for(now);
        readiness.observe_publishes(failing_for);
        if let Some(failing) = failing_for
            && connected
        {
            if failing > reconnect_after && last_reconnect.is_none_or(|at| now - at > reconnect_after) {
                tracing::warn!(failing_for = ?failing, "every publish has been failing on this broker connection; moving to the next address");
                broker.request_reconnect();
                last_reconnect = Some(now);
            }
            if readiness.publishes_failing() && last_probe.is_none_or(|at| now - at >= PROBE_INTERVAL) {
                last_probe = Some(now);
                let (publisher, topology) = (publisher.clone(), topology.clone());
                // Its result lands in the publisher's health, read at the next sample.
                tokio::spawn(async move {
                    // Sharded, the probe's (random) id picks a shard.
                    let properties = dlr_shared::amqp::probe_properties();
                    let id = properties.message_id().as_ref().map(|id| id.to_string()).unwrap_or_default();
                    let routing_key = topology.receipt_routing_key(&id);
                    let _ = publisher.publish(&topology.exchange, routing_key, b"{}", properties).await;
                });
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(SAMPLE_INTERVAL) => {}
        }
    }
}

/// How often an unready pod probes the broker with a publish.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

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
    fn failing_publishes_make_a_connected_pod_unready_after_the_grace_only() {
        let r = BrokerReadiness::new(GRACE);
        let t0 = Instant::now();
        r.observe(true, t0);
        r.observe_publishes(Some(GRACE));
        assert_eq!(r.check(t0), Ok(()));
        r.observe_publishes(Some(GRACE + Duration::from_secs(1)));
        assert_eq!(r.check(t0), Err(NotReady::PublishesFailing));
        r.observe_publishes(None);
        assert_eq!(r.check(t0), Ok(()));
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
