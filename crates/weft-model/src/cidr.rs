//! IPv4 prefixes.

use std::{fmt, net::Ipv4Addr, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not of the form A.B.C.D/N")]
    Syntax(String),
    #[error("prefix length {0} is larger than 32")]
    PrefixTooLong(u8),
    #[error("{addr}/{prefix_len} has host bits set (network is {network}/{prefix_len})")]
    HostBitsSet {
        addr: Ipv4Addr,
        network: Ipv4Addr,
        prefix_len: u8,
    },
    #[error("{cidr} has no subnet /{prefix_len} number {index}")]
    NoSuchSubnet {
        cidr: Ipv4Cidr,
        prefix_len: u8,
        index: u32,
    },
    #[error("{cidr} has no host number {index}")]
    NoSuchHost { cidr: Ipv4Cidr, index: u32 },
}

impl Ipv4Cidr {
    /// A prefix whose address has no host bits set.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Ipv4Cidr, CidrError> {
        if prefix_len > 32 {
            return Err(CidrError::PrefixTooLong(prefix_len));
        }
        let masked = Ipv4Addr::from(u32::from(network) & mask(prefix_len));
        if masked != network {
            return Err(CidrError::HostBitsSet {
                addr: network,
                network: masked,
                prefix_len,
            });
        }
        Ok(Ipv4Cidr {
            network,
            prefix_len,
        })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix_len)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix_len) == u32::from(self.network)
    }

    /// The `index`-th subnet of length `prefix_len` inside this prefix.
    pub fn subnet(&self, prefix_len: u8, index: u32) -> Result<Ipv4Cidr, CidrError> {
        let no_such = || CidrError::NoSuchSubnet {
            cidr: *self,
            prefix_len,
            index,
        };
        if prefix_len < self.prefix_len || prefix_len > 32 {
            return Err(no_such());
        }
        let count = 1u64 << (prefix_len - self.prefix_len);
        if u64::from(index) >= count {
            return Err(no_such());
        }
        let step = 1u64 << (32 - prefix_len);
        let start = u64::from(u32::from(self.network)) + u64::from(index) * step;
        let start = u32::try_from(start).map_err(|_| no_such())?;
        Ipv4Cidr::new(Ipv4Addr::from(start), prefix_len)
    }

    /// The address at offset `index` from the network address; the network and broadcast
    /// addresses are refused for prefixes shorter than /31.
    pub fn host(&self, index: u32) -> Result<Ipv4Addr, CidrError> {
        let usable = if self.prefix_len >= 31 {
            u64::from(index) < self.size()
        } else {
            index >= 1 && u64::from(index) < self.size() - 1
        };
        if !usable {
            return Err(CidrError::NoSuchHost { cidr: *self, index });
        }
        Ok(Ipv4Addr::from(u32::from(self.network) + index))
    }
}

fn mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, len) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let len: u8 = len.parse().map_err(|_| syntax())?;
        Ipv4Cidr::new(addr, len)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl serde::Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect("valid cidr")
    }

    #[test]
    fn parses_and_displays() {
        assert_eq!(cidr("10.42.0.0/16").to_string(), "10.42.0.0/16");
        assert_eq!(cidr("0.0.0.0/0").size(), 1 << 32);
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        assert_eq!(
            "10.42.0.1/16".parse::<Ipv4Cidr>(),
            Err(CidrError::HostBitsSet {
                addr: Ipv4Addr::new(10, 42, 0, 1),
                network: Ipv4Addr::new(10, 42, 0, 0),
                prefix_len: 16
            })
        );
        assert!(matches!(
            "10.42.0.0".parse::<Ipv4Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "10.42.0.0/x".parse::<Ipv4Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert_eq!(
            "10.42.0.0/33".parse::<Ipv4Cidr>(),
            Err(CidrError::PrefixTooLong(33))
        );
    }

    #[test]
    fn carves_subnets_in_order_and_stops_at_the_end() {
        let pool = cidr("10.42.0.0/16");
        assert_eq!(pool.subnet(24, 0), Ok(cidr("10.42.0.0/24")));
        assert_eq!(pool.subnet(24, 3), Ok(cidr("10.42.3.0/24")));
        assert_eq!(pool.subnet(24, 255), Ok(cidr("10.42.255.0/24")));
        assert!(pool.subnet(24, 256).is_err());
        assert!(pool.subnet(8, 0).is_err());
    }

    #[test]
    fn hosts_exclude_network_and_broadcast() {
        let c = cidr("10.42.1.0/24");
        assert!(c.host(0).is_err());
        assert_eq!(c.host(1), Ok(Ipv4Addr::new(10, 42, 1, 1)));
        assert_eq!(c.host(254), Ok(Ipv4Addr::new(10, 42, 1, 254)));
        assert!(c.host(255).is_err());
        assert!(c.contains(Ipv4Addr::new(10, 42, 1, 77)));
        assert!(!c.contains(Ipv4Addr::new(10, 42, 2, 1)));
    }
}
