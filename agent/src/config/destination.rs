//! Destinations an operator names in the configuration: an address range and, optionally, one
//! port (`10.0.0.0/8:5432`, `192.0.2.7:443`, `[2001:db8::]/32:443`, `10.1.0.0/16` for every
//! port).
//!
//! The agent refuses what it cannot identify; these lists are how an operator vouches for the
//! rare destinations that must be reached anyway. Written as text in TOML so a list reads like
//! a firewall rule; parsed once at load, with an error that names the entry.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One address range with an optional port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    /// The range's first address (host bits below the prefix are zero).
    net: IpAddr,
    /// How many leading bits of `net` must match.
    prefix: u8,
    /// The one port, or every port.
    port: Option<u16>,
}

/// The name servers `/etc/resolv.conf` lists (`nameserver ADDRESS` lines; a zone index after `%`
/// is dropped), which a locked-down cgroup may always reach on port 53.
pub fn resolvers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|addr| addr.split('%').next()?.parse().ok())
        .collect()
}

/// Why a destination's text was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "destination {text:?}: {why} (write ADDRESS[/PREFIX][:PORT], an IPv6 address in brackets: \
     \"10.0.0.0/8:5432\", \"[2001:db8::]/32:443\")"
)]
pub struct DestinationError {
    /// The text as written.
    pub text: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl Destination {
    /// The range's first address.
    pub fn net(&self) -> IpAddr {
        self.net
    }

    /// How many leading bits of [`Destination::net`] must match.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The one port, or `None` for every port.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether the range is of IPv4 addresses.
    pub fn is_v4(&self) -> bool {
        self.net.is_ipv4()
    }

    /// How many addresses the range spans, as the number of host bits (0 for one address).
    pub fn host_bits(&self) -> u8 {
        let width = if self.net.is_ipv4() { 32 } else { 128 };
        width - self.prefix
    }

    /// Whether `addr` lies in the range and, when a port is named, uses it. An IPv4 address
    /// mapped into IPv6 (`::ffff:a.b.c.d`) is compared as the IPv4 address it is.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        if self.port.is_some_and(|p| p != addr.port()) {
            return false;
        }
        let ip = match addr.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(ip)), 32, self.prefix) == u128::from(u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(ip), 128, self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// `value` with all but its leading `prefix` bits (of `width`) cleared.
fn masked(value: u128, width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let drop = u32::from(width - prefix.min(width));
    value >> drop << drop
}

impl FromStr for Destination {
    type Err = DestinationError;

    fn from_str(text: &str) -> Result<Destination, DestinationError> {
        let err = |why| DestinationError {
            text: text.to_owned(),
            why,
        };
        let s = text.trim();
        // Split off the address (bracketed for IPv6), then "/prefix", then ":port".
        let (addr, rest) = if let Some(inner) = s.strip_prefix('[') {
            let end = inner.find(']').ok_or_else(|| err("no closing bracket"))?;
            (&inner[..end], &inner[end + 1..])
        } else {
            if s.matches(':').count() > 1 {
                return Err(err("an IPv6 address must be in brackets"));
            }
            let end = s.find(['/', ':']).unwrap_or(s.len());
            (&s[..end], &s[end..])
        };
        let net: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let width: u8 = if net.is_ipv4() { 32 } else { 128 };
        let (prefix, rest) = match rest.strip_prefix('/') {
            Some(r) => {
                let end = r.find(':').unwrap_or(r.len());
                let p: u8 = r[..end].parse().map_err(|_| err("not a prefix length"))?;
                if p > width {
                    return Err(err("prefix longer than the address"));
                }
                (p, &r[end..])
            }
            None => (width, rest),
        };
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| err("not a port (1 to 65535)"))?,
            ),
            None if rest.is_empty() => None,
            None => return Err(err("unexpected text after the address")),
        };
        let bits = match net {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        if masked(bits, width, prefix) != bits {
            return Err(err("address has bits set below the prefix"));
        }
        Ok(Destination { net, prefix, port })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.net.is_ipv4() { 32 } else { 128 };
        match self.net {
            IpAddr::V4(v4) => write!(f, "{v4}")?,
            IpAddr::V6(v6) => write!(f, "[{v6}]")?,
        }
        if self.prefix != full {
            write!(f, "/{}", self.prefix)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl Serialize for Destination {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Destination, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether any of `list` contains `addr`.
pub fn any_contains(list: &[Destination], addr: SocketAddr) -> bool {
    list.iter().any(|d| d.contains(addr))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn d(s: &str) -> Destination {
        s.parse().unwrap()
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_and_ports_match_as_written() {
        assert!(d("10.0.0.0/8:5432").contains(a("10.200.1.2:5432")));
        assert!(!d("10.0.0.0/8:5432").contains(a("10.200.1.2:5433")));
        assert!(!d("10.0.0.0/8:5432").contains(a("11.0.0.1:5432")));
        assert!(d("192.0.2.7:443").contains(a("192.0.2.7:443")));
        assert!(!d("192.0.2.7:443").contains(a("192.0.2.8:443")));
        assert!(d("10.1.0.0/16").contains(a("10.1.255.255:1")));
        assert!(d("0.0.0.0/0:53").contains(a("8.8.8.8:53")));
        assert!(d("[2001:db8::]/32:443").contains(a("[2001:db8:1::5]:443")));
        assert!(!d("[2001:db8::]/32:443").contains(a("[2001:db9::5]:443")));
        assert!(d("[::1]:443").contains(a("[::1]:443")));
        // A v4-mapped peer is the IPv4 address it carries, never a v6 range's member.
        assert!(d("127.77.0.0/24:443").contains(a("[::ffff:127.77.0.9]:443")));
        assert!(!d("[::]/0").contains(a("[::ffff:127.77.0.9]:443")));
        assert!(!d("10.0.0.0/8").contains(a("[::1]:443")));
    }

    #[test]
    fn text_round_trips() {
        for s in [
            "10.0.0.0/8:5432",
            "192.0.2.7:443",
            "10.1.0.0/16",
            "[2001:db8::]/32:443",
            "[::1]",
        ] {
            assert_eq!(d(s).to_string(), s);
        }
    }

    #[test]
    fn bad_text_is_named_with_the_reason() {
        for (s, why) in [
            ("10.0.0/8", "not an IP address"),
            ("10.0.0.1/33", "prefix longer than the address"),
            ("10.0.0.1:0", "not a port (1 to 65535)"),
            ("10.0.0.1:http", "not a port (1 to 65535)"),
            ("2001:db8::1", "an IPv6 address must be in brackets"),
            ("[2001:db8::1", "no closing bracket"),
            ("10.0.0.1/8", "address has bits set below the prefix"),
            ("[::1]x", "unexpected text after the address"),
        ] {
            let e = s.parse::<Destination>().unwrap_err();
            assert_eq!(e.why, why, "{s}");
            assert!(e.to_string().contains(s), "{e}");
        }
    }

    #[test]
    fn resolvers_are_read_from_resolv_conf() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:5\n";
        assert_eq!(
            resolvers(text),
            [
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert!(resolvers("").is_empty());
    }
}
