//! Nonces already seen, for signatures that carry no time (Plivo V2).
//!
//! A V2 signature covers only the URL and a nonce, so a captured header and
//! nonce would verify any parameters again and again. When V2 is accepted at
//! all (`PLIVO_ACCEPT_V2`), each nonce verifies once per ingest process within
//! the freshness window. Bounded: past the capacity the oldest entry is
//! forgotten (only genuinely signed requests are remembered, so only the
//! provider's own traffic can fill it).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Nonces seen within the last `ttl`, at most `capacity` of them.
#[derive(Debug)]
pub struct NonceCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<(Instant, String)>,
    set: HashSet<String>,
}

impl NonceCache {
    /// A cache remembering each nonce for `ttl`, at most `capacity` at once.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { ttl, capacity: capacity.max(1), inner: Mutex::new(Seen::default()) }
    }

    /// True the first time `nonce` is offered within the window, false after.
    pub fn first_use(&self, nonce: &str, now: Instant) -> bool {
        let mut seen = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((at, _)) = seen.order.front() {
            if now.saturating_duration_since(*at) <= self.ttl && seen.order.len() < self.capacity {
                break;
            }
            if let Some((_, old)) = seen.order.pop_front() {
                seen.set.remove(&old);
            }
        }
        if !seen.set.insert(nonce.to_owned()) {
            return false;
        }
        seen.order.push_back((now, nonce.to_owned()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_verifies_once_within_the_window() {
        let cache = NonceCache::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        assert!(cache.first_use("a", t0));
        assert!(!cache.first_use("a", t0 + Duration::from_secs(59)));
        assert!(cache.first_use("a", t0 + Duration::from_secs(61)), "forgotten after the window");
        assert!(cache.first_use("b", t0 + Duration::from_secs(61)));
        assert!(cache.first_use("c", t0 + Duration::from_secs(61)), "the oldest is forgotten at capacity");
    }
}
