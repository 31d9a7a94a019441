//! The PROXY protocol (HAProxy's, v1 text and v2 binary), as an L4 balancer in front sends it:
//! one header before the client's first byte that says whom the balancer accepted.
//!
//! [`accept`] runs on a connection's raw socket stream, before TLS and HTTP: a peer outside the
//! listener's `trusted` list is closed before a byte is read; a header that is missing,
//! malformed or slower than the deadline closes the connection too; each of those is counted
//! in `switchyard_proxy_protocol_rejected_total{listener,reason}`. A good header's source and
//! destination replace the socket's peer and local address in the stream's socket digest,
//! which is where Pingora's `client_addr()` (and so every policy, log line and forwarded
//! header) reads the client from. A v2 `LOCAL` header (the balancer's own health check) and
//! `PROXY UNKNOWN` keep the socket's addresses. Bytes read past the header go back into the
//! stream (`rewind`) for TLS or HTTP to read. [`encode`] writes the header a TCP listener
//! sends to its backends. Parsing is the `ppp` crate's.

use crate::config::ProxyProtocolVersion;
use ipnet::IpNet;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use ppp::{v1, v2, HeaderResult, PartialResult};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::io::AsRawFd;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The v1 header's start; a v1 header is at most 107 bytes.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The longest v2 header: 16 fixed bytes and a 16-bit length of addresses and TLVs.
const MAX_HEADER: usize = 16 + u16::MAX as usize;

/// Why a connection was closed before its header was accepted.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("the peer {0} is not in proxy_protocol.trusted")]
    Untrusted(String),
    #[error("no PROXY protocol header (the connection opened with other bytes)")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("no complete PROXY protocol header within edge.header_timeout")]
    Timeout,
    /// Closed before sending a byte: a balancer's TCP health check does this. Not counted.
    #[error("closed before sending a PROXY protocol header")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

impl Rejection {
    /// The `reason` label, or `None` for a connection that is not worth counting.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Rejection::Untrusted(_) => Some("untrusted"),
            Rejection::Missing => Some("missing"),
            Rejection::Malformed(_) => Some("malformed"),
            Rejection::Timeout => Some("timeout"),
            Rejection::Closed | Rejection::Io(_) => None,
        }
    }
}

/// Every counted reason, so that each listener's series exist from the start.
pub const REASONS: [&str; 4] = ["untrusted", "missing", "malformed", "timeout"];

/// Creates the listener's series at 0.
pub fn register(listener: &str) {
    for reason in REASONS {
        crate::metrics::PROXY_PROTOCOL_REJECTED.with_label_values(&[listener, reason]);
    }
}

/// Checks the peer, reads the header within `limit` and makes its addresses the stream's.
/// A rejection is counted and logged here; the caller only closes the connection.
pub async fn accept(
    stream: &mut L4Stream,
    listener: &str,
    trusted: &[IpNet],
    limit: Duration,
) -> Result<(), Rejection> {
    let peer = socket_peer(stream);
    let result = receive(stream, peer, trusted, limit).await;
    if let Err(why) = &result {
        let from = peer.map_or_else(|| "an unknown peer".to_string(), |p| p.to_string());
        match why.reason() {
            Some(reason) => {
                crate::metrics::PROXY_PROTOCOL_REJECTED
                    .with_label_values(&[listener, reason])
                    .inc();
                log::info!("listener {listener}: closed a connection from {from}: {why}");
            }
            None => log::debug!("listener {listener}: connection from {from}: {why}"),
        }
    }
    result
}

async fn receive(
    stream: &mut L4Stream,
    peer: Option<SocketAddr>,
    trusted: &[IpNet],
    limit: Duration,
) -> Result<(), Rejection> {
    let peer_ip = peer.map(|p| p.ip().to_canonical());
    if !peer_ip.is_some_and(|ip| trusted.iter().any(|n| n.contains(&ip))) {
        return Err(Rejection::Untrusted(
            peer_ip.map_or_else(|| "without an address".into(), |ip| ip.to_string()),
        ));
    }
    let (addresses, rest) = tokio::time::timeout(limit, read_header(stream))
        .await
        .map_err(|_| Rejection::Timeout)??;
    stream.rewind(&rest);
    if let Some((source, destination)) = addresses {
        let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
        // Fresh cells: set cannot fail.
        let _ = digest.peer_addr.set(Some(PeerAddr::Inet(source)));
        let _ = digest.local_addr.set(Some(PeerAddr::Inet(destination)));
        stream.set_socket_digest(digest);
    }
    Ok(())
}

fn socket_peer(stream: &L4Stream) -> Option<SocketAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().copied()
}

/// What the bytes read so far are.
#[derive(Debug, PartialEq)]
enum Parsed {
    /// A whole header of `len` bytes; the client's addresses, or `None` to keep the socket's.
    Header {
        len: usize,
        addresses: Option<(SocketAddr, SocketAddr)>,
    },
    Incomplete,
    Missing,
    Malformed(String),
}

