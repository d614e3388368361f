//! Failed authentication, rate-limited per client address (`governor`'s GCRA): an address may
//! present `auth.failed_auth_burst` wrong keys at once and earns one back every
//! 60 / `failed_auth_per_minute` seconds. Once governor refuses one of its failures, the address
//! is refused (429 `rate_limited`) for every key, a correct one too, until it has earned a try
//! back; otherwise guessing would simply go on at full speed between refusals.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpMessage, HttpRequest};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::settings::Settings;

/// How often state of addresses that have earned their whole allowance back is dropped.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

pub struct FailedAuthLimiter {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses governor has refused, with the instant it lets them try again. Only
    /// governor's verdicts are kept here: it has no way to ask without spending a try.
    limited_until: Mutex<HashMap<IpAddr, Instant>>,
    clock: DefaultClock,
}

impl FailedAuthLimiter {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let clock = DefaultClock::default();
        Self {
            failures: RateLimiter::dashmap_with_clock(Quota::per_minute(per_minute).allow_burst(burst), clock.clone()),
            limited_until: Mutex::new(HashMap::new()),
            clock,
        }
    }

    pub fn from_settings(settings: &Settings) -> Self {
        Self::new(settings.auth.failed_auth_per_minute, settings.auth.failed_auth_burst)
    }

    /// `Some(seconds to wait)` while `client` is refused.
    pub fn limited(&self, client: IpAddr) -> Option<u64> {
        let key = bucket(client);
        let mut limited = self.limited_until.lock().unwrap_or_else(|p| p.into_inner());
        let until = *limited.get(&key)?;
        let now = Instant::now();
        if until > now {
            return Some(whole_seconds(until - now));
        }
        limited.remove(&key);
        None
    }

    /// Counts a failed attempt; `Some(seconds to wait)` if it exceeds the allowance.
    pub fn failed(&self, client: IpAddr) -> Option<u64> {
        let key = bucket(client);
        let not_until = self.failures.check_key(&key).err()?;
        let wait = not_until.wait_time_from(self.clock.now());
        let mut limited = self.limited_until.lock().unwrap_or_else(|p| p.into_inner());
        limited.insert(key, Instant::now() + wait);
        Some(whole_seconds(wait))
    }

    /// Forgets addresses that are back to their full allowance, so memory stays bounded by the
    /// addresses seen in the last few minutes.
    pub fn forget_idle(&self) {
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        let now = Instant::now();
        let mut limited = self.limited_until.lock().unwrap_or_else(|p| p.into_inner());
        limited.retain(|_, until| *until > now);
        limited.shrink_to_fit();
    }

    /// Runs [`forget_idle`](Self::forget_idle) every minute while the application lives.
    pub fn start_housekeeping(self: &Arc<Self>) {
        let limiter = Arc::downgrade(self);
        actix_web::rt::spawn(async move {
            let mut ticks = tokio::time::interval(HOUSEKEEPING_EVERY);
            loop {
                ticks.tick().await;
                match limiter.upgrade() {
                    Some(l) => l.forget_idle(),
                    None => return,
                }
            }
        });
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.failures.len()
    }
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The unit an address is counted in: one IPv4 address, or one IPv6 /64 (a single host usually
/// holds a whole /64, so counting its addresses one by one would limit nothing).
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// On a request another instance of the cluster forwarded (its secret checked): the client's
/// address as that instance saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedBy(pub IpAddr);

/// The client's address: the peer's, unless the peer is a trusted proxy; then the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy (entries further left were
/// written by the client and prove nothing).
pub fn client_address(req: &HttpRequest, trusted_proxies: &[IpNet]) -> Option<IpAddr> {
    if let Some(ForwardedBy(client)) = req.extensions().get::<ForwardedBy>() {
        return Some(*client);
    }
    let peer = req.peer_addr()?.ip();
    forwarded_client(peer, req.headers().get_all("x-forwarded-for").filter_map(|v| v.to_str().ok()), trusted_proxies)
}

fn forwarded_client<'a>(peer: IpAddr, forwarded: impl Iterator<Item = &'a str>, trusted: &[IpNet]) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let entries: Vec<&str> = forwarded.flat_map(|v| v.split(',')).map(str::trim).collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_forwarded(entry) else {
            // A malformed entry ends what can be believed: the last proxy's word stands.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Some(client)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_past_its_burst_is_refused_for_every_key_and_others_are_not() {
        let limiter = FailedAuthLimiter::new(1, 3);
        let (attacker, other) = (ip("192.0.2.1"), ip("192.0.2.2"));
        for _ in 0..3 {
            assert_eq!(limiter.failed(attacker), None);
        }
        assert!(limiter.limited(attacker).is_none(), "the burst itself is allowed");
        let wait = limiter.failed(attacker).expect("the fourth failure is refused");
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(limiter.limited(attacker).is_some(), "then every attempt is refused");
        assert!(limiter.limited(other).is_none());
        assert_eq!(limiter.failed(other), None);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(bucket(ip("2001:db8:1:2:aaaa::1")), bucket(ip("2001:db8:1:2:bbbb::2")));
        assert_ne!(bucket(ip("2001:db8:1:2::1")), bucket(ip("2001:db8:1:3::1")));
        assert_eq!(bucket(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn forget_idle_drops_addresses_back_at_full_allowance() {
        let limiter = FailedAuthLimiter::new(60_000, 1);
        for i in 0..100u8 {
            limiter.failed(IpAddr::from([10, 0, 0, i]));
        }
        assert_eq!(limiter.tracked(), 100);
        std::thread::sleep(Duration::from_millis(20));
        limiter.forget_idle();
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = |v: &'static str| std::iter::once(v);
        // An untrusted peer's header is ignored.
        assert_eq!(forwarded_client(ip("192.0.2.9"), xff("203.0.113.1"), &trusted), Some(ip("192.0.2.9")));
        // Through two trusted proxies: the right-most untrusted entry; spoofed ones left of it lose.
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), xff("1.1.1.1, 203.0.113.7, 10.0.0.2"), &trusted),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(forwarded_client(ip("10.0.0.1"), xff("[2001:db8::1]:443"), &trusted), Some(ip("2001:db8::1")));
        assert_eq!(forwarded_client(ip("10.0.0.1"), xff("garbage"), &trusted), Some(ip("10.0.0.1")));
        assert_eq!(forwarded_client(ip("10.0.0.1"), std::iter::empty(), &trusted), Some(ip("10.0.0.1")));
    }
}
