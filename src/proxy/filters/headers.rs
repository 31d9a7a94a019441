//! Headers switchyard adds or edits on the way up and down.

use crate::runtime::router::{under_prefix, HeaderEdits};
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

/// The `X-Forwarded-*` family and `X-Real-IP` for the upstream request.
pub struct Forwarded<'a> {
    pub client_ip: Option<IpAddr>,
    /// Whether the socket peer was a trusted proxy, whose `X-Forwarded-For` chain is kept.
    pub peer_trusted: bool,
    pub peer_ip: Option<IpAddr>,
    pub host: &'a str,
    pub tls: bool,
}

pub fn forwarded(req: &mut RequestHeader, f: &Forwarded<'_>) -> pingora::Result<()> {
    // One formatted value serves both headers in the common case (client = socket peer).
    let client = f.client_ip.map(ip_value);
    if let Some(peer) = f.peer_ip {
        let previous = req
            .headers
            .get("x-forwarded-for")
            .filter(|v| f.peer_trusted && !v.is_empty());
        let chain = match (previous, &client) {
            (Some(prev), _) => {
                let mut chain = Vec::with_capacity(prev.len() + 2 + 39);
                chain.extend_from_slice(prev.as_bytes());
                chain.extend_from_slice(b", ");
                chain.extend_from_slice(ip_value(peer).as_bytes());
                HeaderValue::from_bytes(&chain)
                    .map_err(|_| pingora::Error::new_str("invalid X-Forwarded-For"))?
            }
            (None, Some(c)) if f.client_ip == Some(peer) => c.clone(),
            (None, _) => ip_value(peer),
        };
        req.insert_header("x-forwarded-for", chain)?;
    }
    if let Some(ip) = client {
        req.insert_header("x-real-ip", ip)?;
    }
    let proto = if f.tls { "https" } else { "http" };
    req.insert_header("x-forwarded-proto", HeaderValue::from_static(proto))?;
    if !f.host.is_empty() {
        req.insert_header("x-forwarded-host", f.host)?;
    }
    Ok(())
}

