//! The JSON log line, written straight to the line's buffer.
//!
//! The line is what tracing-subscriber's JSON format writes with the event
//! flattened and the current span beside it:
//!
//! ```text
//! {"timestamp":"…","level":"INFO","message":"request completed","status":200,
//!  "latency_ms":1.2,"target":"confab_http::middleware::telemetry",
//!  "span":{"request_id":"req_…","method":"POST","route":"…","name":"http"}}
//! ```
//!
//! That format builds each event's fields as a map of JSON values, and
//! parses the current span's fields back from the JSON text it stored
//! when the span opened, for every line: under a burst of sends this was
//! 8 % of the request workers' time (ADR 0005, twenty-fourth pass). Here
//! each value is escaped into the line as it is visited, and the span's
//! fields are stored as the inside of a JSON object, copied into each line
//! as they are.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats each event as one JSON object on a line of its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

/// Formats a span's fields as the inside of a JSON object (`"k":v,…`),
/// for [`JsonLines`] to copy into each line of the span.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Members::new(&mut writer, true);
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut writer = current.as_writer();
        let mut visitor = Members::new(&mut writer, first);
        fields.record(&mut visitor);
        visitor.result
    }
}

impl<S> FormatEvent<S, JsonSpanFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonSpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A `log` record carries its origin as fields; its metadata says
        // the record's own level and target.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", meta.level())?;
        let mut visitor = Members::new(&mut writer, false);
        visitor.skip_log_fields = normalized.is_some();
        event.record(&mut visitor);
        visitor.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        if let Some(span) = ctx.lookup_current() {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            if let Some(fields) = extensions.get::<FormattedFields<JsonSpanFields>>()
                && !fields.fields.is_empty()
            {
                writer.write_str(&fields.fields)?;
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":")?;
            string(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// Writes fields as JSON object members, `"name":value`, separated by
/// commas (the first one too unless `first`).
struct Members<'a, 'w> {
    out: &'a mut Writer<'w>,
    first: bool,
    /// Leaves out the `log.*` fields of a normalized `log` record.
    skip_log_fields: bool,
    result: fmt::Result,
}

impl<'a, 'w> Members<'a, 'w> {
    fn new(out: &'a mut Writer<'w>, first: bool) -> Self {
        Self {
            out,
            first,
            skip_log_fields: false,
            result: Ok(()),
        }
    }

    /// Writes the member's name and colon; `false` when the field is left
    /// out or writing failed.
    fn key(&mut self, field: &Field) -> bool {
        if self.result.is_err() || (self.skip_log_fields && field.name().starts_with("log.")) {
            return false;
        }
        let separator = if self.first { "" } else { "," };
        self.first = false;
        self.result = self
            .out
            .write_str(separator)
            .and_then(|()| string(self.out, field.name()))
            .and_then(|()| self.out.write_char(':'));
        self.result.is_ok()
    }

    fn raw(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.key(field) {
            self.result = self.out.write_fmt(value);
        }
    }
}

impl Visit for Members<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            self.result = string(self.out, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.result = self
                .out
                .write_char('"')
                .and_then(|()| write!(Escaped(self.out), "{value:?}"))
                .and_then(|()| self.out.write_char('"'));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.raw(field, format_args!("{value}"));
        } else {
            // JSON has no infinities and no NaN.
            self.raw(field, format_args!("null"));
        }
    }
}

/// Writes `value` as a JSON string.
fn string(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(&mut *out).write_str(value)?;
    out.write_char('"')
}

/// Escapes what is written through it as the inside of a JSON string.
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, byte) in s.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    /// What the same events give as JSON values, through `subscriber`.
    fn lines<S>(make: impl FnOnce(Lines) -> S) -> Vec<Value>
    where
        S: Subscriber + Send + Sync + 'static,
    {
        let sink = Lines::default();
        let subscriber = make(sink.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(status = 200_u16, latency_ms = 1.25, "outside a span");
            let span = tracing::info_span!("http", request_id = %"req_1", method = "POST", route = "/api/v1/x");
            let _entered = span.enter();
            tracing::warn!(
                text = "quote \" backslash \\ newline \n tab \t nul \0 bell \u{7} é ✓",
                shown = %"display: \"x\"",
                debugged = ?vec!["a", "b"],
                negative = -3_i64,
                yes = true,
                nan = f64::NAN,
                "inside {}",
                "a span"
            );
            span.record("route", "/recorded");
            tracing::error!(error = %std::io::Error::other("broken\npipe"), "after a record");
        });
        let bytes = sink.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn lines_hold_what_the_library_json_format_holds() {
        let ours = lines(|sink| {
            tracing_subscriber::fmt()
                .fmt_fields(JsonSpanFields)
                .event_format(JsonLines)
                .with_writer(sink)
                .finish()
        });
        let theirs = lines(|sink| {
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(sink)
                .finish()
        });
        assert_eq!(ours.len(), 3);
        for (ours, theirs) in ours.iter().zip(&theirs) {
            let (mut ours, mut theirs) = (ours.clone(), theirs.clone());
            // Written a moment apart; both RFC 3339 with microseconds.
            for line in [&mut ours, &mut theirs] {
                let at = line["timestamp"].take();
                let at = at.as_str().unwrap();
                assert!(at.len() == 27 && at.ends_with('Z'), "{at}");
            }
            // NaN is `null` in both; the library writes a whole float as
            // `1.0` where `{}` writes `1`: both the same JSON number.
            assert_eq!(ours, theirs);
        }
        assert_eq!(ours[1]["message"], "inside a span");
        assert_eq!(
            ours[1]["text"],
            "quote \" backslash \\ newline \n tab \t nul \0 bell \u{7} é ✓"
        );
        assert_eq!(ours[1]["span"]["request_id"], "req_1");
        assert_eq!(ours[2]["span"]["route"], "/recorded");
        assert!(ours[0].get("span").is_none());
    }
}
