//! `switchyard_downstream_connections{listener}`.

/// One open client connection in `switchyard_downstream_connections{listener}`.
pub(super) struct OpenConnection(pingora_prometheus::prometheus::IntGauge);

impl OpenConnection {
    pub(super) fn new(listener: &str) -> Self {
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
