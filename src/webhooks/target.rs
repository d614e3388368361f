//! Where a webhook may be sent (SSRF): http(s) only, and never to an internal address —
//! loopback, private, link-local (cloud metadata), CGNAT, unique-local, unspecified,
//! multicast, or an IPv4-mapped IPv6 form of those — unless its host (or host:port) is in
//! `webhooks.allowed_hosts`. The name is resolved once per check and the connection goes to
//! the addresses checked, so a DNS answer that changes between the check and the connect
//! (rebinding) cannot move the delivery elsewhere.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::LazyLock;

use ipnet::IpNet;
use url::Url;

/// Ranges no webhook may reach unless its host is allowlisted.
static REFUSED: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",      // "this network", unspecified
        "10.0.0.0/8",     // private
        "100.64.0.0/10",  // CGNAT
        "127.0.0.0/8",    // loopback
        "169.254.0.0/16", // link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",  // private
        "192.0.0.0/24",   // IETF protocol assignments
        "192.168.0.0/16", // private
        "198.18.0.0/15",  // benchmarking
        "224.0.0.0/4",    // multicast
        "240.0.0.0/4",    // reserved, broadcast
        "::/128",         // unspecified
        "::1/128",        // loopback
        "64:ff9b:1::/48", // local-use NAT64
        "fc00::/7",       // unique-local
        "fe80::/10",      // link-local
        "fec0::/10",      // site-local (deprecated)
        "ff00::/8",       // multicast
    ]
    .iter()
    .filter_map(|net| net.parse().ok())
    .collect()
});

/// Why a target is refused (the API's `webhook_target_refused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `ip` is an internal address (IPv4-mapped and -compatible IPv6 judged as IPv4).
pub fn is_internal(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    // NAT64 of the well-known prefix carries an IPv4 address in its last 32 bits.
    if let IpAddr::V6(v6) = ip
        && v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
    {
        let o = v6.octets();
        return is_internal(IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15])));
    }
    REFUSED.iter().any(|net| net.contains(&ip))
}

/// A checked target: the URL, its host and port, and the addresses to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Url,
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// The URL parsed and its scheme checked (http or https, with a host, no credentials in it).
pub fn parse(url: &str) -> Result<Url, Refused> {
    let parsed = Url::parse(url).map_err(|e| Refused(format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Refused(format!("scheme `{}` is not allowed (http or https only)", parsed.scheme())));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Refused("the URL has no host".into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Refused("credentials in the URL are not allowed (sign with the secret instead)".into()));
    }
    Ok(parsed)
}

/// Whether `host`/`port` is listed in `allowed_hosts` (`name` or `name:port`, case-insensitive;
/// IPv6 literals with or without brackets).
pub fn allowlisted(allowed: &[String], host: &str, port: u16) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    allowed.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.trim_start_matches('[').trim_end_matches(']') == bare {
            return true;
        }
        match entry.rsplit_once(':') {
            Some((h, p)) => h.trim_start_matches('[').trim_end_matches(']') == bare && p.parse() == Ok(port),
            None => false,
        }
    })
}

/// Resolves the URL's host once and checks every address: the target to connect to, or why
/// not. An allowlisted host may resolve anywhere; any other must resolve to public addresses
/// only (one internal address among them refuses it: a mixed answer is a rebinding tool).
pub async fn check(url: &str, allowed: &[String]) -> Result<Target, Refused> {
    let url = parse(url)?;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare.as_str(), port))
            .await
            .map_err(|e| Refused(format!("cannot resolve {host}: {e}")))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Refused(format!("{host} resolves to no address")));
    }
    if !allowlisted(allowed, &host, port)
        && let Some(internal) = addrs.iter().find(|a| is_internal(a.ip()))
    {
        return Err(Refused(format!(
            "{host} resolves to the internal address {} (list it in webhooks.allowed_hosts to allow it)",
            internal.ip()
        )));
    }
    Ok(Target { url, host: bare, addrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges_are_refused_and_public_ones_pass() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::10.0.0.1",
        ] {
            assert!(is_internal(bad.parse().unwrap()), "{bad} must be refused");
        }
        for good in ["1.1.1.1", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(!is_internal(good.parse().unwrap()), "{good} is public");
        }
    }

    #[test]
    fn only_http_and_https_with_a_host_and_no_credentials() {
        assert!(parse("https://example.com/hook").is_ok());
        assert!(parse("http://example.com:8080/").is_ok());
        for bad in ["ftp://example.com/", "file:///etc/passwd", "gopher://x/", "https://u:p@example.com/", "nope"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_allowlist_names_hosts_or_host_and_port() {
        let allowed = vec!["127.0.0.1:9000".to_string(), "Hooks.Internal".to_string(), "[::1]".to_string()];
        assert!(allowlisted(&allowed, "127.0.0.1", 9000));
        assert!(!allowlisted(&allowed, "127.0.0.1", 9001));
        assert!(allowlisted(&allowed, "hooks.internal", 443));
        assert!(allowlisted(&allowed, "[::1]", 80));
        assert!(!allowlisted(&allowed, "localhost", 9000));
    }

    #[actix_web::test]
    async fn a_literal_internal_address_is_refused_unless_allowlisted() {
        assert!(check("http://127.0.0.1:9/x", &[]).await.is_err());
        assert!(check("http://[::ffff:10.0.0.1]/", &[]).await.is_err());
        assert!(check("http://localhost:9/", &[]).await.is_err(), "names are resolved and checked too");
        let t = check("http://127.0.0.1:9/x", &["127.0.0.1".into()]).await.unwrap();
        assert_eq!(t.addrs, vec!["127.0.0.1:9".parse().unwrap()]);
    }
}
