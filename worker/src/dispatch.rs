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
use std::time::Instant;

use crate::config::RouteTable;
use crate::handlers::{CallResult, Handler, HandlerError, HandlerKind};
use crate::metrics::WorkerMetrics;
use crate::parking::{Park, ParkReason};
use crate::retry::{Retry, RetryPolicy};

/// What to do with the message after dispatching. The consumer acts on it
/// as it is: [`retry::schedule`] and [`parking::park`] take these payloads.
///
/// [`retry::schedule`]: crate::retry::schedule
/// [`parking::park`]: crate::parking::park
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every handler succeeded: ack.
    Done,
    /// Put into a delay queue, then ack.
    Retry(Retry),
    /// Move to the parking lot, then ack.
    Park(Park),
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
                return Decision::Park(Park {
                    reason: ParkReason::PermanentFailure,
                    handler: Some(*kind),
                    attempts: attempt,
                    done,
                    error: format!("handler {kind} is not configured"),
                });
            };
            let started = Instant::now();
            let result = handler.handle(event).await;
            self.metrics
                .handler_duration
                .with_label_values(&[kind.as_str()])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    self.metrics
                        .handler_results
                        .with_label_values(&[kind.as_str(), CallResult::Ok.into()])
                        .inc();
                    done.push(*kind);
                }
                Err(error) => {
                    self.metrics
                        .handler_results
                        .with_label_values(&[kind.as_str(), error.result().into()])
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
        let (reason, error) = match error {
            HandlerError::Transient(failure) => match self.retry.delay_after(attempt) {
                Some(delay) => {
                    let error = failure.to_string();
                    return Decision::Retry(Retry { next_attempt: attempt + 1, delay, done, handler, error });
                }
                None => (ParkReason::RetriesExhausted, failure.to_string()),
            },
            HandlerError::Permanent(failure) => (ParkReason::PermanentFailure, failure.to_string()),
        };
        Decision::Park(Park { reason, handler: Some(handler), attempts: attempt, done, error })
    }
}
