//! Allow and deny lists. Deny wins; an empty allow list allows everyone.

use ipnet::IpNet;
use std::net::IpAddr;

pub fn permits(ip: Option<IpAddr>, allow: &[IpNet], deny: &[IpNet]) -> bool {
    let Some(ip) = ip else {
        return allow.is_empty();
    };
    if deny.iter().any(|n| n.contains(&ip)) {
        return false;
    }
    allow.is_empty() || allow.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_and_empty_allows() {
        let net = |s: &str| -> IpNet { s.parse().unwrap() };
        let ip = Some("10.1.1.1".parse().unwrap());
        assert!(permits(ip, &[], &[]));
        assert!(!permits(ip, &[net("10.0.0.0/8")], &[net("10.1.0.0/16")]));
        assert!(!permits(ip, &[net("192.168.0.0/16")], &[]));
        assert!(permits(ip, &[net("10.0.0.0/8")], &[]));
    }
}
