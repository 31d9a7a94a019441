//! Config values that have structure, parsed once when the file is read: a bad one is an
//! error with its YAML path there, and everything after (validation, the compiled runtime)
//! works with the parsed value and never parses, or skips, it again.

use http::HeaderName;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address for one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(pub IpNet);

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let t = text.trim();
        t.parse::<IpNet>()
            .map(|n| n.trunc())
            .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
            .map(Cidr)
            .map_err(|_| format!("invalid CIDR {text:?}; write e.g. 10.0.0.0/8 or 192.0.2.7"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

text_value!(Cidr);

/// A route's host: an exact name (or address), or `*.` and a name, which matches exactly one
/// label in front (`*.example.com` matches `api.example.com`, never `example.com` or
/// `evilexample.com`). Stored lower-case.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`.
    Suffix(String),
}

impl HostPattern {
    pub fn parse(h: &str) -> Result<HostPattern, String> {
        let (name, wildcard) = match h.strip_prefix('*') {
            Some(rest) => (
                rest.strip_prefix('.').ok_or_else(|| {
                    format!("invalid host {h:?}: a wildcard is written *.example.com")
                })?,
                true,
            ),
            None => (h, false),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let address = !wildcard && h.parse::<IpAddr>().is_ok();
        if !address && !name.split('.').all(label_ok) {
            return Err(format!(
                "invalid host {h:?}: write a name (api.example.com) or *. and a name (*.example.com)"
            ));
        }
        let name = name.to_ascii_lowercase();
        Ok(if wildcard {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name)
        })
    }

    /// `host` without its port, in any case.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Suffix(s) => {
                host.len() > s.len() && host.is_char_boundary(host.len() - s.len()) && {
                    let (head, tail) = host.split_at(host.len() - s.len());
                    tail.eq_ignore_ascii_case(s) && !head.contains('.')
                }
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

text_value!(HostPattern);

/// What a `consistent_hash` pool hashes: `client_ip`, `header:NAME`, `cookie:NAME` or
/// `query:NAME`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum HashOn {
    ClientIp,
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

impl HashOn {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "unknown hash_on {text:?}; use client_ip, header:NAME, cookie:NAME or query:NAME"
            )
        };
        if text == "client_ip" {
            return Ok(HashOn::ClientIp);
        }
        let (kind, name) = text.split_once(':').ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        match kind {
            "header" => header_name(name).map(HashOn::Header),
            "cookie" => Ok(HashOn::Cookie(name.to_string())),
            "query" => Ok(HashOn::Query(name.to_string())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for HashOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashOn::ClientIp => f.write_str("client_ip"),
            HashOn::Header(h) => write!(f, "header:{h}"),
            HashOn::Cookie(c) => write!(f, "cookie:{c}"),
            HashOn::Query(q) => write!(f, "query:{q}"),
        }
    }
}

text_value!(HashOn);

/// What a rate limit counts by: `client_ip`, `api_key` (the key that passed the route's
/// auth) or `header:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum RateLimitKey {
    #[default]
    ClientIp,
    ApiKey,
    Header(HeaderName),
}

impl RateLimitKey {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "client_ip" => Ok(RateLimitKey::ClientIp),
            "api_key" => Ok(RateLimitKey::ApiKey),
            t => match t.strip_prefix("header:") {
                Some(h) => header_name(h).map(RateLimitKey::Header),
                None => Err(format!(
                    "unknown rate limit key {t:?}; use client_ip, api_key or header:NAME"
                )),
            },
        }
    }
}

impl fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimitKey::ClientIp => f.write_str("client_ip"),
            RateLimitKey::ApiKey => f.write_str("api_key"),
            RateLimitKey::Header(h) => write!(f, "header:{h}"),
        }
    }
}

text_value!(RateLimitKey);

/// A field of the access log's JSON line, for `edge.access_log.fields`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LogField {
    Time,
    RequestId,
    Listener,
    ClientIp,
    Method,
    Host,
    Path,
    Route,
    Pool,
    Backend,
    Status,
    BytesIn,
    BytesOut,
    DurationMs,
    UpstreamMs,
    Tries,
    Error,
    QueuedMs,
    Priority,
    Tokens,
    Model,
    FallbackFrom,
}

impl LogField {
    /// The key of the field in the JSON line.
    pub fn key(self) -> &'static str {
        match self {
            LogField::Time => "time",
            LogField::RequestId => "request_id",
            LogField::Listener => "listener",
            LogField::ClientIp => "client_ip",
            LogField::Method => "method",
            LogField::Host => "host",
            LogField::Path => "path",
            LogField::Route => "route",
            LogField::Pool => "pool",
            LogField::Backend => "backend",
            LogField::Status => "status",
            LogField::BytesIn => "bytes_in",
            LogField::BytesOut => "bytes_out",
            LogField::DurationMs => "duration_ms",
            LogField::UpstreamMs => "upstream_ms",
            LogField::Tries => "tries",
            LogField::Error => "error",
            LogField::QueuedMs => "queued_ms",
            LogField::Priority => "priority",
            LogField::Tokens => "tokens",
            LogField::Model => "model",
            LogField::FallbackFrom => "fallback_from",
        }
    }
}

