//! `edge.header_timeout`: a client must deliver its whole request head within this time.
//!
//! Pingora reads the head with a timer that restarts on every byte, before any `ProxyHttp`
//! hook runs, so a client sending one byte a second holds a connection forever (slowloris).
//! [`HeadDeadlineApp`] wraps the proxy's `ServerApp` and gives every connection a
//! [`HeadGuard`] stream: its reads fail once the deadline passes. The proxy disarms it when a
//! head has been parsed (`early_request_filter`) and re-arms it for the next request on a
//! keep-alive connection, with the clock starting at that request's first byte. HTTP/2
//! connections (ALPN h2, or the h2c preface) are never armed: their streams are multiplexed.
//! The same wrapper counts open connections for `switchyard_downstream_connections`, serves
//! each connection in a task of its own (Pingora's connection task is sized for a TLS
//! handshake), and runs the HTTP/1 keep-alive loop itself so that an idle connection holds only
//! its socket: Pingora's own loop creates the next session (a ~13 KiB proxy future and a 4 KiB
//! head buffer) right away and keeps it while the client is silent; this one waits for the
//! first byte first: peeked on plaintext, read ahead and kept by the guard on TLS (measured in
//! docs/benchmarks.md, "scale" and "idle TLS connections").

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const RUNNING: u8 = 0;
const WAITING: u8 = 1;
const DISARMED: u8 = 2;

/// The HTTP/2 client connection preface, as Pingora's h2c detection reads it whole.
const H2C_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Enough of the preface to recognise HTTP/2 in the first read.
const H2_PREFACE: &[u8] = H2C_PREFACE.split_at(14).0;

impl<A> HeadDeadlineApp<A> {
    pub fn new(inner: A, state: Arc<crate::runtime::State>, listener: &str) -> Self {
        // The series exists from the start, at 0.
        crate::metrics::DOWNSTREAM_CONNECTIONS.with_label_values(&[listener]);
        HeadDeadlineApp {
            inner: Arc::new(inner),
            state,
            listener: listener.to_string(),
        }
    }
}

