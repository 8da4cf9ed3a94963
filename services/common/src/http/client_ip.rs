//! The client address used for rate limits and logs.
//!
//! Behind `trust_proxy_hops` reverse proxies (Express's `trust proxy = N`), the
//! client is the address `N` hops left of the peer in `peer, X-Forwarded-For…`
//! read from the right; with 0 hops the TCP peer is the client and
//! `X-Forwarded-For` is ignored, so it cannot be spoofed.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use http::HeaderMap;
use http::request::Parts;

/// Resolves the client IP from the peer address and forwarding headers.
pub fn resolve(headers: &HeaderMap, peer: IpAddr, trust_proxy_hops: usize) -> IpAddr {
    if trust_proxy_hops == 0 {
        return peer;
    }
    let mut chain: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|entry| entry.trim().parse().ok())
        .collect();
    chain.push(peer);
    let index = chain.len().saturating_sub(1 + trust_proxy_hops);
    chain[index]
}

/// The peer address of a request (loopback when the server was not started with
/// connect info, as in router-level unit tests).
pub fn peer(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("x-forwarded-for", xff.parse().unwrap());
        map
    }

    #[test]
    fn zero_hops_ignores_forwarded_for() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(resolve(&headers("1.2.3.4"), peer, 0), peer);
    }

    #[test]
    fn one_hop_takes_the_rightmost_forwarded_entry() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let got = resolve(&headers("6.6.6.6, 1.2.3.4"), peer, 1);
        assert_eq!(got, "1.2.3.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn more_hops_than_entries_takes_the_leftmost() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let got = resolve(&headers("1.2.3.4"), peer, 5);
        assert_eq!(got, "1.2.3.4".parse::<IpAddr>().unwrap());
    }
}
