//! `host:port` addresses: the one place that takes them apart.

use std::fmt;
use std::net::SocketAddr;

/// `host:port`, `ip:port` or `[ipv6]:port` split at the last colon: the host as written
/// (brackets kept) and the port text. Every place that takes an address apart uses this.
pub fn split_host_port(text: &str) -> Option<(&str, &str)> {
    text.rsplit_once(':')
}

/// A backend address: `ip:port`, `[ipv6]:port`, or `host:port` (a name resolved at run
/// time). Kept as written, for logs, metrics and the admin API.
#[derive(Clone, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    text: String,
    /// The host without brackets: the name sent as SNI and `Host` by default.
    host: String,
    /// Set when the host is an IP address: nothing to resolve.
    socket: Option<SocketAddr>,
}

impl HostPort {
    pub fn parse(text: &str) -> Result<HostPort, String> {
        let bad = || format!("invalid address {text:?}; write ip:port, [ipv6]:port or host:port");
        let (host, port_text) = split_host_port(text).ok_or_else(bad)?;
        // One spelling per port: digits only, no sign, no leading zero, 1 to 65535.
        let port_ok = (1..=5).contains(&port_text.len())
            && port_text.bytes().all(|b| b.is_ascii_digit())
            && !port_text.starts_with('0')
            && port_text.parse::<u16>().is_ok();
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6,
            Some(_) => return Err(bad()),
            // A DNS name (an IPv4 address is one too): labels of letters, digits and '-'.
            None if host.split('.').all(|l| {
                (1..=63).contains(&l.len())
                    && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            }) =>
            {
                host
            }
            None => return Err(bad()),
        };
        // At most 255 characters in all, which keeps a name within DNS's 253.
        if text.len() > 255 || !port_ok {
            return Err(bad());
        }
        Ok(HostPort {
            text: text.to_string(),
            host: host.to_string(),
            socket: text.parse().ok(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The host without brackets (`gpu-7.internal`, `::1`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The socket address when the host is an IP address; `None` for a name to resolve.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.socket
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

text_value!(HostPort);

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> bool {
        HostPort::parse(text).is_ok()
    }

    #[test]
    fn host_port() {
        assert!(ok("127.0.0.1:80"));
        assert!(ok("[::1]:80"));
        assert!(ok("gpu-7.internal:8000"));
        assert!(!ok("gpu-7.internal"));
        assert!(!ok("bad host:80"));
        assert!(!ok("10.0.0.1:99999"));
        assert!(ok("[2001:db8::1]:443"));
        assert!(ok("[::ffff:10.0.0.1]:65535"));
        for bad in [
            "",
            ":80",
            "a:",
            "a:0",
            "a:080",
            "a:+80",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "[::1]",
            "[nope]:80",
            "::1:80",
            "a..b:80",
            "a.:80",
        ] {
            assert!(!ok(bad), "{bad:?}");
        }
        let label = "a".repeat(63);
        assert!(ok(&format!("{label}:1")));
        assert!(!ok(&format!("{label}a:1")));
        let name = [label.as_str(); 4].join(".");
        assert!(ok(&format!("{}:1", &name[..253])));
        assert!(!ok(&format!("{}:12", &name[..253])));
    }

    #[test]
    fn parts() {
        let a = HostPort::parse("[::1]:8080").expect("v6");
        assert_eq!(a.host(), "::1");
        assert_eq!(a.socket_addr(), "[::1]:8080".parse().ok());
        assert_eq!(a.to_string(), "[::1]:8080");
        let n = HostPort::parse("gpu-7.internal:8000").expect("name");
        assert_eq!(n.host(), "gpu-7.internal");
        assert_eq!(n.socket_addr(), None);
    }
}
