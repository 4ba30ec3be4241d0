//! Header parsing with bounds checks, the same for every hook (see [`Packet`]): a read past the
//! end of the packet is a malformed packet, named by the layer that is short.

use crate::packet::Packet;
use weft_common::{
    Reason,
    net::{
        ARP_ETH_IPV4_LEN, ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ICMP_HLEN, IPPROTO_DSTOPTS,
        IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_ROUTING,
        IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HLEN, IPV6_HLEN, IPV6_MAX_EXT_HEADERS, TCP_MIN_HLEN,
        UDP_HLEN,
    },
};

/// What the parser learned of a packet; fields it did not reach stay zero.
#[derive(Clone, Copy, Default)]
pub struct Headers {
    pub src_mac: [u8; 6],
    pub ethertype: u16,
    pub ip_version: u8,
    pub l4_proto: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// IPv4 time to live / IPv6 hop limit.
    pub ttl: u8,
    /// A non-first fragment: no L4 header.
    pub later_fragment: bool,
    /// Offset of the L4 header (0 when not reached).
    pub l4_off: u16,
    /// ICMP echo identifier (echo request and reply only).
    pub icmp_echo_id: u16,
}

/// On failure the headers parsed so far stay in the caller's `Headers`, for the drop event.
pub type Parsed = Result<(), Reason>;

#[repr(C)]
#[derive(Clone, Copy)]
#[allow(dead_code, reason = "wire layout: unread fields keep the offsets")]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
#[allow(dead_code, reason = "wire layout: unread fields keep the offsets")]
pub struct ArpHdr {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub op: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
#[allow(dead_code, reason = "wire layout: unread fields keep the offsets")]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
#[allow(dead_code, reason = "wire layout: unread fields keep the offsets")]
struct Ipv6Hdr {
    version_tc_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// The first 8 bytes of any IPv6 extension header, TCP (ports), UDP and ICMP share this size.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(dead_code, reason = "wire layout: unread fields keep the offsets")]
struct Head8 {
    b: [u8; 8],
}

#[repr(C)]
#[derive(Clone, Copy)]
#[allow(dead_code, reason = "wire layout: unread fields keep the offsets")]
struct TcpHdr {
    sport: [u8; 2],
    dport: [u8; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    doff_res: u8,
    flags: u8,
    window: [u8; 2],
    check: [u8; 2],
    urg: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == ETH_HLEN);
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == IPV4_MIN_HLEN);
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == IPV6_HLEN);
const _: () = assert!(core::mem::size_of::<TcpHdr>() == TCP_MIN_HLEN);
const _: () = assert!(core::mem::size_of::<Head8>() == UDP_HLEN);
const _: () = assert!(core::mem::size_of::<Head8>() == ICMP_HLEN);

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
pub fn headers<P: Packet>(pkt: &P, h: &mut Headers) -> Parsed {
    *h = Headers::default();
    let Some(eth) = pkt.load::<EthHdr>(0) else {
        return Err(Reason::MalformedEthernet);
    };
    h.src_mac = eth.src;
    h.ethertype = be16(eth.proto);
    match h.ethertype {
        ETH_P_IP => ipv4(pkt, h),
        ETH_P_IPV6 => ipv6(pkt, h),
        ETH_P_ARP => arp(pkt, h),
        _ => Err(Reason::UnsupportedL3),
    }
}

#[inline(always)]
fn arp<P: Packet>(pkt: &P, _h: &mut Headers) -> Parsed {
    let Some(arp) = pkt.load::<ArpHdr>(ETH_HLEN) else {
        return Err(Reason::MalformedArp);
    };
    let ethernet_ipv4 = be16(arp.htype) == 1 && be16(arp.ptype) == ETH_P_IP;
    if ethernet_ipv4
        && (arp.hlen != 6 || arp.plen != 4 || (pkt.len() as usize) < ETH_HLEN + ARP_ETH_IPV4_LEN)
    {
        return Err(Reason::MalformedArp);
    }
    Ok(())
}

#[inline(always)]
fn ipv4<P: Packet>(pkt: &P, h: &mut Headers) -> Parsed {
    let malformed = |_: &mut Headers| Err(Reason::MalformedIpv4);
    let Some(ip) = pkt.load::<Ipv4Hdr>(ETH_HLEN) else {
        return malformed(h);
    };
    let hlen = ((ip.version_ihl & 0x0f) as usize) * 4;
    let tot_len = be16(ip.tot_len) as usize;
    let l3_room = (pkt.len() as usize).saturating_sub(ETH_HLEN);
    if ip.version_ihl >> 4 != 4 || hlen < IPV4_MIN_HLEN || tot_len < hlen || tot_len > l3_room {
        return malformed(h);
    }
    h.ip_version = 4;
    h.l4_proto = ip.proto;
    h.ttl = ip.ttl;
    h.src_addr[..4].copy_from_slice(&ip.saddr);
    h.dst_addr[..4].copy_from_slice(&ip.daddr);
    let fragment_offset = be16(ip.frag_off) & 0x1fff;
    if fragment_offset != 0 {
        // Later fragments carry no L4 header.
        h.later_fragment = true;
        return Ok(());
    }
    l4(pkt, h, ETH_HLEN + hlen, tot_len - hlen)
}

#[inline(always)]
fn ipv6<P: Packet>(pkt: &P, h: &mut Headers) -> Parsed {
    let Some(ip) = pkt.load::<Ipv6Hdr>(ETH_HLEN) else {
        return Err(Reason::MalformedIpv6);
    };
    let payload_len = be16(ip.payload_len) as usize;
    let l3_room = (pkt.len() as usize).saturating_sub(ETH_HLEN + IPV6_HLEN);
    if ip.version_tc_flow[0] >> 4 != 6 || payload_len > l3_room {
        return Err(Reason::MalformedIpv6);
    }
    h.ip_version = 6;
    h.ttl = ip.hop_limit;
    h.src_addr = ip.saddr;
    h.dst_addr = ip.daddr;
    let mut next = ip.next_header;
    let mut off = ETH_HLEN + IPV6_HLEN;
    let mut remaining = payload_len;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        let ext_len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => {
                let Some(ext) = pkt.load::<Head8>(off) else {
                    return Err(Reason::MalformedIpv6);
                };
                if next == IPPROTO_FRAGMENT {
                    let fragment_offset = u16::from_be_bytes([ext.b[2], ext.b[3]]) & 0xfff8;
                    if fragment_offset != 0 {
                        h.l4_proto = ext.b[0];
                        h.later_fragment = true;
                        return Ok(());
                    }
                    next = ext.b[0];
                    8
                } else {
                    next = ext.b[0];
                    (ext.b[1] as usize + 1) * 8
                }
            }
            _ => break,
        };
        if ext_len > remaining {
            return Err(Reason::MalformedIpv6);
        }
        off += ext_len;
        remaining -= ext_len;
    }
    h.l4_proto = next;
    l4(pkt, h, off, remaining)
}

