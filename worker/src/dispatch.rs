//! One event through its handlers, and the decision that follows.
//!
//! Handlers of an outcome run in order, or all at once when configured
//! ([`HandlerOrder`]). The http handler fans out into one step per webhook
//! endpoint that wants the event ([`Step`]). The steps that already
//! succeeded travel with a retried message (header `x-dlr-done-handlers`),
//! so a retry resumes at the steps that failed instead of repeating side
//! effects (one endpoint failing never re-sends to another that succeeded);
//! every handler is also idempotent on the event id, which covers the
//! remaining window (a crash after a success, before the ack).

use dlr_shared::ReceiptEvent;
use dlr_shared::telemetry::SPAN_TARGET;
use futures_util::future::join_all;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use tracing::field::Empty;

use crate::config::{HandlerOrder, RouteTable};
use crate::envelope::Step;
use crate::handlers::http::Endpoint;
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

/// One step to run for an event.
#[derive(Clone, Copy)]
enum Work<'a> {
    Handler(HandlerKind, &'a dyn Handler),
    Endpoint(&'a Endpoint),
}

impl Work<'_> {
    fn step(&self) -> Step {
        match self {
            Work::Handler(kind, _) => Step::Handler(*kind),
            Work::Endpoint(endpoint) => endpoint.step(),
        }
    }
}

/// A step that failed, and how long its receiver asked us to wait.
struct Failed {
    step: Step,
    error: HandlerError,
    retry_after: Option<Duration>,
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

    /// Runs the steps of `event`'s outcome that are not in `done`.
    /// `attempt` is 1 for the first delivery.
    ///
    /// A handler with endpoints (http) is one group of steps, one per
    /// endpoint that wants the event, run at once: in sequential order the
    /// next handler waits for the whole group, but the endpoints never wait
    /// for each other, and each one's success is kept on its own.
    pub async fn dispatch(&self, event: &ReceiptEvent, attempt: u32, mut done: Vec<Step>) -> Decision {
        let mut groups: Vec<Vec<Work<'_>>> = Vec::new();
        for &kind in self.routes.handlers(event.outcome) {
            if done.contains(&Step::Handler(kind)) {
                continue;
            }
            let Some(handler) = self.handlers.get(&kind) else {
                // Validated at start-up; kept as a park, not a panic.
                return Decision::Park(Park {
                    reason: ParkReason::PermanentFailure,
                    handler: Some(Step::Handler(kind)),
                    attempts: attempt,
                    done,
                    error: format!("handler {kind} is not configured"),
                });
            };
            let endpoints = handler.endpoints();
            if endpoints.is_empty() {
                groups.push(vec![Work::Handler(kind, handler.as_ref())]);
            } else {
                let group: Vec<Work<'_>> = endpoints
                    .iter()
                    .filter(|e| e.wants(event) && !done.contains(&e.step()))
                    .map(Work::Endpoint)
                    .collect();
                if !group.is_empty() {
                    groups.push(group);
                }
            }
        }
        let mut failures = Vec::new();
        match self.routes.order() {
            HandlerOrder::Sequential => {
                for group in groups {
                    failures = self.run(&group, event, attempt, &mut done).await;
                    if !failures.is_empty() {
                        break;
                    }
                }
            }
            HandlerOrder::Concurrent => {
                let all: Vec<Work<'_>> = groups.into_iter().flatten().collect();
                failures = self.run(&all, event, attempt, &mut done).await;
            }
        }
        if failures.is_empty() { Decision::Done } else { self.after_failures(failures, attempt, done) }
    }