pub struct HeadDeadlineApp<A> {
    pub inner: Arc<A>,
    /// The limit is read from the current snapshot for each new connection.
    pub state: Arc<crate::runtime::State>,
    pub listener: String,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for HeadDeadlineApp<A> {
    /// Pingora's task for a new connection is sized for the largest thing it may do, a TLS
    /// handshake (8.8 KiB, measured in docs/benchmarks.md, "scale"), and lives as long as the
    /// connection. The connection moves to a task of its own that holds only what serving
    /// it needs, and Pingora's task ends here.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let app = Arc::clone(self);
        let shutdown = shutdown.clone();
        tokio::spawn(async move { app.serve(stream, &shutdown).await });
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> HeadDeadlineApp<A> {
    async fn serve(self: Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let _open = OpenConnection::new(&self.listener);
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let limit = self.state.snapshot().edge.header_timeout;
        let tls = stream.get_ssl_digest().is_some();
        let mut guarded = HeadGuard::new(stream, limit, !h2);
        if h2 || (self.h2c() && !tls && guarded.starts_with_h2c_preface().await) {
            ServerApp::process_new(&self.inner, Box::new(guarded), shutdown).await;
        } else {
            self.serve_http1(Box::new(guarded), shutdown).await;
        }
    }

    fn h2c(&self) -> bool {
        self.inner.server_options().is_some_and(|o| o.h2c)
    }

    /// Pingora's HTTP/1 keep-alive loop, except that between requests it waits for the next
    /// request's first byte (within `edge.keepalive_timeout`) before it builds a session.
    async fn serve_http1(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let mut persisted: Option<HttpPersistentSettings> = None;
        loop {
            let mut session = ServerSession::new_http1(stream);
            match persisted.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    // What Pingora's loop does for a connection's first request, and HTTP/1.1
                    // pipelining: requests sent back to back are answered in order (without
                    // it, the second gets no answer). The settings carry it to later requests.
                    session.set_pipelining_enabled(true);
                    let keepalive = (!*shutdown.borrow()).then_some(60);
                    session.set_keepalive(keepalive);
                    session.set_keepalive_reuses_remaining(
                        self.inner
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            let Some(served) = self.inner.process_new_http(session, shutdown).await else {
                return;
            };
            let (next, settings) = served.consume();
            stream = next;
            let pipelined = settings.as_ref().is_some_and(has_pipelined_prefix);
            persisted = settings;
            if !pipelined && !self.next_request_arrives(&mut stream, shutdown).await {
                return;
            }
        }
    }

    /// Waits for a byte of the next request; false when the connection should close instead
    /// (idle past `edge.keepalive_timeout`, closed by the client, or the server stopping).
    async fn next_request_arrives(&self, stream: &mut Stream, shutdown: &ShutdownWatch) -> bool {
        let idle = self.state.snapshot().edge.keepalive_timeout;
        let mut shutdown = shutdown.clone();
        if *shutdown.borrow() {
            return false;
        }
        let mut first = [0u8; 1];
        tokio::select! {
            // A TLS stream cannot peek: the guard reads the byte ahead and keeps it.
            peeked = tokio::time::timeout(idle, stream.try_peek(&mut first)) => {
                matches!(peeked, Ok(Ok(_)))
            }
            _ = shutdown.changed() => false,
        }
    }
}

/// Whether the previous request's reads took in part of the next one (pipelining). Those
/// bytes travel in the settings, not the stream, so waiting for a byte from the stream would
/// hang a client that sent everything already. Pingora 0.9.1 has no getter for them; their
/// `Debug` form names the field, and the pipelining tests fail if that ever changes.
fn has_pipelined_prefix(settings: &HttpPersistentSettings) -> bool {
    use std::fmt::Write;
    /// Looks for the marker as the text streams past, without keeping it.
    struct Find {
        seen: usize,
        found: bool,
    }
    const MARKER: &[u8] = b"pipelined_prefix: Some(";
    impl Write for Find {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for &b in s.as_bytes() {
                if self.found {
                    break;
                }
                self.seen = if b == MARKER[self.seen] {
                    self.seen + 1
                } else {
                    usize::from(b == MARKER[0])
                };
                self.found = self.seen == MARKER.len();
            }
            Ok(())
        }
    }
    let mut find = Find {
        seen: 0,
        found: false,
    };
    let _ = write!(find, "{settings:?}");
    find.found
}

/// One open client connection in `switchyard_downstream_connections{listener}`.
struct OpenConnection(pingora_prometheus::prometheus::IntGauge);

impl OpenConnection {
    fn new(listener: &str) -> Self {
        let g = crate::metrics::DOWNSTREAM_CONNECTIONS.with_label_values(&[listener]);
        g.inc();
        OpenConnection(g)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct HeadGuard {
    inner: Stream,
    limit: Duration,
    state: AtomicU8,
    timer: Option<Pin<Box<Sleep>>>,
    /// Bytes read ahead of the session, returned first by reads: the one byte that tells an
    /// idle TLS keep-alive connection has a next request (TLS streams cannot peek), or the
    /// first bytes of a plaintext connection read to tell HTTP/1 from the h2c preface.
    ahead: Vec<u8>,
}

impl std::fmt::Debug for HeadGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadGuard")
            .field("inner", &self.inner)
            .finish()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request head deadline (edge.header_timeout)",
    )
}

impl HeadGuard {
    fn new(inner: Stream, limit: Duration, armed: bool) -> Self {
        HeadGuard {
            inner,
            limit,
            state: AtomicU8::new(if armed { RUNNING } else { DISARMED }),
            timer: armed.then(|| Box::pin(tokio::time::sleep(limit))),
            ahead: Vec::new(),
        }
    }

    /// A head was parsed: no deadline while the request is served.
    pub fn disarm(&self) {
        self.state.store(DISARMED, Ordering::Release);
    }

    /// The next request on this connection gets a deadline from its first byte.
    pub fn rearm(&self) {
        let _ = self
            .state
            .compare_exchange(DISARMED, WAITING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Whether a plaintext connection opens with the HTTP/2 preface (h2c). It reads only as
    /// long as what came so far could still be the preface, so a request shorter than the
    /// preface (`GET / HTTP/1.0` and its blank line are 18 bytes) is served at once instead of
    /// waiting for bytes that never come. The bytes read stay in the guard for the session.
    async fn starts_with_h2c_preface(&mut self) -> bool {
        let left = self.limit;
        let read = async {
            let mut chunk = [0u8; H2C_PREFACE.len()];
            while self.ahead.len() < H2C_PREFACE.len() && H2C_PREFACE.starts_with(&self.ahead) {
                let want = H2C_PREFACE.len() - self.ahead.len();
                let n = self.inner.read(&mut chunk[..want]).await?;
                if n == 0 {
                    break;
                }
                self.ahead.extend_from_slice(&chunk[..n]);
            }
            io::Result::Ok(())
        };
        // A silent connection fails later, at the session's own head deadline.
        let _ = tokio::time::timeout(left, read).await;
        self.ahead.as_slice() == H2C_PREFACE
    }

    /// Peeks, answering from the bytes read ahead first; a stream that cannot peek (TLS) has
    /// the one byte asked for read and kept for the next read instead. False (nothing seen)
    /// when such a stream is asked for more than one byte.
    async fn peek_or_read_ahead(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if !self.ahead.is_empty() {
            let n = buf.len();
            if self.ahead.len() < n {
                return Ok(false);
            }
            buf.copy_from_slice(&self.ahead[..n]);
            return Ok(true);
        }
        if self.inner.try_peek(buf).await? {
            return Ok(true);
        }
        if buf.len() != 1 {
            return Ok(false);
        }
        self.inner.read_exact(buf).await?;
        self.ahead.push(buf[0]);
        Ok(true)
    }

    /// Finds the guard under a session's stream, if the connection has one.
    pub fn of(stream: &Stream) -> Option<&HeadGuard> {
        stream.as_any().downcast_ref::<HeadGuard>()
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.state.load(Ordering::Acquire) == RUNNING
            && self
                .timer
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }
}

impl AsyncRead for HeadGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        let before = buf.filled().len();
        let result = if !self.ahead.is_empty() && buf.remaining() > 0 {
            let n = self.ahead.len().min(buf.remaining());
            buf.put_slice(&self.ahead[..n]);
            self.ahead.drain(..n);
            if self.ahead.is_empty() {
                // An idle connection keeps no buffer.
                self.ahead = Vec::new();
            }
            Poll::Ready(Ok(()))
        } else {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        };
        if let Poll::Ready(Ok(())) = result {
            let fresh = &buf.filled()[before..];
            if before == 0 && fresh.starts_with(H2_PREFACE) {
                self.disarm();
            } else if !fresh.is_empty() && self.state.load(Ordering::Acquire) == WAITING {
                let deadline = Instant::now() + self.limit;
                match self.timer.as_mut() {
                    Some(t) => t.as_mut().reset(deadline),
                    None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                self.state.store(RUNNING, Ordering::Release);
            }
        }
        result
    }
}

impl AsyncWrite for HeadGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeadGuard {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadGuard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadGuard {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadGuard {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadGuard {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadGuard {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadGuard {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let peeked = if self.state.load(Ordering::Acquire) == RUNNING {
            let left = self
                .timer
                .as_ref()
                .map(|t| t.deadline().saturating_duration_since(Instant::now()))
                .unwrap_or(self.limit);
            tokio::time::timeout(left, self.peek_or_read_ahead(buf))
                .await
                .map_err(|_| timed_out())??
        } else {
            self.peek_or_read_ahead(buf).await?
        };
        if peeked && buf.starts_with(H2_PREFACE) {
            self.disarm();
        }
        Ok(peeked)
    }
}
