//! `redirect_to_https`: every request on the listener is answered 308 to the same path on
//! the HTTPS port.

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub struct Redirect {
    pub port: u16,
    /// ACME http-01 challenges are answered here, not redirected.
    pub state: std::sync::Arc<crate::runtime::State>,
}

#[async_trait]
impl ServeHttp for Redirect {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let req = session.req_header();
        if let Some(answer) = self.state.acme_http01(req.uri.path()) {
            return http::Response::builder()
                .status(200)
                .header("content-type", "application/octet-stream")
                .header("content-length", answer.len().to_string())
                .body(answer.into_bytes())
                .unwrap_or_default();
        }
        let raw_host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let host = super::request::strip_port(raw_host);
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let port = if self.port == 443 {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        let location = format!("https://{host}{port}{path}");
        http::Response::builder()
            .status(308)
            .header("location", location)
            .header("content-length", "0")
            .body(Vec::new())
            .unwrap_or_default()
    }
}
