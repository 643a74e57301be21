//! The JSONL span exporter (`TRACES_FILE`): one JSON object per finished span, appended to a
//! file only its owner can read (0600), for a laptop without a collector (the Go seed's form).
//!
//! A line: `name`, `kind`, `trace_id`, `span_id`, `parent_span_id` (hex; empty for a root),
//! `start_time_unix_nano`, `end_time_unix_nano`, `status` (`unset`, `ok` or `error: ...`),
//! `attributes` (an object), `resource` (the service's attributes).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use serde_json::{Map, Value, json};

#[derive(Debug)]
pub struct JsonlExporter {
    file: Mutex<File>,
    resource: Map<String, Value>,
}

impl JsonlExporter {
    /// Opens (creates) the file for appending, owner-only, also if it existed with a wider mode.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            file: Mutex::new(file),
            resource: Map::new(),
        })
    }
}

fn value(v: &opentelemetry::Value) -> Value {
    match v {
        opentelemetry::Value::Bool(b) => Value::Bool(*b),
        opentelemetry::Value::I64(i) => json!(i),
        opentelemetry::Value::F64(f) => json!(f),
        other => Value::String(other.as_str().into_owned()),
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn line(span: &SpanData, resource: &Map<String, Value>) -> Value {
    let attributes: Map<String, Value> = span
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str().to_string(), value(&kv.value)))
        .collect();
    let kind = match span.span_kind {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    };
    let status = match &span.status {
        Status::Unset => "unset".to_string(),
        Status::Ok => "ok".to_string(),
        Status::Error { description } => format!("error: {description}"),
    };
    let parent = if span.parent_span_id == SpanId::INVALID {
        String::new()
    } else {
        span.parent_span_id.to_string()
    };
    json!({
        "name": span.name,
        "kind": kind,
        "trace_id": span.span_context.trace_id().to_string(),
        "span_id": span.span_context.span_id().to_string(),
        "parent_span_id": parent,
        "start_time_unix_nano": nanos(span.start_time),
        "end_time_unix_nano": nanos(span.end_time),
        "status": status,
        "attributes": attributes,
        "resource": resource,
    })
}

impl SpanExporter for JsonlExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut text = Vec::new();
        for span in &batch {
            // Writing a `Value` to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut text, &line(span, &self.resource));
            text.push(b'\n');
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&text)
            .map_err(|e| OTelSdkError::InternalFailure(format!("TRACES_FILE: {e}")))
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = resource
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), value(v)))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_owner_only_even_when_it_existed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _exporter = JsonlExporter::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