/// An IP address as a header value (see [`IpText`]).
fn ip_value(ip: IpAddr) -> HeaderValue {
    let text = IpText::new(ip);
    HeaderValue::from_str(text.as_str()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// An IP address formatted on the stack, without an intermediate `String`; IPv4 (the common
/// case) by hand, since `Display` through `fmt` was 1 % of a request's instructions.
pub struct IpText {
    buf: [u8; 46],
    len: usize,
}

impl IpText {
    pub fn new(ip: IpAddr) -> IpText {
        let mut buf = [0u8; 46];
        let len = match ip {
            IpAddr::V4(v4) => {
                let mut at = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[at] = b'.';
                        at += 1;
                    }
                    let mut digits = itoa::Buffer::new();
                    let text = digits.format(octet).as_bytes();
                    buf[at..at + text.len()].copy_from_slice(text);
                    at += text.len();
                }
                at
            }
            IpAddr::V6(_) => {
                use std::io::Write;
                let mut w = &mut buf[..];
                match write!(w, "{ip}") {
                    Ok(()) => 46 - w.len(),
                    Err(_) => 0,
                }
            }
        };
        IpText { buf, len }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

pub fn edit_request(req: &mut RequestHeader, edits: &HeaderEdits) -> pingora::Result<()> {
    for name in &edits.remove {
        req.remove_header(name);
    }
    for (name, value) in &edits.set {
        req.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

pub fn edit_response(resp: &mut ResponseHeader, edits: &HeaderEdits) -> pingora::Result<()> {
    for name in &edits.remove {
        resp.remove_header(name);
    }
    for (name, value) in &edits.set {
        resp.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// HSTS (TLS listeners only), nosniff, frame denial and a referrer policy, unless the
/// backend already chose its own.
pub fn security(resp: &mut ResponseHeader, tls: bool) -> pingora::Result<()> {
    use http::header::{
        REFERRER_POLICY, STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
    };
    let mut add = |name: HeaderName, value: &'static str| -> pingora::Result<()> {
        if !resp.headers.contains_key(&name) {
            resp.insert_header(name, HeaderValue::from_static(value))?;
        }
        Ok(())
    };
    if tls {
        add(STRICT_TRANSPORT_SECURITY, "max-age=31536000")?;
    }
    add(X_CONTENT_TYPE_OPTIONS, "nosniff")?;
    add(X_FRAME_OPTIONS, "DENY")?;
    add(REFERRER_POLICY, "strict-origin-when-cross-origin")
}

/// Removes `prefix` from the front of the path, keeping the query and a leading `/`.
/// Adds `token` to the answer's `Vary` unless it is listed already (or `Vary: *`), keeping
/// what the backend said varies (`Accept-Encoding`): replacing it would let a cache serve one
/// encoding to a client that asked for another.
pub fn add_vary(resp: &mut ResponseHeader, token: &HeaderValue) -> pingora::Result<()> {
    let wanted = token.to_str().unwrap_or_default();
    let mut listed: Vec<String> = Vec::new();
    for v in resp.headers.get_all(http::header::VARY) {
        for t in v.to_str().unwrap_or_default().split(',') {
            let t = t.trim();
            if t == "*" || t.eq_ignore_ascii_case(wanted) {
                return Ok(());
            }
            if !t.is_empty() {
                listed.push(t.to_string());
            }
        }
    }
    listed.push(wanted.to_string());
    resp.insert_header(http::header::VARY, listed.join(", "))
}

/// Removes a `strip_prefix` from the path, whole segments only: `/v1` strips `/v1` and
/// `/v1/x`, never the `/v1` of `/v1x`.
pub fn strip_prefix(req: &mut RequestHeader, prefix: &str) -> pingora::Result<()> {
    let path = req.uri.path();
    let prefix = prefix.trim_end_matches('/');
    if !under_prefix(path, prefix) {
        return Ok(());
    }
    let rest = &path[prefix.len()..];
    let mut new = String::with_capacity(path.len());
    if !rest.starts_with('/') {
        new.push('/');
    }
    new.push_str(rest);
    if let Some(q) = req.uri.query() {
        new.push('?');
        new.push_str(q);
    }
    let uri = new.parse::<http::Uri>().map_err(|e| {
        pingora::Error::because(pingora::ErrorType::InternalError, "strip_prefix", e)
    })?;
    req.set_uri(uri);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_values_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.255.9",
            "255.255.255.255",
            "::1",
            "2001:db8::7:1",
            "::ffff:10.0.0.1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(parsed).to_str().unwrap(), parsed.to_string());
            assert_eq!(IpText::new(parsed).as_str(), parsed.to_string());
        }
    }

    #[test]
    fn strips_prefix_keeping_query() {
        let mut req = RequestHeader::build("GET", b"/v1/models?x=1", None).unwrap();
        strip_prefix(&mut req, "/v1").unwrap();
        assert_eq!(req.uri.to_string(), "/models?x=1");
        let mut req = RequestHeader::build("GET", b"/v1", None).unwrap();
        strip_prefix(&mut req, "/v1/").unwrap();
        assert_eq!(req.uri.to_string(), "/");
        let mut req = RequestHeader::build("GET", b"/v1x/models", None).unwrap();
        strip_prefix(&mut req, "/v1").unwrap();
        assert_eq!(req.uri.to_string(), "/v1x/models");
    }

    fn forwarded_for(prev: Option<&str>, client: &str, peer: &str, trusted: bool) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        if let Some(p) = prev {
            req.insert_header("x-forwarded-for", p).expect("xff");
        }
        let f = Forwarded {
            client_ip: client.parse().ok(),
            peer_trusted: trusted,
            peer_ip: peer.parse().ok(),
            host: "h",
            tls: false,
        };
        forwarded(&mut req, &f).expect("forwarded");
        req
    }

    #[test]
    fn chains_after_a_trusted_proxy_only() {
        let direct = forwarded_for(Some("6.6.6.6"), "10.0.0.1", "10.0.0.1", false);
        assert_eq!(direct.headers["x-forwarded-for"], "10.0.0.1");
        assert_eq!(direct.headers["x-real-ip"], "10.0.0.1");
        let via = forwarded_for(Some("203.0.113.9"), "203.0.113.9", "10.0.0.2", true);
        assert_eq!(via.headers["x-forwarded-for"], "203.0.113.9, 10.0.0.2");
        assert_eq!(via.headers["x-real-ip"], "203.0.113.9");
        assert_eq!(via.headers["x-forwarded-proto"], "http");
        let v6 = forwarded_for(None, "2001:db8::1", "2001:db8::1", false);
        assert_eq!(v6.headers["x-forwarded-for"], "2001:db8::1");
    }
}
