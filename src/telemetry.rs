//! Logging: human-readable lines by default, one JSON object per line with `LOG_FORMAT=json`.
//!
//! While a traced request or handshake runs ([`crate::trace`]), each line also carries its
//! `trace_id` and `span_id`, so a log line leads to its trace and back.
//!
//! Nothing here filters secrets: secrets are unprintable by type ([`crate::secret::Secret`]) and
//! header values carrying them are marked sensitive, so there is nothing to filter.
//!
//! `LOG` is read as [`Targets`] (levels per target), not as an `EnvFilter`: the span and field
//! filters that need `EnvFilter` are of no use here, and its regex engine was 7% (440 KiB) of the
//! static binary (issue 11's 6 MiB budget) and compiled its patterns at every start.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    let filter = targets(&config.filter);
    let builder = tracing_subscriber::fmt()
        // Every level reaches the filter layer, which decides.
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::stderr)
        // Its fallback report of a failed write is an `eprintln!`, which panics when stderr is a
        // closed pipe; a log line that cannot be written is simply lost.
        .log_internal_errors(false)
        .with_target(false);
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .map_event_format(|inner| WithTraceIds { inner, json: true })
            .finish()
            .with(filter)
            .try_init(),
        LogFormat::Text => builder
            // Plain text: the `ansi` feature (colours) is not compiled in, to save binary size.
            .with_ansi(false)
            .map_event_format(|inner| WithTraceIds { inner, json: false })
            .finish()
            .with(filter)
            .try_init(),
    };
    // A subscriber is already installed only in tests that start several servers in one process.
    let _ = result;
}

/// A line format plus `trace_id`/`span_id` when a span is active: appended as two more fields
/// (`"trace_id":"..."` in JSON, ` trace_id=...` in text). Without a span (always, when tracing
/// is off) the line is the inner format's, written straight through.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = crate::trace::current_ids() else {
            return self.inner.format_event(ctx, writer, event);
        };
        // Formatted into a buffer to add the fields at the end of the line. The buffer has no
        // ANSI colours: such lines are plain even on a terminal.
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let newline = line.ends_with('\n');
        let body = line.trim_end_matches('\n');
        let extra = if self.json {
            format!(r#","trace_id":"{trace_id}","span_id":"{span_id}""#)
        } else {
            format!(" trace_id={trace_id} span_id={span_id}")
        };
        match (self.json, body.strip_suffix('}')) {
            (true, Some(object)) => write!(writer, "{object}{extra}}}")?,
            _ => write!(writer, "{body}{extra}")?,
        }
        if newline {
            writeln!(writer)?;
        }
        Ok(())
    }
}

/// `LOG` as per-target levels. It was validated with the configuration; `info` rather than a
/// panic if it is not.
fn targets(filter: &str) -> Targets {
    filter
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn log_filters_set_levels_per_target() {
        let info = targets("info");
        assert!(info.would_enable("mcp_sidecar::proxy", &Level::INFO));
        assert!(!info.would_enable("mcp_sidecar::proxy", &Level::DEBUG));
        let mixed = targets("warn,mcp_sidecar=debug");
        assert!(mixed.would_enable("mcp_sidecar::proxy", &Level::DEBUG));
        assert!(!mixed.would_enable("mcp_sidecar::proxy", &Level::TRACE));
        assert!(!mixed.would_enable("hyper::proto", &Level::INFO));
        assert!(mixed.would_enable("hyper::proto", &Level::WARN));
        assert!(!targets("off").would_enable("mcp_sidecar", &Level::ERROR));
        assert!(targets("DEBUG").would_enable("mcp_sidecar", &Level::DEBUG));
        assert!(targets("not=a=filter").would_enable("mcp_sidecar", &Level::INFO));
    }
}