/// What sends a request to another backend: `connect_error`, or a 5xx status the backend
/// answered (written as a number, `502`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "RetryText", into = "RetryText")]
pub enum RetryOn {
    ConnectError,
    Status(u16),
}

/// How `retry_on` entries are written: a number or a word.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum RetryText {
    Status(u16),
    Word(String),
}

impl TryFrom<RetryText> for RetryOn {
    type Error = String;
    fn try_from(t: RetryText) -> Result<Self, String> {
        match t {
            RetryText::Status(s) if (500..=599).contains(&s) => Ok(RetryOn::Status(s)),
            RetryText::Status(s) => Err(format!("{s}: only 5xx statuses are retried")),
            RetryText::Word(w) if w == "connect_error" => Ok(RetryOn::ConnectError),
            RetryText::Word(w) => Err(format!(
                "unknown retry condition {w:?}; use connect_error or a 5xx status"
            )),
        }
    }
}

impl From<RetryOn> for RetryText {
    fn from(r: RetryOn) -> RetryText {
        match r {
            RetryOn::ConnectError => RetryText::Word("connect_error".into()),
            RetryOn::Status(s) => RetryText::Status(s),
        }
    }
}

/// The lowest TLS version a listener accepts.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// An HTTP method, written in any case: one of the methods HTTP defines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct MethodName(pub http::Method);

impl MethodName {
    pub(super) const KNOWN: [&'static str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];

    pub fn parse(text: &str) -> Result<MethodName, String> {
        let upper = text.to_ascii_uppercase();
        if !Self::KNOWN.contains(&upper.as_str()) {
            return Err(format!("unknown method {text:?}"));
        }
        http::Method::from_bytes(upper.as_bytes())
            .map(MethodName)
            .map_err(|_| format!("unknown method {text:?}"))
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

text_value!(MethodName);

/// A header name, checked and lower-cased when the file is read (ordered, for maps).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderKey(pub HeaderName);

impl HeaderKey {
    pub fn parse(text: &str) -> Result<HeaderKey, String> {
        header_name(text).map(HeaderKey)
    }
}

impl PartialOrd for HeaderKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HeaderKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_str().cmp(other.0.as_str())
    }
}

impl fmt::Display for HeaderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

text_value!(HeaderKey);

/// A header value that can go on the wire (no control characters or line breaks).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderText(pub http::HeaderValue);

impl HeaderText {
    pub fn parse(text: &str) -> Result<HeaderText, String> {
        http::HeaderValue::from_str(text)
            .map(HeaderText)
            .map_err(|_| format!("invalid header value {text:?}"))
    }
}

impl fmt::Display for HeaderText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.to_str().unwrap_or_default())
    }
}

text_value!(HeaderText);

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(
            Cidr::parse("10.0.0.0/8").map(|c| c.to_string()).as_deref(),
            Ok("10.0.0.0/8")
        );
        assert!(Cidr::parse("192.0.2.7").is_ok_and(|c| c.0.prefix_len() == 32));
        assert_eq!(
            Cidr::parse("10.1.2.3/8").map(|c| c.to_string()).as_deref(),
            Ok("10.0.0.0/8")
        );
        assert_eq!(
            Cidr::parse("::1").map(|c| c.to_string()).as_deref(),
            Ok("::1/128")
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn host_patterns() {
        let p = HostPattern::parse("*.Example.com").expect("pattern");
        assert!(p.matches("API.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("a.b.example.com"));
        assert!(!p.matches("evilexample.com"));
        assert_eq!(p.to_string(), "*.example.com");
        for bad in ["*foo.com", "*.", "a.*.com", "", "a b", "x/y"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(HostPattern::parse("127.0.0.1").is_ok());
        assert!(HostPattern::parse("::1").is_ok());
    }

    #[test]
    fn hash_on_forms() {
        assert_eq!(HashOn::parse("client_ip"), Ok(HashOn::ClientIp));
        assert!(matches!(HashOn::parse("cookie:sid"), Ok(HashOn::Cookie(c)) if c == "sid"));
        assert!(HashOn::parse("header:").is_err());
        assert!(HashOn::parse("path").is_err());
        assert_eq!(
            HashOn::parse("header:X-User")
                .map(|h| h.to_string())
                .as_deref(),
            Ok("header:x-user")
        );
    }

    #[test]
    fn rate_limit_keys() {
        assert_eq!(RateLimitKey::parse("api_key"), Ok(RateLimitKey::ApiKey));
        assert!(RateLimitKey::parse("header:x a").is_err());
        assert!(RateLimitKey::parse("ip").is_err());
    }
}
