//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>) across our
//! hops: an HTTP request into ingest, the AMQP message to the worker (and
//! through its delay queues and parking lot, whose copies keep the
//! message's headers), every webhook request and every event the amqp
//! handler publishes.
//!
//! Two modes, decided once at start-up:
//! - exporting: our spans are real, an incoming `traceparent` becomes their
//!   parent, and what we send on names our own span, so a receiver's trace
//!   shows every hop in between;
//! - not exporting: no span is built, but a valid incoming `traceparent` and
//!   `tracestate` are passed on unchanged (the specification lets a
//!   component that does not take part forward them as received). A
//!   caller's trace then still joins its receiver's, without our hops. The
//!   cost is parsing one header and copying ~55 bytes per message, and
//!   nothing at all when none came in.
//!
//! Values are parsed by OpenTelemetry's own propagator and written back in
//! canonical form: a malformed header is dropped, never forwarded.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use lapin::types::FieldTable;

use crate::amqp::{header_str, insert_str};

/// The `tracing` target of every span meant for export. Log filters turn
/// it on only while exporting, so with export off these spans are never
/// built (the macros return a disabled span after one atomic load).
pub const SPAN_TARGET: &str = "dlr_trace";

/// Header names, as HTTP and AMQP headers carry them.
pub const TRACEPARENT: &str = "traceparent";
/// See [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Set by [`super::init`].
pub(super) fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// True when spans are exported in this process.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

tokio::task_local! {
    /// The context passed through while not exporting.
    static PASSED_THROUGH: Option<TraceHeaders>;
}

/// A valid `traceparent`, and the `tracestate` that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    /// `00-<trace id>-<parent id>-<flags>`.
    pub traceparent: String,
    /// Vendor entries, if any.
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// Reads the two headers through `get` (case-insensitive lookups are the
    /// caller's: HTTP header maps are). `None` without a valid traceparent.
    pub fn read<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        // The common case, nothing came in, costs one lookup.
        get(TRACEPARENT)?;
        let cx = TraceContextPropagator::new().extract(&Lookup::new(get));
        Self::of(&cx)
    }

    /// The context of AMQP message headers.
    pub fn from_amqp(headers: Option<&FieldTable>) -> Option<Self> {
        Self::read(|name| header_str(headers, name))
    }

    /// Writes both headers into AMQP message headers (replacing any).
    pub fn insert_into_amqp(&self, headers: &mut FieldTable) {
        insert_str(headers, TRACEPARENT, &self.traceparent);
        match &self.tracestate {
            Some(state) => insert_str(headers, TRACESTATE, state),
            // A stale one (from before a hop that had none) must go.
            None if headers.contains_key(TRACESTATE) => {
                let kept = headers.inner().iter().filter(|(name, _)| name.as_str() != TRACESTATE);
                *headers = kept
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect::<std::collections::BTreeMap<_, _>>()
                    .into();
            }
            None => {}
        }
    }

    /// The headers as name/value pairs, for an HTTP request.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        std::iter::once((TRACEPARENT, self.traceparent.as_str()))
            .chain(self.tracestate.as_deref().map(|state| (TRACESTATE, state)))
    }

    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }

    /// The parent (span) id, 16 hex digits.
    pub fn parent_id(&self) -> &str {
        self.traceparent.get(36..52).unwrap_or_default()
    }

    fn of(cx: &opentelemetry::Context) -> Option<Self> {
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut written = Written::default();
        TraceContextPropagator::new().inject_context(cx, &mut written);
        let traceparent = written.traceparent?;
        Some(Self { traceparent, tracestate: written.tracestate.filter(|s| !s.is_empty()) })
    }

    fn context(&self) -> opentelemetry::Context {
        TraceContextPropagator::new().extract(&Lookup::new(|name: &str| match name {
            TRACEPARENT => Some(self.traceparent.as_str()),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }))
    }
}

/// What to send on from here: while exporting, the current span (so the
/// next hop is its child); otherwise what came in, unchanged. `None` when
/// there is no trace.
pub fn current() -> Option<TraceHeaders> {
    if exporting() {
        let span = tracing::Span::current();
        if span.is_disabled() {
            return None;
        }
        TraceHeaders::of(&span.context())
    } else {
        PASSED_THROUGH.try_with(Clone::clone).ok().flatten()
    }
}

/// A future running in a span, within a continued trace (see [`continued`]).
pub type Continued<F> =
    tokio::task::futures::TaskLocalFuture<Option<TraceHeaders>, tracing::instrument::Instrumented<F>>;

/// Runs `work` inside `span`, continuing the trace `incoming` names (a new
/// trace when there is none). Without export `span` is disabled and only
/// `incoming` is kept, for [`current`] to pass on.
pub fn continued<F: Future>(span: tracing::Span, incoming: Option<TraceHeaders>, work: F) -> Continued<F> {
    let passed = if exporting() {
        if let Some(incoming) = &incoming
            && !span.is_disabled()
        {
            // Fails only when the span has already started, which a span
            // that was just created has not.
            let _ = span.set_parent(incoming.context());
        }
        None
    } else {
        incoming
    };
    PASSED_THROUGH.scope(passed, work.instrument(span))
}

/// The trace and span ids of the current span, for log lines.
pub(super) fn current_ids() -> Option<(String, String)> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let otel_span = cx.span();
    let span_context = otel_span.span_context();
    span_context.is_valid().then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
}

/// A header lookup as the propagator wants it; the marker ties the values'
/// lifetime to the lookup's, as the `Extractor` signature requires.
struct Lookup<'a, F>(F, std::marker::PhantomData<&'a str>);

impl<'a, F: Fn(&str) -> Option<&'a str>> Lookup<'a, F> {
    fn new(get: F) -> Self {
        Self(get, std::marker::PhantomData)
    }
}

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Lookup<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

#[derive(Default)]
struct Written {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Written {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE => self.tracestate = Some(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn a_valid_context_is_kept_and_a_malformed_one_dropped() {
        let read = TraceHeaders::read(lookup(&[(TRACEPARENT, PARENT), (TRACESTATE, "congo=t61rcWkgMzE")]));
        let read = read.expect("a valid traceparent");
        assert_eq!(read.traceparent, PARENT);
        assert_eq!(read.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(read.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(read.parent_id(), "00f067aa0ba902b7");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx-injected: 1",
        ] {
            assert_eq!(TraceHeaders::read(lookup(&[(TRACEPARENT, bad)])), None, "{bad:?}");
        }
    }

    #[test]
    fn amqp_headers_round_trip() {
        let headers = TraceHeaders { traceparent: PARENT.to_owned(), tracestate: None };
        let mut table = FieldTable::default();
        insert_str(&mut table, TRACESTATE, "stale=1");
        headers.insert_into_amqp(&mut table);
        assert_eq!(TraceHeaders::from_amqp(Some(&table)), Some(headers));
        assert!(header_str(Some(&table), TRACESTATE).is_none(), "a stale tracestate must not stay");
    }

    #[tokio::test]
    async fn without_export_what_came_in_is_passed_on() {
        let incoming = TraceHeaders::read(lookup(&[(TRACEPARENT, PARENT)]));
        let inside = continued(tracing::Span::none(), incoming.clone(), async { current() }).await;
        assert_eq!(inside, incoming);
        assert_eq!(current(), None, "nothing outside the scope");
    }
}
