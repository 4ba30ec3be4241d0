//! Decodes an Ethernet frame into the fields tests assert on.
//!
//! Lengths are strict: a length field that claims more bytes than the frame holds is an error,
//! while bytes beyond it (Ethernet padding) are ignored. No input makes the decoder panic.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::checksum::{PseudoHeader, internet_checksum};
use crate::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub ethertype: u16,
    pub l3: L3,
    pub l4: L4,
    /// The bytes after the innermost decoded header: the L4 payload, the IP payload when there is
    /// no known L4 header, or whatever follows an ARP body (usually Ethernet padding).
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L3 {
    Ipv4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        ttl: u8,
        ihl: u8,
        total_len: u16,
        id: u16,
        checksum_ok: bool,
    },
    Ipv6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        next_header: u8,
        hop_limit: u8,
        payload_len: u16,
    },
    Arp {
        op: u16,
        sender_mac: [u8; 6],
        sender_ip: Ipv4Addr,
        target_mac: [u8; 6],
        target_ip: Ipv4Addr,
    },
    /// An ethertype the decoder does not know; the payload is everything after Ethernet.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        checksum_ok: bool,
    },
    Udp {
        sport: u16,
        dport: u16,
        len: u16,
        checksum_ok: bool,
    },
    Icmp {
        ty: u8,
        code: u8,
        id: u16,
        seq: u16,
        checksum_ok: bool,
    },
    Icmpv6 {
        ty: u8,
        code: u8,
        checksum_ok: bool,
    },
    /// No L4 header: not IP, an unknown IP protocol, or a non-first IPv4 fragment.
    None,
}

