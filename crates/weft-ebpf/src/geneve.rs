//! Geneve encapsulation and decapsulation, written by the program: there is no kernel Geneve
//! device on these nodes. Layout (RFC 8926): outer IPv4, UDP to 6081, Geneve header with one
//! VNI, one option (class 0x014B) carrying the sender's security identity, inner Ethernet.
//! The packets that open a DSR flow carry a second option, the frontend the client addressed
//! (`weft_common::geneve::GeneveOptDsr`), which the backend's node records in conntrack.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::bpf_get_hash_recalc,
    programs::TcContext,
};
use weft_common::{
    NodeConfig, Reason,
    geneve::{
        ETH_P_TEB, GENEVE_DSR_ENCAP_LEN, GENEVE_ENCAP_LEN, GENEVE_HLEN, GENEVE_OPT_CLASS,
        GENEVE_OPT_DSR_LEN, GENEVE_OPT_IDENTITY_LEN, GENEVE_OPT_TYPE_IDENTITY, GENEVE_PORT,
        GeneveOptDsr,
    },
    net::{ETH_HLEN, IPPROTO_UDP, IPV4_MIN_HLEN, UDP_HLEN},
};

use crate::{
    packet::Packet,
    parse::{EthHdr, Headers, Ipv4Hdr},
    skb,
};

