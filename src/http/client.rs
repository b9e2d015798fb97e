//! Who sent a request: the client address (the peer, or `X-Forwarded-For` read from the right
//! past trusted proxies) and whether the browser asked not to be tracked.
//!
//! Invariants:
//! - With no `server.trusted_proxies`, `X-Forwarded-For` is ignored: the peer is the client.
//! - The header counts only when the peer itself is a trusted proxy, and then the client is
//!   the right-most address that is not one: everything left of it was written by the client
//!   (or anyone before it) and proves nothing. A header that ends in garbage yields the last
//!   trusted hop, never an address the client chose.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client address of a request from `peer`.
pub(super) fn client_ip(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer.map(|p| canonical(p.ip()))?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    // Several headers are one list, in order (RFC 9110 §5.3).
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        match parse_hop(hop.trim()) {
            Some(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            None => break,
        }
    }
    Some(client)
}

/// An address as proxies write it: bare, `[v6]`, or with a port (`1.2.3.4:5678`, `[v6]:port`).
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
        .map(canonical)
}

/// IPv4-mapped IPv6 (a dual-stack socket's view of an IPv4 peer) as IPv4, so ranges match.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `Sec-GPC: 1` (Global Privacy Control) or `DNT: 1` (Do Not Track).
pub(super) fn do_not_track(headers: &HeaderMap) -> bool {
    ["sec-gpc", "dnt"].iter().any(|h| {
        headers
            .get(*h)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "1")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip_of(xff: &[&str], peer: &str, trusted: &[&str]) -> String {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        let nets: Vec<IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        client_ip(&h, Some(peer.parse().unwrap()), &nets)
            .unwrap()
            .to_string()
    }

    #[test]
    fn forwarded_for_is_read_from_the_right_past_trusted_proxies() {
        let lb = "10.0.0.5:443";
        let t = ["10.0.0.0/8", "fd00::/8"];
        assert_eq!(ip_of(&["203.0.113.7"], lb, &t), "203.0.113.7");
        // The client prepends a spoofed address: the proxy appends the real one after it.
        assert_eq!(ip_of(&["1.1.1.1, 203.0.113.7"], lb, &t), "203.0.113.7");
        // Two proxies of ours: skip both.
        assert_eq!(
            ip_of(&["1.1.1.1, 203.0.113.7, 10.1.2.3"], lb, &t),
            "203.0.113.7"
        );
        assert_eq!(
            ip_of(&["1.1.1.1", "203.0.113.7, 10.1.2.3"], lb, &t),
            "203.0.113.7"
        );
        assert_eq!(
            ip_of(&["[2001:db8::1]:1234, fd00::2"], lb, &t),
            "2001:db8::1"
        );
        assert_eq!(ip_of(&["198.51.100.1:5555"], lb, &t), "198.51.100.1");
        // Garbage where the client's address should be: the last trusted hop, not the garbage
        // nor anything left of it.
        assert_eq!(ip_of(&["1.1.1.1, nonsense, 10.9.9.9"], lb, &t), "10.9.9.9");
        assert_eq!(ip_of(&["1.1.1.1, unknown"], lb, &t), "10.0.0.5");
        // Only trusted addresses: the left-most of them.
        assert_eq!(ip_of(&["10.3.3.3, 10.2.2.2"], lb, &t), "10.3.3.3");
        assert_eq!(ip_of(&[], lb, &t), "10.0.0.5");
    }

    #[test]
    fn forwarded_for_is_ignored_without_trusted_proxies_or_from_an_untrusted_peer() {
        assert_eq!(ip_of(&["1.1.1.1"], "203.0.113.7:1000", &[]), "203.0.113.7");
        // A client talking to the collector directly cannot name its address.
        assert_eq!(
            ip_of(&["1.1.1.1"], "203.0.113.7:1000", &["10.0.0.0/8"]),
            "203.0.113.7"
        );
        assert_eq!(
            ip_of(&["1.1.1.1"], "[::ffff:10.0.0.1]:1000", &["10.0.0.0/8"]),
            "1.1.1.1",
            "an IPv4-mapped peer matches IPv4 ranges"
        );
    }

    #[test]
    fn gpc_and_dnt_headers() {
        let with = |k: &str, v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
            do_not_track(&h)
        };
        assert!(with("Sec-GPC", "1"));
        assert!(with("DNT", "1"));
        assert!(!with("DNT", "0"));
        assert!(!do_not_track(&HeaderMap::new()));
    }
}
