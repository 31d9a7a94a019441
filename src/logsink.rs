//! Log output that never stalls traffic.
//!
//! A `write` to stdout or stderr blocks the calling thread for as long as the reader
//! (journald, a pipe) does not take the bytes, and a worker thread that blocks stops serving
//! every connection it holds. So no request-handling thread writes there: each line goes into
//! a bounded queue, and one dedicated thread per stream drains it, joining whatever is queued
//! (gathered for up to [`GATHER`]) into one write. When a queue is full the new line is
//! dropped and counted in `switchyard_log_lines_dropped_total`: a stalled reader costs log
//! lines, never requests.

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lines one stream's queue holds before new ones are dropped: a few hundred milliseconds of
/// access log at a high request rate, about 1.5 MB of typical lines.
const QUEUE_LINES: usize = 4096;
/// Bytes one stream may hold, queued or being written (a line can carry a long path).
const QUEUE_BYTES: usize = 4 << 20;
/// Largest write the writer assembles from queued lines.
const BATCH_BYTES: usize = 64 << 10;
/// How long the writer lets lines gather after a write that emptied its queue. Without it a
/// busy proxy wakes the writer for every line: a futex wake and two context switches per
/// request, which made the default access log cost 70 % more CPU per request than none.
/// A line waits at most this long; a queue that fills a whole batch is written at once.
const GATHER: Duration = Duration::from_millis(5);

/// Where a line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The access log and the admin audit log.
    Stdout,
    /// Diagnostics (the `log` crate, ours and Pingora's).
    Stderr,
}

impl Output {
    fn index(self) -> usize {
        match self {
            Output::Stdout => 0,
            Output::Stderr => 1,
        }
    }

    /// A handle of its own on the stream's file descriptor: writes through it take none of
    /// std's locks, which a thread lost in a fork could hold forever.
    fn open(self) -> Box<dyn Write + Send> {
        let dup = match self {
            Output::Stdout => std::io::stdout().as_fd().try_clone_to_owned(),
            Output::Stderr => std::io::stderr().as_fd().try_clone_to_owned(),
        };
        match (dup, self) {
            (Ok(fd), _) => Box::new(std::fs::File::from(fd)),
            (Err(_), Output::Stdout) => Box::new(std::io::stdout()),
            (Err(_), Output::Stderr) => Box::new(std::io::stderr()),
        }
    }
}

enum Msg {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written.
    Flush(SyncSender<()>),
}

struct Sink {
    /// The process that started the writer thread. Daemon mode forks after the first
    /// diagnostics: the child inherits the queue but not the thread, and needs its own.
    pid: u32,
    tx: SyncSender<Msg>,
    /// Bytes queued or being written.
    held: Arc<AtomicUsize>,
}

static SINKS: [ArcSwapOption<Sink>; 2] =
    [ArcSwapOption::const_empty(), ArcSwapOption::const_empty()];
static STARTING: Mutex<()> = Mutex::new(());

/// The time of a log line: RFC 3339 in UTC, to the millisecond.
pub fn now_rfc3339() -> String {
    now().to_string()
}

/// [`now_rfc3339`] before it is formatted, for a line that writes it in place.
pub fn now() -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_millis(std::time::SystemTime::now())
}

/// Queues `line` (ending in a newline) for `out`, or drops and counts it when the queue is
/// full. Never blocks on the stream.
pub fn write(out: Output, line: Vec<u8>) {
    let Some(sink) = sink(out) else {
        return dropped(1);
    };
    let len = line.len();
    if sink.held.fetch_add(len, Ordering::AcqRel) + len > QUEUE_BYTES {
        sink.held.fetch_sub(len, Ordering::AcqRel);
        return dropped(1);
    }
    if sink.tx.try_send(Msg::Line(line)).is_err() {
        sink.held.fetch_sub(len, Ordering::AcqRel);
        dropped(1);
    }
}

