//! Headers switchyard adds or edits on the way up and down.

use crate::runtime::router::HeaderEdits;
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
    if let Some(peer) = f.peer_ip {
        let chain = match req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if f.peer_trusted && !prev.is_empty() => format!("{prev}, {peer}"),
            _ => peer.to_string(),
        };
        req.insert_header("x-forwarded-for", chain)?;
    }
    if let Some(ip) = f.client_ip {
        req.insert_header("x-real-ip", ip.to_string())?;
    }
    req.insert_header("x-forwarded-proto", if f.tls { "https" } else { "http" })?;
    if !f.host.is_empty() {
        req.insert_header("x-forwarded-host", f.host)?;
    }
    Ok(())
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
    let mut add = |name: &'static str, value: &'static str| -> pingora::Result<()> {
        if resp.headers.get(name).is_none() {
            resp.insert_header(name, value)?;
        }
        Ok(())
    };
    if tls {
        add("strict-transport-security", "max-age=31536000")?;
    }
    add("x-content-type-options", "nosniff")?;
    add("x-frame-options", "DENY")?;
    add("referrer-policy", "strict-origin-when-cross-origin")
}

/// Removes `prefix` from the front of the path, keeping the query and a leading `/`.
pub fn strip_prefix(req: &mut RequestHeader, prefix: &str) -> pingora::Result<()> {
    let path = req.uri.path();
    let Some(rest) = path.strip_prefix(prefix.trim_end_matches('/')) else {
        return Ok(());
    };
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
    fn strips_prefix_keeping_query() {
        let mut req = RequestHeader::build("GET", b"/v1/models?x=1", None).unwrap();
        strip_prefix(&mut req, "/v1").unwrap();
        assert_eq!(req.uri.to_string(), "/models?x=1");
        let mut req = RequestHeader::build("GET", b"/v1", None).unwrap();
        strip_prefix(&mut req, "/v1/").unwrap();
        assert_eq!(req.uri.to_string(), "/");
    }
}
