//! Writing to a tc packet: stores, checksum fix-ups, redirects. Every failure maps to the drop
//! reason the caller names.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use weft_common::{
    EndpointInfo, Reason,
    net::{ETH_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    parse::{EthHdr, Ipv4Hdr},
    verdict::Verdict,
};

pub const IP_TTL_OFF: usize = ETH_HLEN + 8;
pub const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IP_SRC_OFF: usize = ETH_HLEN + 12;
pub const IP_DST_OFF: usize = ETH_HLEN + 16;

#[inline(always)]
pub fn store<T>(ctx: &TcContext, off: usize, v: &T, fail: Reason) -> Result<(), Reason> {
    ctx.store(off, v, 0).map_err(|_| fail)
}

/// Into a pod of this node, skipping the host stack: the Ethernet header from the host veth to
/// the pod, then `bpf_redirect_peer`.
#[inline(always)]
pub fn deliver_to(ctx: &TcContext, ep: &EndpointInfo) -> Result<Verdict, Reason> {
    let eth = EthHdr {
        dst: ep.mac,
        src: ep.host_mac,
        proto: weft_common::net::ETH_P_IP.to_be_bytes(),
    };
    store(ctx, 0, &eth, Reason::RedirectFailed)?;
    Ok(redirect_peer(ep.ifindex))
}

/// Decrements the IPv4 TTL as a router does; a packet that would leave with TTL 0 is dropped.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, ttl: u8) -> Result<(), Reason> {
    if ttl <= 1 {
        return Err(Reason::TtlExceeded);
    }
    // TTL shares a 16-bit checksum word with the protocol byte.
    let proto: u8 = ctx
        .load(IP_TTL_OFF + 1)
        .map_err(|_| Reason::MalformedIpv4)?;
    let old = u16::from_be_bytes([ttl, proto]);
    let new = u16::from_be_bytes([ttl - 1, proto]);
    ctx.l3_csum_replace(IP_CSUM_OFF, word16(old), word16(new), 2)
        .map_err(|_| Reason::NatFailed)?;
    store(ctx, IP_TTL_OFF, &(ttl - 1), Reason::NatFailed)
}

/// A 16-bit value as the checksum helpers take it: in network order in memory.
#[inline(always)]
pub fn word16(host_order: u16) -> u64 {
    u16::from_ne_bytes(host_order.to_be_bytes()) as u64
}

#[inline(always)]
pub fn word32(addr: [u8; 4]) -> u64 {
    u32::from_ne_bytes(addr) as u64
}

/// Offset of the L4 checksum, and the flags that keep a zero UDP checksum meaning "none".
#[inline(always)]
fn l4_csum(proto: u8, l4_off: usize) -> Option<(usize, u64)> {
    match proto {
        IPPROTO_TCP => Some((l4_off + 16, 0)),
        IPPROTO_UDP => Some((l4_off + 6, BPF_F_MARK_MANGLED_0 as u64)),
        IPPROTO_ICMP => Some((l4_off + 2, 0)),
        _ => None,
    }
}

/// Replaces the IPv4 address at `addr_off` (source or destination), fixing the IP checksum and
/// the L4 checksum's pseudo-header (ICMP has none).
#[inline(always)]
pub fn rewrite_addr(
    ctx: &TcContext,
    proto: u8,
    l4_off: usize,
    addr_off: usize,
    old: [u8; 4],
    new: [u8; 4],
) -> Result<(), Reason> {
    let (csum_off, flags) = l4_csum(proto, l4_off).ok_or(Reason::NatUnsupportedProto)?;
    if proto != IPPROTO_ICMP {
        ctx.l4_csum_replace(
            csum_off,
            word32(old),
            word32(new),
            flags | BPF_F_PSEUDO_HDR as u64 | 4,
        )
        .map_err(|_| Reason::NatFailed)?;
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, word32(old), word32(new), 4)
        .map_err(|_| Reason::NatFailed)?;
    store(ctx, addr_off, &new, Reason::NatFailed)
}

