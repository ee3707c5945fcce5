//! Retries: the schedule (how long to wait before attempt `n`) and the
//! publish that puts a message into its delay queue.
//!
//! Delays grow geometrically from the initial to the maximum delay over the
//! first [`RAMP_RETRIES`] retries, then stay at the maximum until the
//! attempts are used up. The plateau is what makes a long horizon cheap:
//! the defaults (19 attempts, 1 s ... 4 h) keep retrying for about 31 hours
//! (at least 24.7 h after jitter) with 12 delay queues, where a geometric
//! schedule over the same time would need dozens of queues or hour-long gaps
//! early on. Schedules of at most 13 attempts are purely geometric, as they
//! were before the plateau existed. Waiting is done by RabbitMQ, not in
//! memory: a message sits in a delay queue with a fixed TTL and
//! dead-letters back into the receipts queue, so a retry survives a worker
//! crash or a deploy.
//!
//! A receiver's `Retry-After` (429, 503) moves the retry to the first
//! delay of the schedule at or above it, never above the schedule's
//! maximum, and jitter never brings it below what the receiver asked for.
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

use crate::envelope::{self, HEADER_ATTEMPT, HEADER_DONE, HEADER_HANDLER, HEADER_LAST_ERROR, Step};
use crate::handlers::HandlerKind;

/// Share of a delay removed at random.
const JITTER: f64 = 0.2;

/// Retries over which the delays grow from the initial to the maximum
/// delay; later retries wait the maximum.
pub const RAMP_RETRIES: usize = 12;

/// The longest delay a queue can hold: RabbitMQ's message TTL is an
/// unsigned 32-bit count of milliseconds (about 49 days).
pub const MAX_DELAY: Duration = Duration::from_millis(u32::MAX as u64);

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
        let ramp = retries.min(RAMP_RETRIES);
        let delays = match ramp {
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
        let plateau = delays.last().copied().into_iter().cycle().take(retries - ramp);
        let delays = delays.iter().copied().chain(plateau).collect();
        Self { delays }
    }

    /// The longest a failing step keeps being retried before it parks:
    /// every delay at its shortest after jitter.
    pub fn horizon_after_jitter(&self) -> Duration {
        self.delays.iter().map(|d| d.mul_f64(1.0 - JITTER)).sum()
    }

    /// The same without jitter.
    pub fn horizon(&self) -> Duration {
        self.delays.iter().sum()
    }

    /// The delay to use instead of `scheduled` when the receiver asked to
    /// wait `retry_after`: the first delay of the schedule at or above it,
    /// at most the schedule's longest (the delay names a queue, so only
    /// the schedule's delays exist).
    pub fn delay_at_least(&self, scheduled: Duration, retry_after: Duration) -> Duration {
        if retry_after <= scheduled {
            return scheduled;
        }
        let longest = self.delays.iter().copied().max().unwrap_or(scheduled);
        let mut distinct = self.delays();
        distinct.sort();
        distinct.into_iter().find(|&d| d >= retry_after).unwrap_or(longest).max(scheduled)
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
    /// The shortest wait jitter may leave: what a receiver asked for with
    /// `Retry-After` (zero when nobody asked).
    pub not_before: Duration,
    /// Steps that need not run again.
    pub done: Vec<Step>,
    /// The handler that failed (metrics label).
    pub handler: HandlerKind,
    /// The step that failed: the handler, or its endpoint.
    pub step: Step,
    /// Its error.
    pub error: String,
}

/// Puts the message into the delay queue for `retry.delay`; it comes back
/// to the receipts queue when its (jittered) expiration passes (sharded: to
/// the shard of the provider's `message_id`). The caller acks the original
/// only after this returned `Ok`.
pub async fn schedule(
    publisher: &Publisher,
    topology: &Topology,
    message: &Delivery,
    message_id: &str,
    retry: &Retry,
) -> Result<(), PublishError> {
    let properties = envelope::rebuilt(&message.properties, |h| {
        h.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(retry.next_attempt)));
        insert_str(h, HEADER_DONE, &envelope::done_list(&retry.done));
        insert_str(h, HEADER_HANDLER, retry.step.as_str());
        insert_str(h, HEADER_LAST_ERROR, envelope::truncated(&retry.error));
    })
    .with_expiration(ShortString::from(expiration(retry).as_millis().to_string()));
    let (exchange, routing_key) = topology.retry_destination(retry.delay, message_id);
    envelope::publish_to_own(publisher, &exchange, &routing_key, &message.data, properties).await
}

/// The message's own expiration: the delay less jitter, but never less
/// than the receiver asked for (and never more than the queue's TTL).
fn expiration(retry: &Retry) -> Duration {
    RetryPolicy::jittered(retry.delay).max(retry.not_before.min(retry.delay))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_retries_for_a_day_even_after_jitter() {
        let policy = RetryPolicy::new(19, Duration::from_secs(1), Duration::from_secs(4 * 3600));
        assert!(policy.horizon_after_jitter() >= Duration::from_secs(24 * 3600), "{:?}", policy.horizon());
        assert_eq!(
            policy.delays().len(),
            RAMP_RETRIES,
            "one queue per ramp step, the plateau reuses the last"
        );
        assert_eq!(policy.delay_after(18), Some(Duration::from_secs(4 * 3600)));
        assert_eq!(policy.delay_after(19), None);
        assert_eq!(policy.delays().first(), Some(&Duration::from_secs(1)));
    }

    #[test]
    fn short_schedules_stay_geometric() {
        // 13 attempts: 12 retries, all on the ramp, as before the plateau.
        let policy = RetryPolicy::new(13, Duration::from_millis(100), Duration::from_secs(10));
        let delays = policy.delays();
        assert_eq!(delays.len(), 12);
        assert!(delays.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(delays.last(), Some(&Duration::from_secs(10)));
    }

    #[test]
    fn retry_after_picks_the_next_delay_at_or_above_it() {
        let policy = RetryPolicy::new(4, Duration::from_secs(1), Duration::from_secs(100));
        // Delays 1 s, 10 s, 100 s.
        assert_eq!(
            policy.delay_at_least(Duration::from_secs(1), Duration::from_secs(3)),
            Duration::from_secs(10)
        );
        assert_eq!(
            policy.delay_at_least(Duration::from_secs(1), Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        assert_eq!(
            policy.delay_at_least(Duration::from_secs(10), Duration::from_secs(2)),
            Duration::from_secs(10)
        );
        // Bounded by the schedule's maximum.
        assert_eq!(
            policy.delay_at_least(Duration::from_secs(1), Duration::from_secs(86_400)),
            Duration::from_secs(100)
        );
    }

    #[test]
    fn jitter_never_undercuts_retry_after() {
        let retry = Retry {
            next_attempt: 2,
            delay: Duration::from_secs(10),
            not_before: Duration::from_secs(9),
            done: vec![],
            handler: HandlerKind::Http,
            step: HandlerKind::Http.into(),
            error: String::new(),
        };
        for _ in 0..1000 {
            let e = expiration(&retry);
            assert!(e >= Duration::from_secs(9) && e <= Duration::from_secs(10), "{e:?}");
        }
    }

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
