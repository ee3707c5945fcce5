//! A circuit breaker per endpoint.
//!
//! While a receiver is down, every event would still make its attempt and
//! wait for its timeout: a dead endpoint would cost a full attempt per
//! event per retry step, and the receiver would be hammered by the whole
//! backlog the moment it comes back. After `threshold` consecutive failures
//! (connect errors, timeouts, 5xx) the circuit opens: events for the
//! endpoint are scheduled for their next retry without an HTTP call. After
//! the cool-down, one real event goes through as a probe; its success
//! closes the circuit, its failure opens it for another cool-down.
//!
//! Answers that show the receiver is up (2xx, 4xx, 429, redirects) close
//! the circuit and reset the count even when the event itself failed.
//! State is per worker process: each replica finds out on its own.

use prometheus::IntGaugeVec;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The states, as the `state` label of `dlr_worker_webhook_circuit_state`.
pub const STATES: [&str; 3] = ["closed", "open", "half_open"];

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out since `since`.
    HalfOpen {
        since: Instant,
    },
}

impl State {
    fn label(self) -> &'static str {
        match self {
            State::Closed { .. } => STATES[0],
            State::Open { .. } => STATES[1],
            State::HalfOpen { .. } => STATES[2],
        }
    }
}

/// Whether a request may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go.
    Pass,
    /// The one request after the cool-down.
    Probe,
    /// Open: do not call; schedule the event's next retry.
    Skip,
}

/// What an answer says about the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answered (any status but 5xx).
    Up,
    /// Connect error, timeout or 5xx.
    Down,
}

/// One endpoint's breaker.
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    /// A probe that never reports back (its event's task was dropped) is
    /// given up after this, and the next event probes instead.
    probe_timeout: Duration,
    state: Mutex<State>,
    gauge: IntGaugeVec,
    endpoint: &'static str,
}

impl Breaker {
    /// `threshold` 0 never opens. `gauge` is `dlr_worker_webhook_circuit_state`.
    pub fn new(
        threshold: u32,
        cooldown: Duration,
        request_timeout: Duration,
        gauge: IntGaugeVec,
        endpoint: &'static str,
    ) -> Self {
        let breaker = Self {
            threshold,
            cooldown,
            probe_timeout: request_timeout + cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
            gauge,
            endpoint,
        };
        breaker.show(State::Closed { failures: 0 });
        breaker
    }

    fn show(&self, state: State) {
        for label in STATES {
            self.gauge.with_label_values(&[self.endpoint, label]).set(i64::from(label == state.label()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a request may go out now.
    pub fn admit(&self) -> Admission {
        let now = Instant::now();
        let mut state = self.lock();
        let admission = match *state {
            State::Closed { .. } => return Admission::Pass,
            State::Open { until } if now < until => Admission::Skip,
            State::HalfOpen { since } if now.duration_since(since) < self.probe_timeout => Admission::Skip,
            State::Open { .. } | State::HalfOpen { .. } => {
                *state = State::HalfOpen { since: now };
                Admission::Probe
            }
        };
        let shown = *state;
        drop(state);
        self.show(shown);
        admission
    }

    /// Records the answer to a request that `admit` let through.
    pub fn record(&self, admission: Admission, health: Health) {
        let mut state = self.lock();
        let next = match (health, *state) {
            (Health::Up, _) => State::Closed { failures: 0 },
            (Health::Down, State::Closed { failures }) => {
                let failures = failures.saturating_add(1);
                if self.threshold > 0 && failures >= self.threshold {
                    State::Open { until: Instant::now() + self.cooldown }
                } else {
                    State::Closed { failures }
                }
            }
            (Health::Down, State::HalfOpen { .. }) if admission == Admission::Probe => {
                State::Open { until: Instant::now() + self.cooldown }
            }
            // A request let through before the circuit opened: already counted.
            (Health::Down, other) => other,
        };
        let changed = next.label() != state.label();
        *state = next;
        drop(state);
        // The gauge only moves with the state: no label lookups per request.
        if changed {
            self.show(next);
            match next {
                State::Open { .. } => tracing::warn!(
                    endpoint = self.endpoint,
                    cooldown = ?self.cooldown,
                    "endpoint circuit open: events are scheduled for their next retry without a call"
                ),
                State::Closed { .. } => tracing::info!(endpoint = self.endpoint, "endpoint circuit closed"),
                State::HalfOpen { .. } => {}
            }
        }
    }

    /// Consecutive failures before the circuit opens (for messages).
    pub fn threshold(&self) -> u32 {
        self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn breaker(threshold: u32, cooldown: Duration) -> (Breaker, IntGaugeVec) {
        let gauge =
            IntGaugeVec::new(Opts::new("g", "g"), &["endpoint", "state"]).unwrap_or_else(|_| panic!("gauge"));
        (Breaker::new(threshold, cooldown, Duration::from_millis(50), gauge.clone(), "crm"), gauge)
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_once_after_the_cooldown() {
        let (b, gauge) = breaker(3, Duration::from_millis(40));
        for _ in 0..2 {
            assert_eq!(b.admit(), Admission::Pass);
            b.record(Admission::Pass, Health::Down);
        }
        // A success in between resets the count.
        b.record(Admission::Pass, Health::Up);
        for _ in 0..3 {
            assert_eq!(b.admit(), Admission::Pass);
            b.record(Admission::Pass, Health::Down);
        }
        assert_eq!(b.admit(), Admission::Skip);
        assert_eq!(gauge.with_label_values(&["crm", "open"]).get(), 1);
        assert_eq!(gauge.with_label_values(&["crm", "closed"]).get(), 0);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.admit(), Admission::Skip, "only one probe at a time");
        b.record(Admission::Probe, Health::Down);
        assert_eq!(b.admit(), Admission::Skip, "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(b.admit(), Admission::Probe);
        b.record(Admission::Probe, Health::Up);
        assert_eq!(b.admit(), Admission::Pass);
        assert_eq!(gauge.with_label_values(&["crm", "closed"]).get(), 1);
    }

    #[test]
    fn a_lost_probe_is_replaced() {
        let (b, _) = breaker(1, Duration::from_millis(10));
        b.record(Admission::Pass, Health::Down);
        std::thread::sleep(Duration::from_millis(15));
        assert_eq!(b.admit(), Admission::Probe);
        // Never recorded; after request timeout + cool-down another event probes.
        std::thread::sleep(Duration::from_millis(70));
        assert_eq!(b.admit(), Admission::Probe);
    }

    #[test]
    fn threshold_zero_never_opens() {
        let (b, _) = breaker(0, Duration::from_secs(60));
        for _ in 0..100 {
            b.record(Admission::Pass, Health::Down);
        }
        assert_eq!(b.admit(), Admission::Pass);
    }
}