/// Replaces a 16-bit L4 field (a port, or the ICMP echo identifier) at `field_off`.
#[inline(always)]
pub fn rewrite_port(
    ctx: &TcContext,
    proto: u8,
    l4_off: usize,
    field_off: usize,
    old: u16,
    new: u16,
) -> Result<(), Reason> {
    let (csum_off, flags) = l4_csum(proto, l4_off).ok_or(Reason::NatUnsupportedProto)?;
    ctx.l4_csum_replace(csum_off, word16(old), word16(new), flags | 2)
        .map_err(|_| Reason::NatFailed)?;
    store(ctx, field_off, &new.to_be_bytes(), Reason::NatFailed)
}

/// Back into the pod whose host veth the packet came in on (tc ingress of that veth).
#[inline(always)]
pub fn redirect_back_to_pod(ctx: &TcContext) -> Verdict {
    redirect_peer(crate::packet::Packet::ifindex(ctx))
}

#[inline(always)]
fn redirect_peer(ifindex: u32) -> Verdict {
    // SAFETY: helper without memory arguments.
    Verdict::redirected(unsafe { bpf_redirect_peer(ifindex, 0) })
}

/// Out of `ifindex`, with the L2 header filled from the neighbour table.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32) -> Verdict {
    // SAFETY: a null parameter block asks the kernel to look up the next hop itself.
    Verdict::redirected(unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) })
}

/// Out of `ifindex` (egress), as is.
#[inline(always)]
pub fn redirect_egress(ifindex: u32) -> Verdict {
    // SAFETY: helper without memory arguments.
    Verdict::redirected(unsafe { bpf_redirect(ifindex, 0) })
}

/// An IPv4 header without options, as this node originates one (TTL 64, no fragmentation
/// fields), checksum included.
#[inline(always)]
pub fn ipv4_header(proto: u8, saddr: [u8; 4], daddr: [u8; 4], total_len: u16) -> Ipv4Hdr {
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: total_len.to_be_bytes(),
        id: [0; 2],
        frag_off: [0; 2],
        ttl: 64,
        proto,
        check: [0; 2],
        saddr,
        daddr,
    };
    ip.check = ipv4_checksum(&ip).to_be_bytes();
    ip
}

/// The header checksum of an IPv4 header without options (its `check` field zero).
#[inline(always)]
fn ipv4_checksum(ip: &Ipv4Hdr) -> u16 {
    // SAFETY: Ipv4Hdr is 20 bytes of plain data.
    let bytes: [u8; 20] = unsafe { core::mem::transmute(*ip) };
    fold(sum_words(&bytes, 0))
}

/// The one's-complement sum of `bytes` (an even number of them) as 16-bit big-endian words,
/// added to `sum`.
#[inline(always)]
pub fn sum_words(bytes: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// The Internet checksum of a running sum.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Rewrites the source of a TCP or UDP packet to `addr`:`port`; `h` follows.
#[inline(always)]
pub fn set_source(
    ctx: &TcContext,
    h: &mut crate::parse::Headers,
    addr: [u8; 4],
    port: u16,
) -> Result<(), Reason> {
    let l4_off = h.l4_off as usize;
    rewrite_addr(ctx, h.l4_proto, l4_off, IP_SRC_OFF, h.src_v4(), addr)?;
    rewrite_port(ctx, h.l4_proto, l4_off, l4_off, h.src_port, port)?;
    h.set_src_v4(addr);
    h.src_port = port;
    Ok(())
}

/// Rewrites the destination of a TCP or UDP packet to `addr`:`port`; `h` follows.
#[inline(always)]
pub fn set_destination(
    ctx: &TcContext,
    h: &mut crate::parse::Headers,
    addr: [u8; 4],
    port: u16,
) -> Result<(), Reason> {
    let l4_off = h.l4_off as usize;
    rewrite_addr(ctx, h.l4_proto, l4_off, IP_DST_OFF, h.dst_v4(), addr)?;
    rewrite_port(ctx, h.l4_proto, l4_off, l4_off + 2, h.dst_port, port)?;
    h.set_dst_v4(addr);
    h.dst_port = port;
    Ok(())
}
