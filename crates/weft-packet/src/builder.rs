//! A fluent builder for Ethernet frames with correct lengths and checksums, plus explicit
//! corruptions for malformed fixtures.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::checksum::{PseudoHeader, internet_checksum};
use crate::*;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const BROADCAST_MAC: [u8; 6] = [0xff; 6];
const DEFAULT_TTL: u8 = 64;
const IPV4_DONT_FRAGMENT: u16 = 0x4000;
const TCP_WINDOW: u16 = 65535;

/// A deliberate defect, applied in order to the finished frame after all checksums are computed,
/// so the checksums stay those of the well-formed packet. IPv4 corruptions patch the header at
/// its usual offset (right after the Ethernet header) and are skipped if the frame is too short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// Overrides the IHL nibble (header length in 32-bit words).
    Ipv4Ihl(u8),
    /// Overrides the version nibble.
    Ipv4Version(u8),
    /// Overrides the total length field.
    Ipv4TotalLen(u16),
    /// Cuts the frame to at most this many bytes.
    Truncate(usize),
}

impl Corruption {
    fn apply(self, frame: &mut Vec<u8>) {
        const VERSION_IHL: usize = ETH_HEADER_LEN;
        const TOTAL_LEN: usize = ETH_HEADER_LEN + 2;
        match self {
            Corruption::Ipv4Ihl(ihl) => patch_nibble(frame, VERSION_IHL, 0xf0, ihl & 0x0f),
            Corruption::Ipv4Version(version) => {
                patch_nibble(frame, VERSION_IHL, 0x0f, version << 4)
            }
            Corruption::Ipv4TotalLen(len) => {
                if let Some(field) = frame.get_mut(TOTAL_LEN..TOTAL_LEN + 2) {
                    field.copy_from_slice(&len.to_be_bytes());
                }
            }
            Corruption::Truncate(len) => frame.truncate(len),
        }
    }
}

/// Keeps the bits of `frame[at]` selected by `keep` and ors in `bits`.
fn patch_nibble(frame: &mut [u8], at: usize, keep: u8, bits: u8) {
    if let Some(byte) = frame.get_mut(at) {
        *byte = (*byte & keep) | bits;
    }
}

#[derive(Debug, Clone, Copy)]
enum L3Spec {
    Ipv4 { src: Ipv4Addr, dst: Ipv4Addr },
    Ipv6 { src: Ipv6Addr, dst: Ipv6Addr },
    Arp(Arp),
    Raw(u16),
}

#[derive(Debug, Clone, Copy)]
struct Arp {
    op: u16,
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
}

impl Arp {
    /// The ARP body for Ethernet hardware and IPv4 protocol addresses.
    fn body(&self) -> Vec<u8> {
        const HTYPE_ETHERNET: u16 = 1;
        let mut body = Vec::with_capacity(ARP_LEN);
        body.extend(HTYPE_ETHERNET.to_be_bytes());
        body.extend(ETHERTYPE_IPV4.to_be_bytes());
        body.extend([6, 4]); // hardware and protocol address lengths
        body.extend(self.op.to_be_bytes());
        body.extend(self.sender_mac);
        body.extend(self.sender_ip.octets());
        body.extend(self.target_mac);
        body.extend(self.target_ip.octets());
        body
    }

    /// Requests are broadcast; replies go to the asker.
    fn default_eth_addrs(&self) -> ([u8; 6], [u8; 6]) {
        let dst = if self.op == ARP_REQUEST {
            BROADCAST_MAC
        } else {
            self.target_mac
        };
        (self.sender_mac, dst)
    }
}

#[derive(Debug, Clone, Copy)]
enum L4Spec {
    None,
    /// Source port, destination port, flags.
    Tcp(u16, u16, u8),
    /// Source port, destination port.
    Udp(u16, u16),
    Echo(Echo),
}

impl L4Spec {
    fn ip_proto(self) -> u8 {
        match self {
            L4Spec::None => IPPROTO_EXPERIMENTAL,
            L4Spec::Tcp(..) => IPPROTO_TCP,
            L4Spec::Udp(..) => IPPROTO_UDP,
            L4Spec::Echo(echo) => echo.proto,
        }
    }
}

