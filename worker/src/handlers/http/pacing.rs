//! An endpoint's `max_per_second`: requests leave at most that often, so
//! that the backlog drained after an outage does not flatten the receiver.
//!
//! Each request reserves the next free slot (one every `1 / rate` seconds)
//! and waits for it; no bursts. Waiting holds the event's prefetch slot,
//! which is the back-pressure we want: the worker takes no more events than
//! its endpoints can be sent.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Spaces requests out.
pub struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    /// At most `per_second` requests per second (> 0).
    pub fn per_second(per_second: f64) -> Self {
        Self { interval: Duration::from_secs_f64(1.0 / per_second), next: Mutex::new(Instant::now()) }
    }

    /// Waits for this request's slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spaces_requests_at_the_rate() {
        let pacer = Pacer::per_second(100.0);
        let started = Instant::now();
        for _ in 0..11 {
            pacer.wait().await;
        }
        // The first goes at once, the next ten at least 10 ms apart.
        assert!(started.elapsed() >= Duration::from_millis(100), "{:?}", started.elapsed());
    }
}
