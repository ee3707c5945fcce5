//! Trace and span ids on log lines, so that a log line leads to its trace
//! and a trace to its log lines.
//!
//! A wrapper around the configured line format rather than a format of our
//! own: the line is formatted as before, then `trace_id` and `span_id` are
//! added as the first JSON fields (or appended as `key=value` to a text
//! line). Only while exporting and inside a span: otherwise the line is
//! written exactly as without the wrapper.

use std::fmt::Write as _;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// A line format plus the ids of the current trace.
pub(super) struct WithTraceIds<F> {
    pub(super) inner: F,
    pub(super) json: bool,
    pub(super) enabled: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let ids = if self.enabled { super::context::current_ids() } else { None };
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_ids(&line, self.json, &trace_id, &span_id))
    }
}

/// `line` with the two ids added.
fn with_ids(line: &str, json: bool, trace_id: &str, span_id: &str) -> String {
    let mut out = String::with_capacity(line.len() + 80);
    if json && let Some(rest) = line.strip_prefix('{') {
        let _ = write!(out, "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"");
        if !rest.trim_start().starts_with('}') {
            out.push(',');
        }
        out.push_str(rest);
    } else {
        let body = line.strip_suffix('\n').unwrap_or(line);
        let _ = writeln!(out, "{body} trace_id={trace_id} span_id={span_id}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_the_first_json_fields_or_the_last_text_ones() {
        let json = with_ids("{\"level\":\"INFO\",\"message\":\"x\"}\n", true, "ab", "cd");
        assert_eq!(json, "{\"trace_id\":\"ab\",\"span_id\":\"cd\",\"level\":\"INFO\",\"message\":\"x\"}\n");
        assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok());
        let text = with_ids("2026-12-07T10:00:00Z  INFO worker: consuming\n", false, "ab", "cd");
        assert_eq!(text, "2026-12-07T10:00:00Z  INFO worker: consuming trace_id=ab span_id=cd\n");
    }
}
