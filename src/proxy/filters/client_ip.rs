//! The client's address: the socket peer, unless that peer is a trusted proxy; then
//! `X-Forwarded-For` is read right to left and the first untrusted hop is the client.
//! The left-most entry is never believed on its own: anyone can write it.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

pub fn resolve(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer.map(|ip| ip.to_canonical())?;
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
            break;
        };
        client = ip;
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    Some(client)
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let ip = resolve(Some("1.2.3.4".parse().unwrap()), &xff("9.9.9.9"), &[]);
        assert_eq!(ip, Some("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn reads_right_to_left_past_trusted_hops() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = resolve(
            Some("10.0.0.1".parse().unwrap()),
            &xff("6.6.6.6, 5.5.5.5, 10.0.0.7"),
            &trusted,
        );
        assert_eq!(ip, Some("5.5.5.5".parse().unwrap()));
    }
}