    /// Runs `work` at once; successes go to `done`, failures come back in
    /// `work`'s order.
    async fn run(
        &self,
        work: &[Work<'_>],
        event: &ReceiptEvent,
        attempt: u32,
        done: &mut Vec<Step>,
    ) -> Vec<Failed> {
        let results = join_all(work.iter().map(|&w| {
            let span = step_span(w);
            let call = self.call(w, event, attempt, span.clone());
            call.instrument(span)
        }))
        .await;
        let mut failures = Vec::new();
        for (w, (result, retry_after)) in work.iter().zip(results) {
            match result {
                Ok(()) => done.push(w.step()),
                Err(error) => failures.push(Failed { step: w.step(), error, retry_after }),
            }
        }
        failures
    }

    /// One step, measured and counted under its handler.
    async fn call(
        &self,
        work: Work<'_>,
        event: &ReceiptEvent,
        attempt: u32,
        span: tracing::Span,
    ) -> (Result<(), HandlerError>, Option<Duration>) {
        let started = Instant::now();
        let (result, retry_after) = match work {
            Work::Handler(_, handler) => (handler.handle(event).await, None),
            Work::Endpoint(endpoint) => {
                let attempt = endpoint.deliver(event).await;
                (attempt.result, attempt.retry_after)
            }
        };
        let step = work.step();
        let kind = step.handler().as_str();
        self.metrics.handler_duration.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
        let label: &str = match &result {
            Ok(()) => CallResult::Ok.into(),
            Err(error) => error.result().into(),
        };
        self.metrics.handler_results.with_label_values(&[kind, label]).inc();
        span.record("dlr.result", label);
        if result.is_err() {
            dlr_shared::telemetry::spans::failed(&span);
        }
        if let Err(error) = &result {
            tracing::warn!(event_id = %event.event_id, handler = %step, attempt, %error, "handler failed");
        }
        (result, retry_after)
    }

    /// A permanent failure parks the event (retrying cannot cure it; the
    /// steps that failed transiently run again when it is replayed).
    /// Otherwise the first failure in route order decides, and the longest
    /// `Retry-After` of any failed endpoint moves the retry later.
    fn after_failures(&self, failures: Vec<Failed>, attempt: u32, done: Vec<Step>) -> Decision {
        let retry_after = failures.iter().filter_map(|f| f.retry_after).max();
        let first = failures.iter().position(|f| matches!(f.error, HandlerError::Permanent(_))).unwrap_or(0);
        let Some(Failed { step, error, .. }) = failures.into_iter().nth(first) else {
            return Decision::Done;
        };
        let (reason, error) = match error {
            HandlerError::Transient(failure) => match self.retry.delay_after(attempt) {
                Some(scheduled) => {
                    let (delay, not_before) = match retry_after {
                        Some(asked) => {
                            let delay = self.retry.delay_at_least(scheduled, asked);
                            (delay, asked.min(delay))
                        }
                        None => (scheduled, Duration::ZERO),
                    };
                    return Decision::Retry(Retry {
                        next_attempt: attempt + 1,
                        delay,
                        not_before,
                        done,
                        handler: step.handler(),
                        step,
                        error: failure.to_string(),
                    });
                }
                None => (ParkReason::RetriesExhausted, failure.to_string()),
            },
            HandlerError::Permanent(failure) => (ParkReason::PermanentFailure, failure.to_string()),
        };
        Decision::Park(Park { reason, handler: Some(step), attempts: attempt, done, error })
    }
}

/// The span of one step: a webhook call is a client span, the amqp
/// handler's publish a producer span, the others internal work.
fn step_span(work: Work<'_>) -> tracing::Span {
    let step = work.step();
    let kind = match step {
        Step::Endpoint(_) => "client",
        Step::Handler(HandlerKind::Amqp) => "producer",
        Step::Handler(_) => "internal",
    };
    tracing::info_span!(
        target: SPAN_TARGET,
        "handler",
        otel.name = step.as_str(),
        otel.kind = kind,
        otel.status_code = Empty,
        dlr.handler = step.handler().as_str(),
        dlr.step = step.as_str(),
        dlr.result = Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::Failure;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::Barrier;

    type Answer = fn() -> Result<(), HandlerError>;

    /// One scripted handler: its kind, its answer, and the barrier it waits at.
    type ScriptStep = (HandlerKind, Answer, Option<Arc<Barrier>>);

    /// A handler whose answer is scripted; it counts its calls and can wait
    /// at a barrier shared with other handlers.
    struct Scripted {
        kind: HandlerKind,
        answer: Answer,
        meet: Option<Arc<Barrier>>,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Handler for Scripted {
        fn kind(&self) -> HandlerKind {
            self.kind
        }
        async fn handle(&self, _event: &ReceiptEvent) -> Result<(), HandlerError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(barrier) = &self.meet {
                barrier.wait().await;
            }
            (self.answer)()
        }
    }

    fn ok() -> Result<(), HandlerError> {
        Ok(())
    }
    fn transient() -> Result<(), HandlerError> {
        Err(HandlerError::Transient(Failure::new("503 from the receiver")))
    }
    fn permanent() -> Result<(), HandlerError> {
        Err(HandlerError::Permanent(Failure::new("422 from the receiver")))
    }

    fn event() -> ReceiptEvent {
        ReceiptEvent::from_json(
            br#"{"schema_version":1,"event_id":"0b9f6e0c3a3f4e1d8c2b7a6f5e4d3c2b","provider":"vonage-sms",
                "message_id":"02000000FEA5EE9B","outcome":"delivered","status":"delivered","status_recognised":true,
                "received_at":"2026-11-30T10:00:00Z","raw":{}}"#,
        )
        .expect("a valid event")
    }

    /// A dispatcher whose delivered route is `script`'s handlers in order.
    fn dispatcher(order: HandlerOrder, script: Vec<ScriptStep>) -> (Dispatcher, Vec<Arc<Scripted>>) {
        let kinds: Vec<HandlerKind> = script.iter().map(|(kind, _, _)| *kind).collect();
        let scripted: Vec<Arc<Scripted>> = script
            .into_iter()
            .map(|(kind, answer, meet)| Arc::new(Scripted { kind, answer, meet, calls: AtomicUsize::new(0) }))
            .collect();
        let handlers = scripted.iter().map(|h| (h.kind, h.clone() as Arc<dyn Handler>)).collect();
        let retry = RetryPolicy::new(3, Duration::from_millis(100), Duration::from_secs(1));
        let metrics = WorkerMetrics::new().expect("metrics register");
        (Dispatcher::new(RouteTable::uniform(kinds, order), handlers, retry, metrics), scripted)
    }

    #[tokio::test]
    async fn concurrent_handlers_run_at_the_same_time() {
        // Each handler waits until the other has started: run one after the
        // other, they would wait forever.
        let meet = Arc::new(Barrier::new(2));
        let (dispatcher, _) = dispatcher(
            HandlerOrder::Concurrent,
            vec![(HandlerKind::Postgres, ok, Some(meet.clone())), (HandlerKind::Http, ok, Some(meet))],
        );
        let decision =
            tokio::time::timeout(Duration::from_secs(5), dispatcher.dispatch(&event(), 1, vec![])).await;
        assert_eq!(decision.ok(), Some(Decision::Done));
    }

    #[tokio::test]
    async fn concurrent_failure_keeps_the_others_successes() {
        let (dispatcher, handlers) = dispatcher(
            HandlerOrder::Concurrent,
            vec![
                (HandlerKind::Postgres, transient, None),
                (HandlerKind::Amqp, ok, None),
                (HandlerKind::Http, ok, None),
            ],
        );
        let Decision::Retry(retry) = dispatcher.dispatch(&event(), 1, vec![]).await else {
            panic!("a transient failure is retried");
        };
        assert_eq!(retry.handler, HandlerKind::Postgres);
        assert_eq!(retry.done, vec![Step::Handler(HandlerKind::Amqp), Step::Handler(HandlerKind::Http)]);
        assert_eq!(retry.next_attempt, 2);
        assert!(handlers.iter().all(|h| h.calls.load(Ordering::SeqCst) == 1));

        // The retry runs only what failed.
        let decision = dispatcher.dispatch(&event(), 2, retry.done).await;
        assert!(matches!(decision, Decision::Retry(ref r) if r.done.len() == 2));
        assert_eq!(handlers[0].calls.load(Ordering::SeqCst), 2);
        assert_eq!(handlers[1].calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_permanent_failure_parks_even_after_a_transient_one() {
        let (dispatcher, _) = dispatcher(
            HandlerOrder::Concurrent,
            vec![
                (HandlerKind::Postgres, transient, None),
                (HandlerKind::Http, permanent, None),
                (HandlerKind::Log, ok, None),
            ],
        );
        let Decision::Park(park) = dispatcher.dispatch(&event(), 1, vec![]).await else {
            panic!("a permanent failure parks");
        };
        assert_eq!(park.reason, ParkReason::PermanentFailure);
        assert_eq!(park.handler, Some(Step::Handler(HandlerKind::Http)));
        assert_eq!(park.done, vec![Step::Handler(HandlerKind::Log)]);
    }

    #[tokio::test]
    async fn sequential_stops_at_the_first_failure() {
        let (dispatcher, handlers) = dispatcher(
            HandlerOrder::Sequential,
            vec![
                (HandlerKind::Postgres, ok, None),
                (HandlerKind::Amqp, transient, None),
                (HandlerKind::Http, ok, None),
            ],
        );
        let Decision::Retry(retry) = dispatcher.dispatch(&event(), 1, vec![]).await else {
            panic!("a transient failure is retried");
        };
        assert_eq!(retry.handler, HandlerKind::Amqp);
        assert_eq!(retry.done, vec![Step::Handler(HandlerKind::Postgres)]);
        assert_eq!(handlers[2].calls.load(Ordering::SeqCst), 0, "http must wait for amqp");
    }
}