#[repr(C)]
#[derive(Clone, Copy)]
struct UdpHdr {
    sport: [u8; 2],
    dport: [u8; 2],
    len: [u8; 2],
    check: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct GeneveHdr {
    /// Version (2 bits) and option length in 4-byte words (6 bits).
    ver_optlen: u8,
    flags: u8,
    proto: [u8; 2],
    /// VNI (24 bits) and a reserved byte.
    vni: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IdentityOpt {
    class: [u8; 2],
    kind: u8,
    /// Reserved bits and the data length in 4-byte words.
    len: u8,
    identity: [u8; 4],
}

/// The outer headers up to and including the identity option.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TunnelHdr {
    ip: Ipv4Hdr,
    udp: UdpHdr,
    geneve: GeneveHdr,
    opt: IdentityOpt,
}

/// Everything written into the room `bpf_skb_adjust_room` makes after the outer MAC header.
#[repr(C)]
#[derive(Clone, Copy)]
struct EncapHdr {
    tunnel: TunnelHdr,
    inner_eth: EthHdr,
}

/// The same with the DSR option after the identity option.
#[repr(C)]
#[derive(Clone, Copy)]
struct EncapDsrHdr {
    tunnel: TunnelHdr,
    dsr: GeneveOptDsr,
    inner_eth: EthHdr,
}

const _: () = assert!(core::mem::size_of::<EncapHdr>() == GENEVE_ENCAP_LEN);
const _: () = assert!(core::mem::size_of::<EncapDsrHdr>() == GENEVE_DSR_ENCAP_LEN);
const _: () = assert!(core::mem::size_of::<IdentityOpt>() == GENEVE_OPT_IDENTITY_LEN);

const ENCAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
    | ((ETH_HLEN as u64) << 56);

/// Wraps the pod's frame for the node at `tunnel_endpoint`. The original Ethernet header
/// becomes the outer one (its addresses are set when the frame is redirected to the neighbour)
/// and a copy of it is the inner one.
#[inline(always)]
pub fn encap(
    ctx: &TcContext,
    node: &NodeConfig,
    tunnel_endpoint: [u8; 4],
    identity: u32,
) -> Result<(), Reason> {
    let (inner_eth, frame_len, hash) = frame(ctx)?;
    ctx.adjust_room(GENEVE_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .map_err(|_| Reason::EncapFailed)?;
    let hdr = EncapHdr {
        tunnel: tunnel_header(node, tunnel_endpoint, identity, 0, frame_len, hash),
        inner_eth,
    };
    skb::store(ctx, ETH_HLEN, &hdr, Reason::EncapFailed)
}

/// [`encap`] with the DSR option naming `frontend` (address, port in host order).
#[inline(always)]
pub fn encap_dsr(
    ctx: &TcContext,
    node: &NodeConfig,
    tunnel_endpoint: [u8; 4],
    identity: u32,
    frontend: ([u8; 4], u16),
) -> Result<(), Reason> {
    let (inner_eth, frame_len, hash) = frame(ctx)?;
    ctx.adjust_room(GENEVE_DSR_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .map_err(|_| Reason::EncapFailed)?;
    let hdr = EncapDsrHdr {
        tunnel: tunnel_header(
            node,
            tunnel_endpoint,
            identity,
            GENEVE_OPT_DSR_LEN,
            frame_len,
            hash,
        ),
        dsr: GeneveOptDsr::new(frontend.0, frontend.1),
        inner_eth,
    };
    skb::store(ctx, ETH_HLEN, &hdr, Reason::EncapFailed)
}

/// What the encapsulation needs of the frame before it grows: its Ethernet header, its length
/// and its flow hash.
#[inline(always)]
fn frame(ctx: &TcContext) -> Result<(EthHdr, usize, u32), Reason> {
    let inner_eth: EthHdr = Packet::load(ctx, 0).ok_or(Reason::MalformedEthernet)?;
    let frame_len = Packet::len(ctx) as usize;
    // SAFETY: helper on the live skb.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    Ok((inner_eth, frame_len, hash))
}

/// The outer headers (after the outer Ethernet header) of a frame of `frame_len` bytes with `extra_opts` bytes of options after
/// the identity option.
#[inline(always)]
pub fn tunnel_header(
    node: &NodeConfig,
    tunnel_endpoint: [u8; 4],
    identity: u32,
    extra_opts: usize,
    frame_len: usize,
    hash: u32,
) -> TunnelHdr {
    let opts = GENEVE_OPT_IDENTITY_LEN + extra_opts;
    let udp_len = (UDP_HLEN + GENEVE_HLEN + opts + frame_len) as u16;
    let total_len = udp_len + IPV4_MIN_HLEN as u16;
    TunnelHdr {
        ip: skb::ipv4_header(IPPROTO_UDP, node.ipv4, tunnel_endpoint, total_len),
        udp: UdpHdr {
            sport: source_port(hash).to_be_bytes(),
            dport: GENEVE_PORT.to_be_bytes(),
            len: udp_len.to_be_bytes(),
            check: [0; 2],
        },
        geneve: GeneveHdr {
            ver_optlen: (opts / 4) as u8,
            flags: 0,
            proto: ETH_P_TEB.to_be_bytes(),
            vni: (node.vni << 8).to_be_bytes(),
        },
        opt: IdentityOpt {
            class: GENEVE_OPT_CLASS.to_be_bytes(),
            kind: GENEVE_OPT_TYPE_IDENTITY,
            len: 1,
            identity: identity.to_be_bytes(),
        },
    }
}

/// The flow hash spread over the ephemeral range, so the underlay can balance tunnel traffic
/// per flow (RFC 8926 §3.3).
#[inline(always)]
pub fn source_port(hash: u32) -> u16 {
    0xC000 | (hash as u16 & 0x3FFF)
}

/// A Geneve packet addressed to this node, as far as decapsulation needs it.
pub struct Tunneled {
    /// Bytes between the outer Ethernet header and the inner IP header.
    pub overhead: u32,
    pub identity: u32,
    /// The DSR option's frontend (address, port in host order), when the packet has one.
    pub dsr: Option<([u8; 4], u16)>,
}

/// Whether `outer` is Geneve to this node.
#[inline(always)]
pub fn is_geneve_to(outer: &Headers, node: &NodeConfig) -> bool {
    outer.is_ipv4()
        && outer.l4_proto == IPPROTO_UDP
        && outer.dst_port == GENEVE_PORT
        && outer.dst_v4() == node.ipv4
}

/// Reads the Geneve header and option, then replaces `h` (the outer headers) by the inner
/// packet's, at the offsets they will have after decapsulation.
#[inline(always)]
pub fn inspect(ctx: &TcContext, h: &mut Headers, node: &NodeConfig) -> Result<Tunneled, Reason> {
    let gnv_off = h.l4_off as usize + UDP_HLEN;
    let gnv: GeneveHdr = Packet::load(ctx, gnv_off).ok_or(Reason::MalformedGeneve)?;
    let opt_len = ((gnv.ver_optlen & 0x3f) as usize) * 4;
    if gnv.ver_optlen >> 6 != 0 || u16::from_be_bytes(gnv.proto) != ETH_P_TEB {
        return Err(Reason::MalformedGeneve);
    }
    if u32::from_be_bytes(gnv.vni) >> 8 != node.vni {
        return Err(Reason::UnknownVni);
    }
    let identity = identity_option(ctx, gnv_off + GENEVE_HLEN, opt_len);
    let dsr = dsr_option(ctx, gnv_off + GENEVE_HLEN, opt_len);
    let inner_eth_off = gnv_off + GENEVE_HLEN + opt_len;
    // The outer Ethernet header stays; everything after it up to the inner IP header goes.
    let overhead = inner_eth_off;
    inner_headers(ctx, inner_eth_off, h)?;
    Ok(Tunneled {
        overhead: overhead as u32,
        identity,
        dsr,
    })
}

/// The DSR option among the first two options (Weft writes it second, after the identity).
#[inline(always)]
fn dsr_option(ctx: &TcContext, off: usize, opt_len: usize) -> Option<([u8; 4], u16)> {
    let mut at = 0;
    for _ in 0..2 {
        if at + GENEVE_OPT_DSR_LEN > opt_len {
            return None;
        }
        let o: GeneveOptDsr = Packet::load(ctx, off + at)?;
        if GeneveOptDsr::is_dsr(o.class, o.kind, o.len) {
            return Some((o.address, u16::from_be_bytes(o.port)));
        }
        at += 4 + (o.len & 0x1f) as usize * 4;
    }
    None
}

/// The first option, when it is Weft's identity option; 0 (unknown) otherwise.
#[inline(always)]
fn identity_option(ctx: &TcContext, off: usize, opt_len: usize) -> u32 {
    if opt_len < GENEVE_OPT_IDENTITY_LEN {
        return 0;
    }
    match Packet::load::<IdentityOpt>(ctx, off) {
        Some(o)
            if u16::from_be_bytes(o.class) == GENEVE_OPT_CLASS
                && o.kind == GENEVE_OPT_TYPE_IDENTITY
                && o.len & 0x1f == 1 =>
        {
            u32::from_be_bytes(o.identity)
        }
        _ => 0,
    }
}

/// The inner frame's headers, parsed by the shared parser at the inner offset.
#[inline(always)]
fn inner_headers(ctx: &TcContext, inner_eth_off: usize, h: &mut Headers) -> Result<(), Reason> {
    let inner = crate::packet::Shifted {
        ctx,
        offset: inner_eth_off,
    };
    crate::parse::headers(&inner, h)?;
    if h.is_ipv4() {
        Ok(())
    } else {
        Err(Reason::UnsupportedL3)
    }
}

/// Removes everything in front of the inner IP header but the outer Ethernet header, which the
/// caller then rewrites for delivery.
#[inline(always)]
pub fn decap(ctx: &TcContext, tunneled: &Tunneled) -> Result<(), Reason> {
    let len = tunneled.overhead as i32;
    if len <= 0 || len > 512 {
        return Err(Reason::MalformedGeneve);
    }
    ctx.adjust_room(-len, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO as u64)
        .map_err(|_| Reason::DecapFailed)
}