/// Waits, at most `limit` in all, until every line queued so far on both streams is written:
/// for the last lines before the process exits. False when some were not.
pub fn flush(limit: Duration) -> bool {
    let end = Instant::now() + limit;
    let pid = std::process::id();
    let mut all = true;
    for slot in &SINKS {
        let Some(sink) = slot.load_full().filter(|s| s.pid == pid) else {
            continue;
        };
        let (ack, done) = mpsc::sync_channel(1);
        let mut msg = Msg::Flush(ack);
        let queued = loop {
            match sink.tx.try_send(msg) {
                Ok(()) => break true,
                Err(TrySendError::Full(m)) if Instant::now() < end => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => break false,
            }
        };
        let left = end.saturating_duration_since(Instant::now());
        all &= queued && done.recv_timeout(left).is_ok();
    }
    all
}

/// A [`Write`] into the stderr queue, for `env_logger` (which writes one whole record per
/// call).
pub struct StderrQueue;

impl Write for StderrQueue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write(Output::Stderr, buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn dropped(lines: u64) {
    crate::metrics::LOG_LINES_DROPPED.inc_by(lines);
}

/// The running sink of `out` in this process, started on first use.
fn sink(out: Output) -> Option<Arc<Sink>> {
    let slot = &SINKS[out.index()];
    let pid = std::process::id();
    if let Some(s) = slot.load().as_ref().filter(|s| s.pid == pid) {
        return Some(s.clone());
    }
    let _starting = STARTING.lock();
    if let Some(s) = slot.load_full().filter(|s| s.pid == pid) {
        return Some(s);
    }
    let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
    let held = Arc::new(AtomicUsize::new(0));
    let to = out.open();
    let counter = held.clone();
    let name = match out {
        Output::Stdout => "log-stdout",
        Output::Stderr => "log-stderr",
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || drain(rx, to, counter))
        .ok()?;
    let sink = Arc::new(Sink { pid, tx, held });
    if let Some(stale) = slot.swap(Some(sink.clone())) {
        // Left from before a fork: dropping its sender could wait on a lock that the parent's
        // writer thread held at the fork. It is small and there is at most one.
        std::mem::forget(stale);
    }
    Some(sink)
}

/// The writer thread: takes whatever is queued (up to a batch), writes it in one go, then
/// lets the next lines gather for [`GATHER`] unless the batch was full.
fn drain(rx: Receiver<Msg>, mut to: Box<dyn Write + Send>, held: Arc<AtomicUsize>) {
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut lines = 0u64;
    let mut acks: Vec<SyncSender<()>> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    batch.extend_from_slice(&line);
                    lines += 1;
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            next = if batch.len() < BATCH_BYTES {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let full = batch.len() >= BATCH_BYTES;
        if !batch.is_empty() {
            if to.write_all(&batch).and_then(|()| to.flush()).is_err() {
                // The reader is gone (or the descriptor unusable): these lines are lost.
                dropped(lines);
            }
            held.fetch_sub(batch.len(), Ordering::AcqRel);
            batch.clear();
            batch.shrink_to(BATCH_BYTES * 2);
            lines = 0;
        }
        for ack in acks.drain(..) {
            let _ = ack.try_send(());
        }
        if !full {
            std::thread::sleep(GATHER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_arrive_whole_and_in_order_and_flush_waits_for_them() {
        let (tx, rx) = mpsc::sync_channel(16);
        let held = Arc::new(AtomicUsize::new(0));
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let writer = Shared(out.clone());
        let counter = held.clone();
        let thread = std::thread::spawn(move || drain(rx, Box::new(writer), counter));
        for i in 0..10 {
            let line = format!("line {i}\n").into_bytes();
            held.fetch_add(line.len(), Ordering::AcqRel);
            tx.send(Msg::Line(line)).expect("queued");
        }
        let (ack, done) = mpsc::sync_channel(1);
        tx.send(Msg::Flush(ack)).expect("flush queued");
        done.recv_timeout(Duration::from_secs(5)).expect("flushed");
        let text = String::from_utf8(out.lock().clone()).expect("utf-8");
        let want: String = (0..10).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
        assert_eq!(held.load(Ordering::Acquire), 0);
        drop(tx);
        thread.join().expect("writer ends with its queue");
    }
}
