//! A MAC address as Weft prints it: six lower-case hex octets joined by `:`, as `ip link` shows
//! them. Hand-written: a `Display` of six bytes is smaller than a dependency, and the MAC crates
//! print upper case.

use core::fmt;

/// A MAC address to print (`02:ab:01:01:00:02`); the maps keep them as `[u8; 6]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl From<[u8; 6]> for Mac {
    fn from(octets: [u8; 6]) -> Self {
        Mac(octets)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString as _;

    use super::*;

    #[test]
    fn prints_six_lower_case_octets() {
        assert_eq!(
            Mac([0x02, 0xab, 1, 2, 0, 0xff]).to_string(),
            "02:ab:01:02:00:ff"
        );
        assert_eq!(Mac::default().to_string(), "00:00:00:00:00:00");
    }
}
