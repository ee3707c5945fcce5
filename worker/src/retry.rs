//! Retries: the schedule (how long to wait before attempt `n`) and the
//! publish that puts a message into its delay queue.
//!
//! Delays grow geometrically from the initial to the maximum delay over the
//! configured attempts (defaults: 8 attempts, 1 s ... 10 min). Waiting is
//! done by RabbitMQ, not in memory: a message sits in a delay queue with a
//! fixed TTL and dead-letters back into the receipts queue, so a retry
//! survives a worker crash or a deploy.
//!
//! Jitter: each message also carries a per-message expiration up to 20 %
//! shorter than its queue's TTL, so retries of one outage spread out
//! instead of hammering the receiver in lock-step. RabbitMQ expires only at
//! the head of a queue, so a message can wait behind one with more jitter;
//! that error is bounded by the same 20 %.

use dlr_shared::amqp::{PublishError, Publisher, Topology, insert_str};
use lapin::message::Delivery;
use lapin::types::{AMQPValue, ShortString};
use rand::Rng;
use std::time::Duration;

use crate::envelope::{self, HEADER_ATTEMPT, HEADER_DONE, HEADER_HANDLER, HEADER_LAST_ERROR};
use crate::handlers::HandlerKind;

/// Share of a delay removed at random.
const JITTER: f64 = 0.2;

/// The delays between attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    delays: Vec<Duration>,
}

impl RetryPolicy {
    /// `max_attempts` includes the first try; there are `max_attempts - 1`
    /// retries, the first after `initial`, the last after `max`.
    pub fn new(max_attempts: u32, initial: Duration, max: Duration) -> Self {
        let retries = max_attempts.saturating_sub(1) as usize;
        let delays = match retries {
            0 => Vec::new(),
            1 => vec![initial],
            n => {
                let ratio = (max.as_secs_f64() / initial.as_secs_f64()).powf(1.0 / (n - 1) as f64);
                (0..n)
                    .map(|i| {
                        let secs = initial.as_secs_f64() * ratio.powi(i as i32);
                        // Round to whole milliseconds: the delay names a queue.
                        Duration::from_millis((secs * 1000.0).round() as u64).min(max)
                    })
                    .collect()
            }
        };
        Self { delays }
    }

    /// Every distinct delay, for declaring the delay queues.
    pub fn delays(&self) -> Vec<Duration> {
        let mut delays = self.delays.clone();
        delays.dedup();
        delays
    }

    /// The delay after failed attempt `attempt` (1-based), or `None` when
    /// the attempts are used up and the event must be parked.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt == 0 {
            return self.delays.first().copied();
        }
        self.delays.get(attempt as usize - 1).copied()
    }

    /// A random expiration between 80 % and 100 % of `delay`.
    pub fn jittered(delay: Duration) -> Duration {
        let factor = 1.0 - rand::rng().random_range(0.0..JITTER);
        Duration::from_millis((delay.as_millis() as f64 * factor).round() as u64)
    }
}

/// A retry the dispatcher decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// The attempt number the retried message will carry.
    pub next_attempt: u32,
    /// Delay queue to use.
    pub delay: Duration,
    /// Handlers that need not run again.
    pub done: Vec<HandlerKind>,
    /// The handler that failed.
    pub handler: HandlerKind,
    /// Its error.
    pub error: String,
}

/// Puts the message into the delay queue for `retry.delay`; it comes back
/// to the receipts queue when its (jittered) expiration passes. The caller
/// acks the original only after this returned `Ok`.
pub async fn schedule(
    publisher: &Publisher,
    topology: &Topology,
    message: &Delivery,
    retry: &Retry,
) -> Result<(), PublishError> {
    let properties = envelope::rebuilt(&message.properties, |h| {
        h.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(retry.next_attempt)));
        insert_str(h, HEADER_DONE, &envelope::done_list(&retry.done));
        insert_str(h, HEADER_HANDLER, retry.handler.as_str());
        insert_str(h, HEADER_LAST_ERROR, envelope::truncated(&retry.error));
    })
    .with_expiration(ShortString::from(RetryPolicy::jittered(retry.delay).as_millis().to_string()));
    envelope::publish_to_own_queue(publisher, &topology.retry_queue(retry.delay), &message.data, properties)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_spans_one_second_to_ten_minutes() {
        let policy = RetryPolicy::new(8, Duration::from_secs(1), Duration::from_secs(600));
        let delays = policy.delays();
        assert_eq!(delays.len(), 7);
        assert_eq!(delays.first(), Some(&Duration::from_secs(1)));
        assert_eq!(delays.last(), Some(&Duration::from_secs(600)));
        assert!(delays.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(policy.delay_after(7), Some(Duration::from_secs(600)));
        assert_eq!(policy.delay_after(8), None);
    }

    #[test]
    fn one_attempt_means_no_retry() {
        let policy = RetryPolicy::new(1, Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!(policy.delay_after(1), None);
        assert!(policy.delays().is_empty());
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            let d = RetryPolicy::jittered(Duration::from_secs(10));
            assert!(d <= Duration::from_secs(10) && d >= Duration::from_secs(8), "{d:?}");
        }
    }
}
