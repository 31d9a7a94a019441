//! Where a listener with `proxy_protocol:` reads the header: on a TLS listener before the
//! handshake ([`PreTlsHeader`], Pingora's pre-TLS hook), on a plaintext or TCP listener
//! before the app sees the stream ([`ProxyHeaderApp`]). Both run the same
//! [`crate::proxy_protocol::accept`], with the listener's `trusted` list and
//! `edge.header_timeout` from the current snapshot, so a reload that adds, changes or removes
//! `proxy_protocol` applies to the next connection. Listeners without it pass straight through.

use crate::proxy_protocol::{self, Rejection};
use crate::runtime::State;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::{Error, ErrorType};
use std::sync::Arc;

/// Reads the header of a connection to `listener` if the current config asks for one.
async fn read(state: &State, listener: &str, stream: &mut L4Stream) -> Result<(), Rejection> {
    let snap = state.snapshot();
    let Some(trusted) = snap.proxy_protocol.get(listener) else {
        return Ok(());
    };
    proxy_protocol::accept(stream, listener, trusted, snap.edge.header_timeout).await
}

/// The header of a TLS listener's connection, read from the raw socket before the handshake.
pub struct PreTlsHeader {
    pub state: Arc<State>,
    pub listener: String,
}

#[async_trait]
impl PreTlsProcess for PreTlsHeader {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        read(&self.state, &self.listener, stream)
            .await
            .map_err(|why| Error::explain(ErrorType::Custom("PROXY protocol"), why.to_string()))?;
        #[cfg(feature = "rustls")]
        if self.state.acme.tls_alpn01_pending() {
            let wait = self.state.snapshot().edge.header_timeout;
            let answered = crate::tls::acme::alpn::answer(stream, &self.state.acme, wait).await;
            let done = |why: String| Error::explain(ErrorType::Custom("ACME tls-alpn-01"), why);
            match answered {
                Ok(false) => {}
                Ok(true) => return Err(done("answered the CA's validator".into())),
                Err(e) => return Err(done(e.to_string())),
            }
        }
        Ok(())
    }
}

/// Wraps a plaintext listener's app: the header is read before `inner` sees the stream.
pub struct ProxyHeaderApp<A> {
    pub inner: Arc<A>,
    pub state: Arc<State>,
    pub listener: String,
}

impl<A> ProxyHeaderApp<A> {
    pub fn new(inner: A, state: Arc<State>, listener: &str) -> Self {
        ProxyHeaderApp {
            inner: Arc::new(inner),
            state,
            listener: listener.to_string(),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ProxyHeaderApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream = if stream.as_any().is::<L4Stream>() {
            let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
            read(&self.state, &self.listener, &mut l4).await.ok()?;
            l4 as Stream
        } else {
            // A TLS stream: its header was read before the handshake.
            stream
        };
        // A stream the app hands back (HTTP/1 keep-alive) carries its next request, not a
        // new header: serve it here rather than through this wrapper again.
        let mut next = Some(stream);
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
