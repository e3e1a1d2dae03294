//! The client's address, believing `X-Forwarded-For` only from trusted
//! proxies.

use std::net::IpAddr;
use std::str::FromStr;

use actix_web::HttpRequest;

/// Addresses (`10.0.0.5`) or networks (`10.0.0.0/8`) of the reverse proxies
/// whose `X-Forwarded-For` is believed (app data).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// Parses a comma-separated list.
    fn from_str(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, prefix) = item
                .split_once('/')
                .map_or((item, None), |(a, p)| (a, Some(p)));
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("'{item}' is not an IP address or network"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(p) => p
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| format!("'{item}' has a bad prefix"))?,
                None => max,
            };
            nets.push((ip, prefix));
        }
        Ok(Self(nets))
    }
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), 32),
            None => (u128::from(v6), 128),
        },
    }
}

impl TrustedProxies {
    /// Whether `ip` is one of the trusted proxies.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (addr, width) = bits(ip);
        self.0.iter().any(|(net, prefix)| {
            let (net, net_width) = bits(*net);
            if net_width != width {
                return false;
            }
            let shift = u32::from(width - (*prefix).min(width));
            shift >= u32::from(width) || (addr >> shift) == (net >> shift)
        })
    }

    /// The client's address: the peer, unless the peer is a trusted proxy,
    /// in which case `X-Forwarded-For` is walked from the right (the hops
    /// the trusted proxies added) to the first address that is not a
    /// trusted proxy. The walk stops at an entry that does not parse: what
    /// is left of it was written by the client, so the last trusted hop
    /// stands in for the client then.
    #[must_use]
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        if !self.contains(peer) {
            return Some(peer);
        }
        let entries: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Ok(ip) = entry.parse::<IpAddr>() else {
                break;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        Some(client)
    }
}

/// The key of an address for limits: an IPv4 address as it is, an IPv6
/// one by its /64 (one subscriber usually holds a whole /64).
fn limiter_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The client address as a limiter key part (`unknown` when the peer
/// address is not known, as in some tests).
pub(crate) fn client_key(req: &HttpRequest, trusted: &TrustedProxies) -> String {
    trusted
        .client_ip(req)
        .map_or_else(|| "unknown".to_owned(), limiter_key)
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn networks_match() {
        let t: TrustedProxies = "10.0.0.0/8, 192.168.1.7, ::1".parse().unwrap();
        assert!(t.contains("10.1.2.3".parse().unwrap()));
        assert!(t.contains("192.168.1.7".parse().unwrap()));
        assert!(!t.contains("192.168.1.8".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("example.com".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_peer() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let spoofed = TestRequest::default()
            .peer_addr("203.0.113.9:1234".parse().unwrap())
            .insert_header(("x-forwarded-for", "1.2.3.4"))
            .to_http_request();
        assert_eq!(t.client_ip(&spoofed), Some("203.0.113.9".parse().unwrap()));
        let proxied = TestRequest::default()
            .peer_addr("10.0.0.2:1234".parse().unwrap())
            .insert_header(("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.9"))
            .to_http_request();
        assert_eq!(
            t.client_ip(&proxied),
            Some("198.51.100.7".parse().unwrap()),
            "right-most untrusted"
        );
        let garbage = TestRequest::default()
            .peer_addr("10.0.0.2:1234".parse().unwrap())
            .insert_header(("x-forwarded-for", "6.6.6.6, 198.51.100.7:443, 10.0.0.9"))
            .to_http_request();
        assert_eq!(
            t.client_ip(&garbage),
            Some("10.0.0.9".parse().unwrap()),
            "stops at what does not parse"
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(
            limiter_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            limiter_key("2001:db8:1:2:bbbb::9".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            limiter_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1"
        );
        assert_eq!(limiter_key("192.0.2.1".parse().unwrap()), "192.0.2.1");
    }
}