/// The header a [`DecodeError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Ethernet,
    Ipv4,
    Ipv6,
    Arp,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Layer::Ethernet => "Ethernet",
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Arp => "ARP",
            Layer::Tcp => "TCP",
            Layer::Udp => "UDP",
            Layer::Icmp => "ICMP",
            Layer::Icmpv6 => "ICMPv6",
        };
        f.write_str(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the `layer` header needs.
    Truncated {
        layer: Layer,
        len: usize,
        need: usize,
    },
    /// A length field (IPv4 total length, IPv6 payload length, UDP length) that is below its
    /// header's size or beyond the bytes available.
    BadLength {
        layer: Layer,
        len: u16,
        available: usize,
    },
    BadIpv4Version(u8),
    /// Below 5, or a header longer than the total length.
    BadIpv4Ihl(u8),
    BadIpv6Version(u8),
    BadTcpDataOffset(u8),
    /// ARP for anything but Ethernet hardware and IPv4 protocol addresses.
    UnsupportedArp {
        htype: u16,
        ptype: u16,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::Truncated { layer, len, need } => {
                write!(f, "truncated {layer} header: {len} bytes, need {need}")
            }
            DecodeError::BadLength {
                layer,
                len,
                available,
            } => {
                write!(f, "bad {layer} length {len}: {available} bytes available")
            }
            DecodeError::BadIpv4Version(version) => write!(f, "bad IPv4 version {version}"),
            DecodeError::BadIpv4Ihl(ihl) => write!(f, "bad IPv4 IHL {ihl}"),
            DecodeError::BadIpv6Version(version) => write!(f, "bad IPv6 version {version}"),
            DecodeError::BadTcpDataOffset(offset) => write!(f, "bad TCP data offset {offset}"),
            DecodeError::UnsupportedArp { htype, ptype } => {
                write!(
                    f,
                    "unsupported ARP: hardware type {htype}, protocol {ptype:#06x}"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one Ethernet frame, down to the L4 header where there is one.
pub fn decode(frame: &[u8]) -> Result<Decoded, DecodeError> {
    let (eth, rest) = Header::<ETH_HEADER_LEN>::split(frame, Layer::Ethernet)?;
    let ethertype = eth.be16::<12>();
    let (l3, l4, payload) = match ethertype {
        ETHERTYPE_IPV4 => decode_ipv4(rest)?,
        ETHERTYPE_IPV6 => decode_ipv6(rest)?,
        ETHERTYPE_ARP => decode_arp(rest)?,
        _ => (L3::Other, L4::None, rest),
    };
    Ok(Decoded {
        eth_dst: eth.mac::<0>(),
        eth_src: eth.mac::<6>(),
        ethertype,
        l3,
        l4,
        payload: payload.to_vec(),
    })
}

/// The decoded L3 and L4 headers and the bytes after them.
type L3Decoded<'a> = (L3, L4, &'a [u8]);

fn decode_ipv4(bytes: &[u8]) -> Result<L3Decoded<'_>, DecodeError> {
    let (h, _) = Header::<IPV4_HEADER_LEN>::split(bytes, Layer::Ipv4)?;
    let (version, ihl, total_len) = (h.u8::<0>() >> 4, h.u8::<0>() & 0x0f, h.be16::<2>());
    if version != 4 {
        return Err(DecodeError::BadIpv4Version(version));
    }
    if ihl < 5 {
        return Err(DecodeError::BadIpv4Ihl(ihl));
    }
    let packet = bounded(bytes, total_len, IPV4_HEADER_LEN, Layer::Ipv4)?;
    let (header, segment) = packet
        .split_at_checked(usize::from(ihl) * 4)
        .ok_or(DecodeError::BadIpv4Ihl(ihl))?;

    let (src, dst, proto) = (h.ipv4::<12>(), h.ipv4::<16>(), h.u8::<9>());
    let is_later_fragment = h.be16::<6>() & 0x1fff != 0;
    let (l4, payload) = if is_later_fragment {
        (L4::None, segment)
    } else {
        decode_l4(proto, segment, PseudoHeader::V4(src, dst))?
    };
    let l3 = L3::Ipv4 {
        src,
        dst,
        proto,
        ttl: h.u8::<8>(),
        ihl,
        total_len,
        id: h.be16::<4>(),
        checksum_ok: internet_checksum(header) == 0,
    };
    Ok((l3, l4, payload))
}

fn decode_ipv6(bytes: &[u8]) -> Result<L3Decoded<'_>, DecodeError> {
    let (h, rest) = Header::<IPV6_HEADER_LEN>::split(bytes, Layer::Ipv6)?;
    let version = h.u8::<0>() >> 4;
    if version != 6 {
        return Err(DecodeError::BadIpv6Version(version));
    }
    let payload_len = h.be16::<4>();
    let segment = bounded(rest, payload_len, 0, Layer::Ipv6)?;
    let (src, dst, next_header) = (h.ipv6::<8>(), h.ipv6::<24>(), h.u8::<6>());
    let (l4, payload) = decode_l4(next_header, segment, PseudoHeader::V6(src, dst))?;
    let hop_limit = h.u8::<7>();
    let l3 = L3::Ipv6 {
        src,
        dst,
        next_header,
        hop_limit,
        payload_len,
    };
    Ok((l3, l4, payload))
}

fn decode_arp(bytes: &[u8]) -> Result<L3Decoded<'_>, DecodeError> {
    let (h, trailer) = Header::<ARP_LEN>::split(bytes, Layer::Arp)?;
    let (htype, ptype) = (h.be16::<0>(), h.be16::<2>());
    if htype != 1 || ptype != ETHERTYPE_IPV4 || h.u8::<4>() != 6 || h.u8::<5>() != 4 {
        return Err(DecodeError::UnsupportedArp { htype, ptype });
    }
    let arp = L3::Arp {
        op: h.be16::<6>(),
        sender_mac: h.mac::<8>(),
        sender_ip: h.ipv4::<14>(),
        target_mac: h.mac::<18>(),
        target_ip: h.ipv4::<24>(),
    };
    Ok((arp, L4::None, trailer))
}

/// The first `len` bytes, where a length field says `len` and its header alone takes `min`.
fn bounded(bytes: &[u8], len: u16, min: usize, layer: Layer) -> Result<&[u8], DecodeError> {
    match bytes.get(..usize::from(len)) {
        Some(bounded) if bounded.len() >= min => Ok(bounded),
        _ => Err(DecodeError::BadLength {
            layer,
            len,
            available: bytes.len(),
        }),
    }
}

/// Decodes the L4 header of `segment`, which holds all bytes the IP header assigns to L4.
fn decode_l4(proto: u8, segment: &[u8], pseudo: PseudoHeader) -> Result<(L4, &[u8]), DecodeError> {
    match proto {
        IPPROTO_TCP => decode_tcp(segment, pseudo),
        IPPROTO_UDP => decode_udp(segment, pseudo),
        IPPROTO_ICMP => decode_icmp(segment),
        IPPROTO_ICMPV6 => decode_icmpv6(segment, pseudo),
        _ => Ok((L4::None, segment)),
    }
}

