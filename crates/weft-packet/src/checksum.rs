//! The Internet checksum (RFC 1071) and the pseudo-header variants TCP, UDP and ICMPv6 use.
//!
//! Each function returns the value to store in the checksum field. Run over data that already
//! carries a correct checksum, the result is 0, which is how the decoder verifies.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Checksum of `data` alone, as used by the IPv4 header and ICMP.
pub fn internet_checksum(data: &[u8]) -> u16 {
    finish(sum_words(data))
}

/// TCP/UDP checksum over IPv4: `segment` is the L4 header (checksum field included) plus payload.
pub fn ipv4_pseudo_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let pseudo = sum_words(&src.octets()) + sum_words(&dst.octets()) + u64::from(proto);
    finish(pseudo + sum_length(segment.len()) + sum_words(segment))
}

/// TCP/UDP/ICMPv6 checksum over IPv6 (RFC 8200 section 8.1).
pub fn ipv6_pseudo_checksum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, segment: &[u8]) -> u16 {
    let pseudo = sum_words(&src.octets()) + sum_words(&dst.octets()) + u64::from(next_header);
    finish(pseudo + sum_length(segment.len()) + sum_words(segment))
}

/// The addresses an L4 checksum covers besides the segment itself.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PseudoHeader {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl PseudoHeader {
    pub(crate) fn checksum(self, proto: u8, segment: &[u8]) -> u16 {
        match self {
            PseudoHeader::V4(src, dst) => ipv4_pseudo_checksum(src, dst, proto, segment),
            PseudoHeader::V6(src, dst) => ipv6_pseudo_checksum(src, dst, proto, segment),
        }
    }
}

/// Sum of big-endian 16-bit words; an odd trailing byte is padded with a zero on the right.
fn sum_words(data: &[u8]) -> u64 {
    let chunks = data.chunks_exact(2);
    let trailing = chunks.remainder().first().map_or(0, |&b| u64::from(b) << 8);
    chunks
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u64>()
        + trailing
}

/// The pseudo-header length as 16-bit words (32 bits wide for IPv6, <= 16 bits for IPv4).
fn sum_length(len: usize) -> u64 {
    let len = len as u64;
    (len >> 16) + (len & 0xffff)
}

/// Folds the carries back in (one's complement addition) and complements.
fn finish(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ipv4_header_vector() {
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&header), 0xb861);

        let mut stored = header;
        stored[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(internet_checksum(&stored), 0);
    }

    #[test]
    fn rfc1071_example_sum() {
        // RFC 1071 section 3: these bytes sum to 0xddf2, so the checksum is its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_last_byte_on_the_right() {
        assert_eq!(internet_checksum(&[0x12, 0x34, 0x56]), !(0x1234 + 0x5600));
        assert_eq!(internet_checksum(&[]), 0xffff);
    }

    #[test]
    fn pseudo_header_covers_addresses_protocol_and_length() {
        // UDP 192.0.2.1:1 -> 192.0.2.2:2, no payload, checksum field zero. By hand:
        // c000+0201+c000+0202+0011+0008 (pseudo) + 0001+0002+0008+0000 (header) = 0x18427,
        // folded 0x8428, complemented 0x7bd7.
        let segment = [0, 1, 0, 2, 0, 8, 0, 0];
        let (src, dst) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(ipv4_pseudo_checksum(src, dst, 17, &segment), 0x7bd7);
        let (src6, dst6) = (src.to_ipv6_mapped(), dst.to_ipv6_mapped());
        // The mapped addresses add 2 * 0xffff, which is 0 in one's complement arithmetic.
        assert_eq!(ipv6_pseudo_checksum(src6, dst6, 17, &segment), 0x7bd7);
    }
}
