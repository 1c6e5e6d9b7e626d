//! Which client address to believe: `X-Real-IP` from a trusted proxy, else the peer itself.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client's address: the `X-Real-IP` header when `peer` is a trusted proxy and the header
/// holds an address, else `peer`.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted_proxies.iter().any(|net| net.contains(&peer)) {
        return peer;
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map_or(peer, |ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_believed_from_trusted_proxies_only() {
        let trusted: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert("x-real-ip", "203.0.113.7".parse().unwrap());
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_address(proxy, &headers, &trusted).to_string(),
            "203.0.113.7"
        );
        assert_eq!(client_address(stranger, &headers, &trusted), stranger);
        headers.insert("x-real-ip", "garbage".parse().unwrap());
        assert_eq!(client_address(proxy, &headers, &trusted), proxy);
    }
}