fn decode_tcp(segment: &[u8], pseudo: PseudoHeader) -> Result<(L4, &[u8]), DecodeError> {
    let (h, _) = Header::<TCP_HEADER_LEN>::split(segment, Layer::Tcp)?;
    let data_offset = h.u8::<12>() >> 4;
    if data_offset < 5 {
        return Err(DecodeError::BadTcpDataOffset(data_offset));
    }
    let header_len = usize::from(data_offset) * 4;
    let payload = segment.get(header_len..).ok_or(DecodeError::Truncated {
        layer: Layer::Tcp,
        len: segment.len(),
        need: header_len,
    })?;
    let tcp = L4::Tcp {
        sport: h.be16::<0>(),
        dport: h.be16::<2>(),
        flags: h.u8::<13>(),
        seq: h.be32::<4>(),
        ack: h.be32::<8>(),
        checksum_ok: pseudo.checksum(IPPROTO_TCP, segment) == 0,
    };
    Ok((tcp, payload))
}

fn decode_udp(segment: &[u8], pseudo: PseudoHeader) -> Result<(L4, &[u8]), DecodeError> {
    let (h, _) = Header::<UDP_HEADER_LEN>::split(segment, Layer::Udp)?;
    let len = h.be16::<4>();
    let datagram = bounded(segment, len, UDP_HEADER_LEN, Layer::Udp)?;
    // Over IPv4 a zero checksum means the sender did not compute one.
    let unchecked = h.be16::<6>() == 0 && matches!(pseudo, PseudoHeader::V4(..));
    let udp = L4::Udp {
        sport: h.be16::<0>(),
        dport: h.be16::<2>(),
        len,
        checksum_ok: unchecked || pseudo.checksum(IPPROTO_UDP, datagram) == 0,
    };
    let (_, payload) = Header::<UDP_HEADER_LEN>::split(datagram, Layer::Udp)?;
    Ok((udp, payload))
}

fn decode_icmp(segment: &[u8]) -> Result<(L4, &[u8]), DecodeError> {
    let (h, payload) = Header::<ICMP_HEADER_LEN>::split(segment, Layer::Icmp)?;
    let icmp = L4::Icmp {
        ty: h.u8::<0>(),
        code: h.u8::<1>(),
        id: h.be16::<4>(),
        seq: h.be16::<6>(),
        checksum_ok: internet_checksum(segment) == 0,
    };
    Ok((icmp, payload))
}

fn decode_icmpv6(segment: &[u8], pseudo: PseudoHeader) -> Result<(L4, &[u8]), DecodeError> {
    let (h, payload) = Header::<ICMP_HEADER_LEN>::split(segment, Layer::Icmpv6)?;
    let icmp = L4::Icmpv6 {
        ty: h.u8::<0>(),
        code: h.u8::<1>(),
        checksum_ok: pseudo.checksum(IPPROTO_ICMPV6, segment) == 0,
    };
    Ok((icmp, payload))
}

/// A header of fixed length `LEN`, split off after one length check. Its field readers take the
/// offset as a const parameter, so a field outside the header fails to compile.
struct Header<'a, const LEN: usize>(&'a [u8; LEN]);

impl<'a, const LEN: usize> Header<'a, LEN> {
    fn split(bytes: &'a [u8], layer: Layer) -> Result<(Self, &'a [u8]), DecodeError> {
        let truncated = DecodeError::Truncated {
            layer,
            len: bytes.len(),
            need: LEN,
        };
        let (header, rest) = bytes.split_first_chunk::<LEN>().ok_or(truncated)?;
        Ok((Header(header), rest))
    }

    fn bytes<const AT: usize, const N: usize>(&self) -> [u8; N] {
        const { assert!(AT + N <= LEN, "field lies outside the header") };
        let mut field = [0; N];
        field.copy_from_slice(&self.0[AT..AT + N]);
        field
    }

    fn u8<const AT: usize>(&self) -> u8 {
        let [byte] = self.bytes::<AT, 1>();
        byte
    }

    fn be16<const AT: usize>(&self) -> u16 {
        u16::from_be_bytes(self.bytes::<AT, 2>())
    }

    fn be32<const AT: usize>(&self) -> u32 {
        u32::from_be_bytes(self.bytes::<AT, 4>())
    }

    fn mac<const AT: usize>(&self) -> [u8; 6] {
        self.bytes::<AT, 6>()
    }

    fn ipv4<const AT: usize>(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.bytes::<AT, 4>())
    }

    fn ipv6<const AT: usize>(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.bytes::<AT, 16>())
    }
}
