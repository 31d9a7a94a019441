//! One client connection, from accept to close: the head deadline (`edge.header_timeout`),
//! the HTTP/1 keep-alive loop, and the connection gauge.
//!
//! Pingora reads the head with a timer that restarts on every byte, before any `ProxyHttp`
//! hook runs, so a client sending one byte a second holds a connection forever (slowloris).
//! [`ConnectionApp`] wraps the proxy's `ServerApp` and gives every connection a
//! [`HeadGuard`] stream: its reads fail once the deadline passes. The proxy disarms it when a
//! head has been parsed (`early_request_filter`) and re-arms it for the next request on a
//! keep-alive connection, with the clock starting at that request's first byte. HTTP/2
//! connections (ALPN h2, or the h2c preface) are never armed: their streams are multiplexed.
//! The same wrapper counts open connections for `switchyard_downstream_connections`, serves
//! each connection in a task of its own (Pingora's connection task is sized for a TLS
//! handshake), and runs the HTTP/1 keep-alive loop itself ([`keepalive`]) so that an idle
//! connection holds only its socket (measured in docs/benchmarks.md, "scale" and "idle TLS
//! connections").

mod gauge;
mod guard;
mod keepalive;
mod proxy_protocol;

pub use guard::HeadGuard;
pub use proxy_protocol::{PreTlsHeader, ProxyHeaderApp};

use async_trait::async_trait;
use gauge::OpenConnection;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::Arc;

pub struct ConnectionApp<A> {
    pub inner: Arc<A>,
    /// The limits are read from the current snapshot for each new connection.
    pub state: Arc<crate::runtime::State>,
    pub listener: String,
}

impl<A> ConnectionApp<A> {
    pub fn new(inner: A, state: Arc<crate::runtime::State>, listener: &str) -> Self {
        // The series exists from the start, at 0.
        crate::metrics::DOWNSTREAM_CONNECTIONS.with_label_values(&[listener]);
        ConnectionApp {
            inner: Arc::new(inner),
            state,
            listener: listener.to_string(),
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for ConnectionApp<A> {
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
        self.inner.http_cleanup().await;
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> ConnectionApp<A> {
    async fn serve(self: Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let _open = OpenConnection::new(&self.listener);
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let limit = self.state.snapshot().edge.header_timeout;
        let tls = stream.get_ssl_digest().is_some();
        let mut guarded = HeadGuard::new(stream, limit, !h2);
        if h2 || (self.h2c() && !tls && guarded.starts_with_h2c_preface().await) {
            // HTTP/2 multiplexes its streams: no head deadline for the connection.
            guarded.disarm();
            ServerApp::process_new(&self.inner, Box::new(guarded), shutdown).await;
        } else {
            self.serve_http1(Box::new(guarded), shutdown).await;
        }
    }

    fn h2c(&self) -> bool {
        self.inner.server_options().is_some_and(|o| o.h2c)
    }
}