/// An ICMP or ICMPv6 echo request or reply.
#[derive(Debug, Clone, Copy)]
struct Echo {
    proto: u8,
    ty: u8,
    id: u16,
    seq: u16,
}

impl Echo {
    fn header(&self) -> Vec<u8> {
        let mut header = vec![self.ty, 0, 0, 0]; // type, code, checksum
        header.extend(self.id.to_be_bytes());
        header.extend(self.seq.to_be_bytes());
        header
    }
}

/// Builds one Ethernet frame. Choose exactly one L3 (`ipv4`, `ipv6`, `arp_*` or `ethertype`);
/// an L4 header needs an IP L3. Later calls of the same layer replace earlier ones.
///
/// IP defaults: TTL/hop limit 64, IPv4 id 0 with Don't Fragment set, and protocol
/// [`IPPROTO_EXPERIMENTAL`] when no L4 header is chosen. TCP defaults: seq and ack 0, window
/// 65535, no options.
///
/// ```
/// use std::net::Ipv4Addr;
/// use weft_packet::{PacketBuilder, TCP_SYN};
///
/// let frame = PacketBuilder::new()
///     .ipv4(Ipv4Addr::new(10, 42, 1, 11), Ipv4Addr::new(10, 42, 1, 12))
///     .tcp(40000, 8080, TCP_SYN)
///     .build();
/// assert_eq!(frame.len(), 14 + 20 + 20);
/// ```
#[derive(Debug, Clone)]
pub struct PacketBuilder {
    eth: Option<([u8; 6], [u8; 6])>,
    l3: Option<L3Spec>,
    l4: L4Spec,
    payload: Vec<u8>,
    ttl: u8,
    ipv4_id: u16,
    tcp_seq: u32,
    tcp_ack: u32,
    corruptions: Vec<Corruption>,
}

impl Default for PacketBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketBuilder {
    pub fn new() -> Self {
        PacketBuilder {
            eth: None,
            l3: None,
            l4: L4Spec::None,
            payload: Vec::new(),
            ttl: DEFAULT_TTL,
            ipv4_id: 0,
            tcp_seq: 0,
            tcp_ack: 0,
            corruptions: Vec::new(),
        }
    }

    /// Ethernet addresses. Without this call, ARP frames go from the sender MAC to broadcast
    /// (request) or to the target MAC (reply), and all others from 02:00:00:00:00:01 to
    /// 02:00:00:00:00:02.
    pub fn eth(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.eth = Some((src, dst));
        self
    }

    pub fn ipv4(mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        self.l3 = Some(L3Spec::Ipv4 { src, dst });
        self
    }

    pub fn ipv6(mut self, src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        self.l3 = Some(L3Spec::Ipv6 { src, dst });
        self
    }

    pub fn arp_request(
        self,
        sender_mac: [u8; 6],
        sender_ip: Ipv4Addr,
        target_ip: Ipv4Addr,
    ) -> Self {
        let target_mac = [0; 6];
        self.arp(Arp {
            op: ARP_REQUEST,
            sender_mac,
            sender_ip,
            target_mac,
            target_ip,
        })
    }

    pub fn arp_reply(
        self,
        sender_mac: [u8; 6],
        sender_ip: Ipv4Addr,
        target_mac: [u8; 6],
        target_ip: Ipv4Addr,
    ) -> Self {
        self.arp(Arp {
            op: ARP_REPLY,
            sender_mac,
            sender_ip,
            target_mac,
            target_ip,
        })
    }

    fn arp(mut self, arp: Arp) -> Self {
        self.l3 = Some(L3Spec::Arp(arp));
        self
    }

    /// A raw ethertype: the payload follows the Ethernet header as given.
    pub fn ethertype(mut self, ethertype: u16) -> Self {
        self.l3 = Some(L3Spec::Raw(ethertype));
        self
    }

    /// A TCP header with `flags` (the `TCP_*` constants or-ed together).
    pub fn tcp(mut self, sport: u16, dport: u16, flags: u8) -> Self {
        self.l4 = L4Spec::Tcp(sport, dport, flags);
        self
    }

