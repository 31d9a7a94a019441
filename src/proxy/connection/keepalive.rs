//! The HTTP/1 keep-alive loop: Pingora's, except that between requests it waits for the
//! next request's first byte before it builds a session. Pingora's own loop creates the next
//! session (a ~13 KiB proxy future and a 4 KiB head buffer) right away and keeps it while
//! the client is silent; this one waits first: peeked on plaintext, read ahead and kept by
//! the guard on TLS.

use super::ConnectionApp;
use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

impl<A: HttpServerApp + Send + Sync + 'static> ConnectionApp<A> {
    /// Serves HTTP/1 requests one after another until the connection should close.
    pub(super) async fn serve_http1(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
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
                matches!(peeked, Ok(Ok(true)))
            }
            _ = shutdown.changed() => false,
        }
    }
}

/// Whether the previous request's reads took in part of the next one (pipelining). Those
/// bytes travel in the settings, not the stream, so waiting for a byte from the stream would
/// hang a client that sent everything already. Pingora 0.9.1 has no getter for them; their
/// `Debug` form names the field, and the pipelining tests fail if that ever changes.
///
/// Read as the formatter writes it, piece by piece (`pipelined_prefix`, `: `, `Some`/`None`)
/// and stopped there: scanning every byte of the whole form was 4 % of a plain proxied
/// request's instructions (benches/harness/callgrind.sh). Should the pieces ever be cut
/// differently, the byte scan decides.
fn has_pipelined_prefix(settings: &HttpPersistentSettings) -> bool {
    use std::fmt::Write;
    const FIELD: &str = "pipelined_prefix";
    /// `None` until the field's value starts.
    #[derive(Default)]
    struct Pieces {
        named: bool,
        found: Option<bool>,
    }
    impl Write for Pieces {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            if !self.named {
                self.named = s == FIELD;
                return Ok(());
            }
            if s.trim_start_matches([':', ' ']).is_empty() {
                return Ok(());
            }
            self.found = Some(s.starts_with("Some"));
            // Nothing after it is needed: stop the formatting.
            Err(std::fmt::Error)
        }
    }
    let mut pieces = Pieces::default();
    let _ = write!(pieces, "{settings:?}");
    pieces
        .found
        .unwrap_or_else(|| format!("{settings:?}").contains("pipelined_prefix: Some("))
}
