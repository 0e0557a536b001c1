//! Addresses and CIDRs as the maps store them: IPv4 as IPv4-mapped IPv6.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use sipfilter_common::{
    config::ipv6_mask,
    maps::{SourceKey, V4_MAPPED_PREFIX_LEN},
};

/// An IPv4 or IPv6 network; a bare address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    /// Prefix length in the address's own family (0..=32 or 0..=128).
    pub prefix_len: u8,
}

impl Cidr {
    pub fn host(addr: IpAddr) -> Self {
        let prefix_len = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, prefix_len }
    }

    /// The 16-byte form the maps store (IPv4-mapped for IPv4), host bits cleared.
    pub fn key_bytes(&self) -> [u8; 16] {
        let mut bytes = to_mapped(self.addr);
        let plen = self.map_prefix_len();
        let mask = ipv6_mask(plen as u8);
        for (i, w) in mask.iter().enumerate() {
            let m = w.to_ne_bytes();
            for j in 0..4 {
                bytes[4 * i + j] &= m[j];
            }
        }
        bytes
    }

    /// Prefix length in the 128-bit mapped space the LPM lists use.
    pub fn map_prefix_len(&self) -> u32 {
        match self.addr {
            IpAddr::V4(_) => V4_MAPPED_PREFIX_LEN + self.prefix_len as u32,
            IpAddr::V6(_) => self.prefix_len as u32,
        }
    }

    /// Rebuilds a CIDR from an LPM key.
    pub fn from_map(bytes: [u8; 16], map_prefix_len: u32) -> Self {
        let addr = from_mapped(bytes);
        let prefix_len = match addr {
            IpAddr::V4(_) => map_prefix_len.saturating_sub(V4_MAPPED_PREFIX_LEN) as u8,
            IpAddr::V6(_) => map_prefix_len as u8,
        };
        Cidr { addr, prefix_len }
    }

    /// Whether `other` (an address or network) lies inside this network.
    pub fn contains(&self, other: &Cidr) -> bool {
        if other.map_prefix_len() < self.map_prefix_len() {
            return false;
        }
        let narrowed = Cidr::from_map(other.key_bytes(), self.map_prefix_len());
        narrowed.key_bytes() == self.key_bytes()
    }

    /// The source key this CIDR names, if it names exactly one: an IPv4 address, or an
    /// IPv6 prefix of exactly the configured source-key length.
    pub fn as_source_key(&self, ipv6_prefix_len: u8) -> Option<SourceKey> {
        match self.addr {
            IpAddr::V4(_) if self.prefix_len == 32 => Some(SourceKey { addr: self.key_bytes() }),
            IpAddr::V6(_) if self.prefix_len == ipv6_prefix_len => Some(SourceKey { addr: self.key_bytes() }),
            IpAddr::V6(a) if self.prefix_len == 128 => Some(source_key(IpAddr::V6(a), ipv6_prefix_len)),
            _ => None,
        }
    }
}

/// The key the program would use for a packet from `addr`.
pub fn source_key(addr: IpAddr, ipv6_prefix_len: u8) -> SourceKey {
    match addr {
        IpAddr::V4(a) => SourceKey::from_v4(a.octets()),
        IpAddr::V6(_) => SourceKey {
            addr: Cidr {
                addr,
                prefix_len: ipv6_prefix_len,
            }
            .key_bytes(),
        },
    }
}

/// How a source key reads to an operator: `192.0.2.7` or `2001:db8:1:2::/64`.
pub fn display_source(key: &SourceKey, ipv6_prefix_len: u8) -> String {
    match from_mapped(key.addr) {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) if ipv6_prefix_len == 128 => a.to_string(),
        IpAddr::V6(a) => format!("{a}/{ipv6_prefix_len}"),
    }
}

fn to_mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => SourceKey::from_v4(a.octets()).addr,
        IpAddr::V6(a) => a.octets(),
    }
}

fn from_mapped(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix_len == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", from_mapped(self.key_bytes()), self.prefix_len)
        }
    }
}

/// Why a string is not an address or CIDR; the message names the string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_cidr(s).map_err(CidrError)
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    {
        let s = s.trim();
        let (addr_part, len_part) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_part
            .parse()
            .map_err(|_| format!("'{s}' is not an IPv4 or IPv6 address or CIDR"))?;
        // An IPv4-mapped IPv6 address is an IPv4 address to the maps; say so explicitly.
        let addr = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => addr,
            },
            v4 => v4,
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len_part {
            None => max,
            Some(l) => {
                let n: u8 = l
                    .parse()
                    .map_err(|_| format!("'{s}': prefix length '{l}' is not a number"))?;
                if n > max {
                    return Err(format!("'{s}': prefix length {n} is longer than {max}"));
                }
                n
            }
        };
        Ok(Cidr { addr, prefix_len })
    }
}

impl From<Ipv4Addr> for Cidr {
    fn from(a: Ipv4Addr) -> Self {
        Cidr::host(IpAddr::V4(a))
    }
}

impl From<Ipv6Addr> for Cidr {
    fn from(a: Ipv6Addr) -> Self {
        Cidr::host(IpAddr::V6(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (input, out) in [
            ("192.0.2.7", "192.0.2.7"),
            ("192.0.2.7/24", "192.0.2.0/24"),
            ("2001:db8::1", "2001:db8::1"),
            ("2001:db8:1:2:3::/64", "2001:db8:1:2::/64"),
            ("::ffff:10.1.2.3", "10.1.2.3"),
            (" 0.0.0.0/0 ", "0.0.0.0/0"),
        ] {
            assert_eq!(input.parse::<Cidr>().unwrap().to_string(), out, "{input}");
        }
    }

    #[test]
    fn rejects_bad_input_naming_it() {
        for bad in [
            "300.1.1.1",
            "1.2.3.4/33",
            "2001:db8::/129",
            "host.example",
            "1.2.3.4/x",
            "",
        ] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert!(err.0.contains(bad.trim()), "{err}");
        }
    }

    #[test]
    fn map_form_round_trips() {
        for s in ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::/0", "0.0.0.0/0"] {
            let c: Cidr = s.parse().unwrap();
            assert_eq!(Cidr::from_map(c.key_bytes(), c.map_prefix_len()), c, "{s}");
        }
    }

    #[test]
    fn containment() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(&"10.1.2.3".parse().unwrap()));
        assert!(net.contains(&"10.1.0.0/16".parse().unwrap()));
        assert!(!net.contains(&"11.1.2.3".parse().unwrap()));
        assert!(!net.contains(&"0.0.0.0/0".parse().unwrap()));
        assert!(!net.contains(&"::/0".parse::<Cidr>().unwrap()));
    }

    #[test]
    fn source_keys() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(source_key(a, 64), source_key(b, 64));
        assert_ne!(source_key(a, 128), source_key(b, 128));
        assert_eq!(display_source(&source_key(a, 64), 64), "2001:db8:1:2::/64");
        let v4: Cidr = "198.51.100.9".parse().unwrap();
        assert_eq!(display_source(&v4.as_source_key(64).unwrap(), 64), "198.51.100.9");
        assert!("198.51.100.0/24".parse::<Cidr>().unwrap().as_source_key(64).is_none());
    }
}
