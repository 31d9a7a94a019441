//! The stream every client connection is read through: its reads fail once the request
//! head's deadline passes, and it keeps bytes read ahead of the session.

use async_trait::async_trait;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
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
    pub(super) fn new(inner: Stream, limit: Duration, armed: bool) -> Self {
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
    pub(super) async fn starts_with_h2c_preface(&mut self) -> bool {
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
            // Only the connection's start tells HTTP/2 (`serve` disarms then): bytes that look
            // like the preface in the middle of an HTTP/1 head must not stop its deadline.
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty() && self.state.load(Ordering::Acquire) == WAITING {
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
        self.inner.shutdown().await;
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
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeadGuard {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest);
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
        Ok(peeked)
    }
}
