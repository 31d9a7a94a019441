//! One JSON line per request on stdout (journald under systemd), written by the log
//! writer thread so that a slow reader never holds up a request.

use crate::config::LogField;
use serde::Serialize;

#[derive(Serialize)]
pub struct Line<'a> {
    /// Written straight into the line, without a `String` of its own.
    #[serde(serialize_with = "as_text")]
    pub time: humantime::Rfc3339Timestamp,
    pub request_id: &'a str,
    pub listener: &'a str,
    pub client_ip: Option<&'a str>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub pool: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration_ms: f64,
    /// From the request sent upstream to the backend's answer head (last attempt).
    pub upstream_ms: Option<f64>,
    pub tries: u32,
    pub error: Option<&'static str>,
    /// Time waited in the pool's queue, when the request waited.
    pub queued_ms: Option<f64>,
    /// The admission class, when the request waited.
    pub priority: Option<&'static str>,
    /// Prompt and completion tokens of the answer's usage (OpenAI routes).
    pub tokens: Option<u64>,
    /// The model the request was sent for (OpenAI routes).
    pub model: Option<&'a str>,
    /// The model it asked for, when a fallback served it instead.
    pub fallback_from: Option<&'a str>,
}

/// Room for a typical line, so that it is not grown (and copied) field by field.
const LINE_CAPACITY: usize = 512;

fn as_text<S: serde::Serializer>(
    ts: &humantime::Rfc3339Timestamp,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(ts)
}

/// Queues `line` for stdout, with only `fields` when that list is not empty.
pub fn write(line: &Line<'_>, fields: &[LogField]) {
    let mut text = Vec::with_capacity(LINE_CAPACITY);
    let encoded = if fields.is_empty() {
        serde_json::to_writer(&mut text, line)
    } else {
        serde_json::to_value(line).and_then(|mut v| {
            if let Some(map) = v.as_object_mut() {
                map.retain(|k, _| fields.iter().any(|f| f.key() == k));
            }
            serde_json::to_writer(&mut text, &v)
        })
    };
    if encoded.is_err() {
        return;
    }
    text.push(b'\n');
    crate::logsink::write(crate::logsink::Output::Stdout, text);
}