/// `len` is what the IP header says the L4 part measures.
#[inline(always)]
fn l4<P: Packet>(pkt: &P, h: &mut Headers, off: usize, len: usize) -> Parsed {
    h.l4_off = off as u16;
    match h.l4_proto {
        IPPROTO_TCP => {
            let Some(tcp) = pkt.load::<TcpHdr>(off) else {
                return Err(Reason::MalformedTcp);
            };
            let doff = ((tcp.doff_res >> 4) as usize) * 4;
            if doff < TCP_MIN_HLEN || doff > len {
                return Err(Reason::MalformedTcp);
            }
            h.src_port = be16(tcp.sport);
            h.dst_port = be16(tcp.dport);
            h.tcp_flags = tcp.flags;
        }
        IPPROTO_UDP => {
            let Some(udp) = pkt.load::<Head8>(off) else {
                return Err(Reason::MalformedUdp);
            };
            let udp_len = u16::from_be_bytes([udp.b[4], udp.b[5]]) as usize;
            if udp_len < UDP_HLEN || udp_len > len {
                return Err(Reason::MalformedUdp);
            }
            h.src_port = u16::from_be_bytes([udp.b[0], udp.b[1]]);
            h.dst_port = u16::from_be_bytes([udp.b[2], udp.b[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let Some(icmp) = pkt.load::<Head8>(off) else {
                return Err(Reason::MalformedIcmp);
            };
            if len < ICMP_HLEN {
                return Err(Reason::MalformedIcmp);
            }
            h.src_port = icmp.b[0] as u16;
            h.dst_port = icmp.b[1] as u16;
            if is_echo(h.l4_proto, icmp.b[0]) {
                h.icmp_echo_id = u16::from_be_bytes([icmp.b[4], icmp.b[5]]);
            }
        }
        _ => {}
    }
    Ok(())
}

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

#[inline(always)]
fn is_echo(proto: u8, icmp_type: u8) -> bool {
    proto == IPPROTO_ICMP && (icmp_type == ICMP_ECHO_REQUEST || icmp_type == ICMP_ECHO_REPLY)
}

impl Headers {
    #[inline(always)]
    pub fn src_v4(&self) -> [u8; 4] {
        [
            self.src_addr[0],
            self.src_addr[1],
            self.src_addr[2],
            self.src_addr[3],
        ]
    }

    #[inline(always)]
    pub fn dst_v4(&self) -> [u8; 4] {
        [
            self.dst_addr[0],
            self.dst_addr[1],
            self.dst_addr[2],
            self.dst_addr[3],
        ]
    }

    #[inline(always)]
    pub fn is_ipv4(&self) -> bool {
        self.ip_version == 4
    }

    /// After a rewrite of the packet's IPv4 source.
    #[inline(always)]
    pub fn set_src_v4(&mut self, addr: [u8; 4]) {
        self.src_addr[..4].copy_from_slice(&addr);
    }

    /// After a rewrite of the packet's IPv4 destination.
    #[inline(always)]
    pub fn set_dst_v4(&mut self, addr: [u8; 4]) {
        self.dst_addr[..4].copy_from_slice(&addr);
    }
}

/// The hook's scratch `Headers` (per CPU; programs do not nest on one CPU within a hook).
#[inline(always)]
pub fn scratch(hook: weft_common::Hook) -> Option<&'static mut Headers> {
    let ptr = crate::maps::SCRATCH.get_ptr_mut(hook as u32)?;
    // SAFETY: a per-CPU slot of this hook, used by one program invocation at a time.
    Some(unsafe { &mut *ptr })
}
