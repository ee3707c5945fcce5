//! One event through its handlers, and the decision that follows.
//!
//! Handlers of an outcome run in order. The names of those that already
//! succeeded travel with a retried message (header `x-dlr-done-handlers`),
//! so a retry resumes at the handler that failed instead of repeating side
//! effects; every handler is also idempotent on the event id, which covers
//! the remaining window (a crash after a success, before the ack).

use dlr_shared::ReceiptEvent;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::RouteTable;
use crate::handlers::{Handler, HandlerError, HandlerKind};
use crate::metrics::WorkerMetrics;
use crate::retry::RetryPolicy;

/// Why a message went to the parking lot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkReason {
    /// A handler said retrying cannot help.
    PermanentFailure,
    /// Transient failures outlasted the retry schedule.
    RetriesExhausted,
    /// The message is not a receipt event we can read.
    Unparseable,
}

impl ParkReason {
    /// Header and metrics value.
    pub fn as_str(self) -> &'static str {
        match self {
            ParkReason::PermanentFailure => "permanent_failure",
            ParkReason::RetriesExhausted => "retries_exhausted",
            ParkReason::Unparseable => "unparseable",
        }
    }
}

/// What to do with the message after dispatching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every handler succeeded: ack.
    Done,
    /// Schedule attempt `next_attempt` after `delay`, then ack.
    Retry {
        /// The attempt number the retried message will carry.
        next_attempt: u32,
        /// Delay queue to use.
        delay: Duration,
        /// Handlers that need not run again.
        done: Vec<HandlerKind>,
        /// The handler that failed.
        handler: HandlerKind,
        /// Its error.
        error: String,
    },
    /// Move to the parking lot, then ack.
    Park {
        /// Why.
        reason: ParkReason,
        /// The handler that failed, if any.
        handler: Option<HandlerKind>,
        /// Handlers that need not run again after a replay.
        done: Vec<HandlerKind>,
        /// The last error.
        error: String,
    },
}

/// Runs handlers according to the routing table.
pub struct Dispatcher {
    routes: RouteTable,
    handlers: HashMap<HandlerKind, Arc<dyn Handler>>,
    retry: RetryPolicy,
    metrics: WorkerMetrics,
}

impl Dispatcher {
    /// `handlers` must contain every kind the routes use.
    pub fn new(
        routes: RouteTable,
        handlers: HashMap<HandlerKind, Arc<dyn Handler>>,
        retry: RetryPolicy,
        metrics: WorkerMetrics,
    ) -> Self {
        Self { routes, handlers, retry, metrics }
    }

    /// Runs the handlers of `event`'s outcome that are not in `done`.
    /// `attempt` is 1 for the first delivery.
    pub async fn dispatch(&self, event: &ReceiptEvent, attempt: u32, mut done: Vec<HandlerKind>) -> Decision {
        for kind in self.routes.handlers(event.outcome) {
            if done.contains(kind) {
                continue;
            }
            let Some(handler) = self.handlers.get(kind) else {
                // Validated at start-up; kept as a park, not a panic.
                return Decision::Park {
                    reason: ParkReason::PermanentFailure,
                    handler: Some(*kind),
                    done,
                    error: format!("handler {kind} is not configured"),
                };
            };
            let started = Instant::now();
            let result = handler.handle(event).await;
            self.metrics
                .handler_duration
                .with_label_values(&[kind.as_str()])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    self.metrics.handler_results.with_label_values(&[kind.as_str(), "ok"]).inc();
                    done.push(*kind);
                }
                Err(error) => {
                    self.metrics
                        .handler_results
                        .with_label_values(&[kind.as_str(), error.result_label()])
                        .inc();
                    tracing::warn!(event_id = %event.event_id, handler = %kind, attempt, %error, "handler failed");
                    return self.after_failure(*kind, error, attempt, done);
                }
            }
        }
        Decision::Done
    }

    fn after_failure(
        &self,
        handler: HandlerKind,
        error: HandlerError,
        attempt: u32,
        done: Vec<HandlerKind>,
    ) -> Decision {
        match error {
            HandlerError::Permanent(error) => {
                Decision::Park { reason: ParkReason::PermanentFailure, handler: Some(handler), done, error }
            }
            HandlerError::Transient(error) => match self.retry.delay_after(attempt) {
                Some(delay) => Decision::Retry { next_attempt: attempt + 1, delay, done, handler, error },
                None => Decision::Park {
                    reason: ParkReason::RetriesExhausted,
                    handler: Some(handler),
                    done,
                    error,
                },
            },
        }
    }
}
