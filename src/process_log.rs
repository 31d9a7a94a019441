//! The process log (stderr, through logsink's queue): one line per event, at the level it
//! deserves, as `text` or `json` lines (`server.log_format`, `--log-format`).
//!
//! `RUST_LOG` still filters (env_logger's filter, default `info`). Before a record is
//! written, [`Rule`]s give Pingora's own lines the level they deserve for an operator:
//!
//! - a health transition is logged by switchyard (`runtime::health`, one WARN naming pool
//!   and backend); pingora-load-balancing's own line for it (`… becomes unhealthy`, which
//!   prints the whole `Backend {…}` struct) is dropped;
//! - a client that broke off, or was cut by `edge.header_timeout`, before its request head
//!   was read (pingora-proxy's ERROR `Fail to proxy: … downstream session type`) and a failed
//!   TLS handshake or PROXY header (pingora-core's ERROR `Downstream handshake …`) are the
//!   client's doing: DEBUG. A rejected PROXY header has its own INFO line and counter;
//! - start-up's per-service lines (`Starting service`, `… waiting on dependencies`) are
//!   DEBUG: switchyard's `serving N listener(s)` line is the event.
//!
//! A request the proxy answered (a 502, 503 or 504 included) is in the access log, not here:
//! the proxy's `suppress_error_log` keeps those out. Real faults stay ERROR: a panic (the
//! hook installed here logs it as one line), a rejected reload, a certificate that cannot be
//! read.

use crate::config::LogFormat;
use crate::logsink::StderrQueue;
use log::{Level, Log, Metadata, Record};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

static FORMAT: AtomicU8 = AtomicU8::new(0);
/// Set when `--log-format` chose the format: the config's `server.log_format` then does not.
static FORCED: AtomicBool = AtomicBool::new(false);

fn encode(f: LogFormat) -> u8 {
    match f {
        LogFormat::Text => 0,
        LogFormat::Json => 1,
    }
}

fn current() -> LogFormat {
    match FORMAT.load(Ordering::Relaxed) {
        1 => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// Installs the logger and the panic hook; `cli` is `--log-format` if given.
pub fn init(cli: Option<LogFormat>) {
    if let Some(f) = cli {
        FORMAT.store(encode(f), Ordering::Relaxed);
        FORCED.store(true, Ordering::Relaxed);
    }
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        // Diagnostics are queued for a writer thread: a stalled stderr must not stall a worker.
        .target(env_logger::Target::Pipe(Box::new(StderrQueue)))
        .format(|buf, record| {
            let line = render(record, current());
            buf.write_all(line.as_bytes())
        })
        .build();
    log::set_max_level(inner.filter());
    if log::set_boxed_logger(Box::new(ProcessLog { inner })).is_err() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        log::error!(
            "panic in thread {}: {info}",
            thread.name().unwrap_or("unnamed")
        );
    }));
}

/// The config's `server.log_format`, unless `--log-format` was given.
pub fn configure(from_config: LogFormat) {
    if !FORCED.load(Ordering::Relaxed) {
        FORMAT.store(encode(from_config), Ordering::Relaxed);
    }
}

struct ProcessLog {
    inner: env_logger::Logger,
}

impl Log for ProcessLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !record.target().starts_with("pingora") {
            return self.inner.log(record);
        }
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        match rule(record.target(), record.level(), &text) {
            Rule::Keep => self.inner.log(record),
            Rule::Drop => {}
            Rule::Debug => self.inner.log(
                &Record::builder()
                    .args(format_args!("{text}"))
                    .level(Level::Debug)
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// What happens to one of Pingora's lines.
#[derive(Debug, PartialEq)]
enum Rule {
    Keep,
    Drop,
    Debug,
}

fn rule(target: &str, level: Level, text: &str) -> Rule {
    if target.starts_with("pingora_load_balancing")
        && (text.contains(" becomes unhealthy") || text.contains(" becomes healthy"))
    {
        return Rule::Drop;
    }
    if target.starts_with("pingora_proxy")
        && text.starts_with("Fail to proxy:")
        && text.contains("downstream session type")
    {
        return Rule::Debug;
    }
    if target.starts_with("pingora_core::services::listening")
        && text.starts_with("Downstream handshake")
    {
        return Rule::Debug;
    }
    // A pooled upstream connection busy with its idle watch: Pingora opens a new one.
    if target.starts_with("pingora_core::connectors") && text == "failed to acquire reusable stream"
    {
        return Rule::Debug;
    }
    // Start-up runs every service in order and says so per service: one event, for which
    // switchyard's own `serving N listener(s)` line speaks.
    let startup = match target {
        "pingora_core::services" | "pingora_core::server::bootstrap_services" => true,
        "pingora_core::server" => {
            text.starts_with("Service '")
                || text.starts_with("Starting service")
                || text.starts_with("service '")
        }
        _ => false,
    };
    if startup && level == Level::Info {
        return Rule::Debug;
    }
    Rule::Keep
}

/// One record as one line, newline included. A multi-line message (a rejected reload lists
/// each problem on a line) is joined with `; ` so that the event stays one line.
fn render(record: &Record<'_>, format: LogFormat) -> String {
    let time = crate::logsink::now_rfc3339();
    let message = one_line(&record.args().to_string());
    match format {
        LogFormat::Text => format!(
            "{time} {:<5} {}: {message}\n",
            record.level(),
            record.target()
        ),
        LogFormat::Json => {
            let mut line = serde_json::json!({
                "time": time,
                "level": record.level().as_str(),
                "target": record.target(),
                "message": message,
            })
            .to_string();
            line.push('\n');
            line
        }
    }
}

fn one_line(text: &str) -> String {
    if !text.contains('\n') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    for part in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(part.trim_start());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingoras_noise_gets_its_level() {
        let dump = "Backend { addr: Inet(127.0.0.1:1), weight: 1, ext: Extensions } becomes unhealthy, ConnectRefused";
        assert_eq!(
            rule("pingora_load_balancing", Level::Warn, dump),
            Rule::Drop
        );
        assert_eq!(
            rule(
                "pingora_proxy",
                Level::Error,
                "Fail to proxy: Downstream ReadError context: request head deadline, downstream session type: HTTP/1.1"
            ),
            Rule::Debug
        );
        assert_eq!(
            rule(
                "pingora_core::services::listening",
                Level::Error,
                "Downstream handshake error from 127.0.0.1:5: TLSHandshakeFailure"
            ),
            Rule::Debug
        );
        assert_eq!(
            rule(
                "pingora_proxy",
                Level::Error,
                "Fail to proxy: InternalError, status: 500, tries: 1"
            ),
            Rule::Keep
        );
        assert_eq!(
            rule(
                "pingora_core::services",
                Level::Info,
                "Service http spent 0ms waiting on dependencies"
            ),
            Rule::Debug
        );
        assert_eq!(
            rule(
                "pingora_core::services::listening",
                Level::Error,
                "Accept() failed"
            ),
            Rule::Keep
        );
    }

    #[test]
    fn a_multi_line_message_is_one_line() {
        assert_eq!(
            one_line("rejected, the running config stays:\nf:1:2: a\nf:3:4: b\n"),
            "rejected, the running config stays: f:1:2: a; f:3:4: b"
        );
    }

    #[test]
    fn json_lines_parse() {
        let line = render(
            &Record::builder()
                .args(format_args!("a \"quoted\"\nsecond"))
                .level(Level::Warn)
                .target("switchyard::x")
                .build(),
            LogFormat::Json,
        );
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "a \"quoted\"; second");
    }
}
