//! One JSON line per request on stdout (journald under systemd).

use serde::Serialize;
use std::io::Write;

#[derive(Serialize)]
pub struct Line<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub listener: &'a str,
    pub client_ip: Option<String>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub pool: Option<&'a str>,
    pub backend: Option<String>,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration_ms: f64,
    pub tries: u32,
    pub error: Option<String>,
}

pub fn write(line: &Line<'_>) {
    let Ok(mut text) = serde_json::to_vec(line) else {
        return;
    };
    text.push(b'\n');
    // One write per line keeps lines whole when threads log at once.
    let _ = std::io::stdout().lock().write_all(&text);
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