/// Reads until a header is complete; returns its addresses and the bytes read past it.
async fn read_header<R: AsyncReadExt + Unpin>(
    stream: &mut R,
) -> Result<(Option<(SocketAddr, SocketAddr)>, Vec<u8>), Rejection> {
    // A v1 header, or a v2 header with IPv6 addresses and a few TLVs, fits the first read.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        match parse(&buf) {
            Parsed::Header { len, addresses } => return Ok((addresses, buf.split_off(len))),
            Parsed::Missing => return Err(Rejection::Missing),
            Parsed::Malformed(why) => return Err(Rejection::Malformed(why)),
            Parsed::Incomplete if buf.len() >= MAX_HEADER => {
                return Err(Rejection::Malformed("longer than any header".into()))
            }
            Parsed::Incomplete => {}
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                Rejection::Closed
            } else {
                Rejection::Malformed("the connection closed inside the header".into())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether `buf` starts like a header of either version (or is too short to tell).
fn could_be_header(buf: &[u8]) -> bool {
    [V1_SIGNATURE, v2::PROTOCOL_PREFIX].iter().any(|sig| {
        let n = buf.len().min(sig.len());
        sig[..n] == buf[..n]
    })
}

fn parse(buf: &[u8]) -> Parsed {
    if !could_be_header(buf) {
        return Parsed::Missing;
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(h)) => Parsed::Header {
            len: h.header.len(),
            addresses: match h.addresses {
                v1::Addresses::Tcp4(a) => Some(pair(
                    a.source_address.into(),
                    a.source_port,
                    a.destination_address.into(),
                    a.destination_port,
                )),
                v1::Addresses::Tcp6(a) => Some(pair(
                    a.source_address.into(),
                    a.source_port,
                    a.destination_address.into(),
                    a.destination_port,
                )),
                v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(h)) => Parsed::Header {
            len: h.len(),
            addresses: match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Some(pair(
                    a.source_address.into(),
                    a.source_port,
                    a.destination_address.into(),
                    a.destination_port,
                )),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Some(pair(
                    a.source_address.into(),
                    a.source_port,
                    a.destination_address.into(),
                    a.destination_port,
                )),
                // UNSPEC and unix sockets say nothing about an IP client.
                (v2::Command::Proxy, _) => None,
            },
        },
        HeaderResult::V1(Err(e)) => Parsed::Malformed(e.to_string()),
        HeaderResult::V2(Err(e)) => Parsed::Malformed(e.to_string()),
    }
}

fn pair(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(src.to_canonical(), sport),
        SocketAddr::new(dst.to_canonical(), dport),
    )
}

/// The header a TCP listener sends its backend first: the client's address and the one it
/// connected to, or v1 `UNKNOWN` / v2 `LOCAL` when they are not known.
pub fn encode(
    version: ProxyProtocolVersion,
    addresses: Option<(SocketAddr, SocketAddr)>,
) -> Vec<u8> {
    let addresses = addresses.map(same_family);
    match version {
        ProxyProtocolVersion::V1 => addresses
            .map_or(v1::Addresses::Unknown, v1::Addresses::from)
            .to_string()
            .into_bytes(),
        ProxyProtocolVersion::V2 => {
            let (command, addresses) = match addresses {
                Some(a) => (v2::Command::Proxy, v2::Addresses::from(a)),
                None => (v2::Command::Local, v2::Addresses::Unspecified),
            };
            v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses)
                .build()
                // Only a payload over 64 KiB fails, and addresses are at most 36 bytes.
                .unwrap_or_default()
        }
    }
}

/// Both addresses in one family, as a header must carry them (IPv4 as IPv4-mapped IPv6
/// beside an IPv6 address).
fn same_family((src, dst): (SocketAddr, SocketAddr)) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_header_and_what_follows() {
        let wire = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\nGET / HTTP/1.1\r\n";
        let Parsed::Header { len, addresses } = parse(wire) else {
            panic!("not a header: {:?}", parse(wire));
        };
        assert_eq!(&wire[len..], b"GET / HTTP/1.1\r\n");
        assert_eq!(
            addresses,
            Some((addr("192.0.2.7:5555"), addr("10.0.0.1:443")))
        );
    }

    #[test]
    fn a_header_cut_short_waits_for_more() {
        let whole = encode(
            ProxyProtocolVersion::V2,
            Some((addr("[2001:db8::1]:1"), addr("[2001:db8::2]:2"))),
        );
        for n in 0..whole.len() {
            assert_eq!(parse(&whole[..n]), Parsed::Incomplete, "{n} bytes");
        }
        assert!(matches!(parse(&whole), Parsed::Header { .. }));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6"), Parsed::Incomplete);
    }

    #[test]
    fn other_bytes_are_missing_and_bad_headers_malformed() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Missing);
        assert_eq!(parse(b"\x16\x03\x01"), Parsed::Missing);
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n"),
            Parsed::Malformed(_)
        ));
    }

    #[test]
    fn local_and_unknown_keep_the_socket_addresses() {
        let local = encode(ProxyProtocolVersion::V2, None);
        assert!(matches!(
            parse(&local),
            Parsed::Header {
                addresses: None,
                ..
            }
        ));
        let unknown = encode(ProxyProtocolVersion::V1, None);
        assert_eq!(unknown, b"PROXY UNKNOWN\r\n");
        assert!(matches!(
            parse(&unknown),
            Parsed::Header {
                addresses: None,
                ..
            }
        ));
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6() {
        let wire = encode(
            ProxyProtocolVersion::V1,
            Some((addr("192.0.2.7:1"), addr("[2001:db8::2]:2"))),
        );
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "PROXY TCP6 ::ffff:192.0.2.7 2001:db8::2 1 2\r\n"
        );
    }
}