    pub fn tcp_seq(mut self, seq: u32) -> Self {
        self.tcp_seq = seq;
        self
    }

    pub fn tcp_ack(mut self, ack: u32) -> Self {
        self.tcp_ack = ack;
        self
    }

    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = L4Spec::Udp(sport, dport);
        self
    }

    pub fn icmp_echo_request(self, id: u16, seq: u16) -> Self {
        self.echo(IPPROTO_ICMP, ICMP_ECHO_REQUEST, id, seq)
    }

    pub fn icmp_echo_reply(self, id: u16, seq: u16) -> Self {
        self.echo(IPPROTO_ICMP, ICMP_ECHO_REPLY, id, seq)
    }

    pub fn icmpv6_echo_request(self, id: u16, seq: u16) -> Self {
        self.echo(IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST, id, seq)
    }

    pub fn icmpv6_echo_reply(self, id: u16, seq: u16) -> Self {
        self.echo(IPPROTO_ICMPV6, ICMPV6_ECHO_REPLY, id, seq)
    }

    fn echo(mut self, proto: u8, ty: u8, id: u16, seq: u16) -> Self {
        self.l4 = L4Spec::Echo(Echo { proto, ty, id, seq });
        self
    }

    /// Bytes after the innermost header.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// IPv4 TTL or IPv6 hop limit (default 64).
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn ipv4_id(mut self, id: u16) -> Self {
        self.ipv4_id = id;
        self
    }

    pub fn ipv4_ihl(self, ihl: u8) -> Self {
        self.corrupt(Corruption::Ipv4Ihl(ihl))
    }

    pub fn ipv4_version(self, version: u8) -> Self {
        self.corrupt(Corruption::Ipv4Version(version))
    }

    pub fn ipv4_total_len(self, total_len: u16) -> Self {
        self.corrupt(Corruption::Ipv4TotalLen(total_len))
    }

    pub fn truncate(self, len: usize) -> Self {
        self.corrupt(Corruption::Truncate(len))
    }

    pub fn corrupt(mut self, corruption: Corruption) -> Self {
        self.corruptions.push(corruption);
        self
    }

    /// The finished frame.
    ///
    /// # Panics
    /// If no L3 was chosen, or an L4 header was asked for on top of ARP or a raw ethertype:
    /// both are mistakes in the test that builds the packet.
    pub fn build(&self) -> Vec<u8> {
        let Some(l3) = self.l3 else {
            panic!("PacketBuilder: choose an L3 with ipv4(), ipv6(), arp_*() or ethertype()");
        };
        let (src, dst) = self.eth_addrs(l3);
        let mut frame = [dst, src].concat();
        match l3 {
            L3Spec::Ipv4 { src, dst } => {
                frame.extend(ETHERTYPE_IPV4.to_be_bytes());
                let segment = self.segment(PseudoHeader::V4(src, dst));
                frame.extend(self.ipv4_header(src, dst, segment.len()));
                frame.extend(segment);
            }
            L3Spec::Ipv6 { src, dst } => {
                frame.extend(ETHERTYPE_IPV6.to_be_bytes());
                let segment = self.segment(PseudoHeader::V6(src, dst));
                frame.extend(self.ipv6_header(src, dst, segment.len()));
                frame.extend(segment);
            }
            L3Spec::Arp(arp) => {
                self.assert_no_l4("ARP");
                frame.extend(ETHERTYPE_ARP.to_be_bytes());
                frame.extend(arp.body());
                frame.extend(&self.payload);
            }
            L3Spec::Raw(ethertype) => {
                self.assert_no_l4("a raw ethertype");
                frame.extend(ethertype.to_be_bytes());
                frame.extend(&self.payload);
            }
        }
        for corruption in &self.corruptions {
            corruption.apply(&mut frame);
        }
        frame
    }

    fn eth_addrs(&self, l3: L3Spec) -> ([u8; 6], [u8; 6]) {
        match (self.eth, l3) {
            (Some(addrs), _) => addrs,
            (None, L3Spec::Arp(arp)) => arp.default_eth_addrs(),
            (None, _) => (DEFAULT_SRC_MAC, DEFAULT_DST_MAC),
        }
    }

    fn assert_no_l4(&self, l3: &str) {
        assert!(
            matches!(self.l4, L4Spec::None),
            "PacketBuilder: an L4 header needs ipv4() or ipv6(), not {l3}"
        );
    }

    /// L4 header plus payload, with the checksum filled in.
    fn segment(&self, pseudo: PseudoHeader) -> Vec<u8> {
        // Each header comes with the offset of its checksum field.
        let (mut segment, checksum_at) = match self.l4 {
            L4Spec::None => return self.payload.clone(),
            L4Spec::Tcp(sport, dport, flags) => (self.tcp_header(sport, dport, flags), 16),
            L4Spec::Udp(sport, dport) => (self.udp_header(sport, dport), 6),
            L4Spec::Echo(echo) => (echo.header(), 2),
        };
        segment.extend(&self.payload);
        let proto = self.l4.ip_proto();
        let checksum = match proto {
            IPPROTO_ICMP => internet_checksum(&segment),
            // A computed UDP checksum of 0 is sent as all ones; 0 means "no checksum" (RFC 768).
            IPPROTO_UDP => match pseudo.checksum(proto, &segment) {
                0 => 0xffff,
                sum => sum,
            },
            _ => pseudo.checksum(proto, &segment),
        };
        segment[checksum_at..checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
        segment
    }

    fn tcp_header(&self, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        const DATA_OFFSET_WORDS: u8 = (TCP_HEADER_LEN / 4) as u8;
        let mut header = Vec::with_capacity(TCP_HEADER_LEN);
        header.extend(sport.to_be_bytes());
        header.extend(dport.to_be_bytes());
        header.extend(self.tcp_seq.to_be_bytes());
        header.extend(self.tcp_ack.to_be_bytes());
        header.extend([DATA_OFFSET_WORDS << 4, flags]);
        header.extend(TCP_WINDOW.to_be_bytes());
        header.extend([0; 4]); // checksum, urgent pointer
        header
    }

    fn udp_header(&self, sport: u16, dport: u16) -> Vec<u8> {
        let len = length_field(UDP_HEADER_LEN + self.payload.len());
        let mut header = Vec::with_capacity(UDP_HEADER_LEN);
        header.extend(sport.to_be_bytes());
        header.extend(dport.to_be_bytes());
        header.extend(len.to_be_bytes());
        header.extend([0; 2]); // checksum
        header
    }

    fn ipv4_header(&self, src: Ipv4Addr, dst: Ipv4Addr, segment_len: usize) -> Vec<u8> {
        const VERSION_IHL: u8 = 0x40 | (IPV4_HEADER_LEN / 4) as u8;
        let total_len = length_field(IPV4_HEADER_LEN + segment_len);
        let mut header = Vec::with_capacity(IPV4_HEADER_LEN);
        header.extend([VERSION_IHL, 0]);
        header.extend(total_len.to_be_bytes());
        header.extend(self.ipv4_id.to_be_bytes());
        header.extend(IPV4_DONT_FRAGMENT.to_be_bytes());
        header.extend([self.ttl, self.l4.ip_proto(), 0, 0]);
        header.extend(src.octets());
        header.extend(dst.octets());
        let checksum = internet_checksum(&header);
        header[10..12].copy_from_slice(&checksum.to_be_bytes()); // the checksum field
        header
    }

    fn ipv6_header(&self, src: Ipv6Addr, dst: Ipv6Addr, payload_len: usize) -> Vec<u8> {
        let mut header = Vec::with_capacity(IPV6_HEADER_LEN);
        header.extend([0x60, 0, 0, 0]); // version 6, traffic class and flow label 0
        header.extend(length_field(payload_len).to_be_bytes());
        header.extend([self.l4.ip_proto(), self.ttl]);
        header.extend(src.octets());
        header.extend(dst.octets());
        header
    }
}

/// A 16-bit length field. Oversized packets are a bug in the test that builds them.
fn length_field(len: usize) -> u16 {
    u16::try_from(len).unwrap_or_else(|_| panic!("PacketBuilder: length {len} exceeds 65535"))
}
